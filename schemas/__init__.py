"""The shapes that cross process boundaries: Kafka events, dead letters and the error codes in them."""
