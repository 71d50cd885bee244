"""Broker backends: the abstract interfaces, the in-memory broker and Kafka."""

from processor.backends.abstract import (
    Admin,
    Broker,
    Consumer,
    DeliveryError,
    Message,
    Producer,
    TopicPartition,
)

__all__ = [
    "Admin",
    "Broker",
    "Consumer",
    "DeliveryError",
    "Message",
    "Producer",
    "TopicPartition",
]
