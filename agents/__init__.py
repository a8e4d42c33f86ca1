"""What happens when an event arrives: indexing uploaded photos, answering selfie searches.

The agents here know nothing of Faust: they take plain `IncomingEvent`s and return the events
to publish, so the whole pipeline can be driven and tested without the stream machinery.
"""
