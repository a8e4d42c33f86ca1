"""Faust's Kafka transport with one setting Faust does not expose: how long a fetch may wait.

Faust asks the broker to hold an empty fetch for up to 1.5 s. Apache Kafka answers as soon as a
record arrives, so that costs nothing there; Tansu holds the fetch for the whole wait, which
added a fixed ~700 ms to every selfie search (measured: 755 ms end to end against 55 ms of
work, 85 ms with a 50 ms wait, 64 ms with 20 ms). A short wait costs only a few more idle fetch
requests.
"""

from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: int = 20

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when the consumer starts, which happens after this returns.
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class PixoraApp(faust.App):
    """A Faust app whose consumer waits at most `fetch_max_wait_ms` for an empty fetch."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int = 20, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _ConsumerThread.fetch_max_wait_ms = fetch_max_wait_ms

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)
