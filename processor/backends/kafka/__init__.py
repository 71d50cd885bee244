"""The Kafka backend: `processor.backends.abstract` on confluent-kafka (librdkafka).

Modules by role:

* `broker`: `KafkaBroker`, the factory of the clients, which checks once that the
  cluster answers.
* `settings`: the defaults of every client and the checks of user settings; the few
  that would break a stage's delivery guarantees raise `ConfigError`.
* `consumer`: `KafkaConsumer`; offsets are committed only explicitly and synchronously.
* `producer`: `KafkaProducer`; `produce()` never drops a record when librdkafka's local
  queue is full, it serves delivery reports until there is room.
* `admin`: `KafkaAdmin`, topic management and group inspection.
* `errors`: `KafkaException` to the errors of `processor.core.errors`, sorted by
  librdkafka's codes and flags (retriable -> retry, `txn_requires_abort` ->
  `TransactionError`, fenced -> `ProducerFenced`).
* `convert`: the abstract types to confluent-kafka's and back.
"""

from processor.backends.kafka.admin import KafkaAdmin
from processor.backends.kafka.broker import KafkaBroker
from processor.backends.kafka.consumer import KafkaConsumer
from processor.backends.kafka.errors import raise_kafka
from processor.backends.kafka.producer import KafkaProducer
from processor.backends.kafka.settings import (
    CONSUMER_DEFAULTS,
    PRODUCER_DEFAULTS,
    check_consumer,
    check_producer,
)

__all__ = [
    "CONSUMER_DEFAULTS",
    "PRODUCER_DEFAULTS",
    "KafkaAdmin",
    "KafkaBroker",
    "KafkaConsumer",
    "KafkaProducer",
    "check_consumer",
    "check_producer",
    "raise_kafka",
]
