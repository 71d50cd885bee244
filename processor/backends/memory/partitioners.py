"""Where a keyed record goes: the partitioners of the Java client and of librdkafka.

A key picks `murmur2(key) & 0x7fffffff % partitions`, the Java client's default
partitioner (librdkafka's `murmur2_random`, the Kafka backend's default), so that a key
lands in the same partition whichever client produced it. The producer setting
`{"partitioner": "consistent_random"}` selects librdkafka's own default instead,
`crc32(key) % partitions`. Keyless records are spread by the producer (round-robin).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Mapping
from typing import Final

from processor.core.errors import ConfigError

Partitioner = Callable[[bytes, int], int]
"""(key, partition count) -> partition."""

_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF
_WORDS = struct.Struct("<I")


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 of `data` (seed 0x9747b28c), as an unsigned int."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    whole = length & ~3
    for (k,) in _WORDS.iter_unpack(data[:whole]):
        k = (k * _M) & _MASK
        h = ((h * _M) ^ ((k ^ (k >> 24)) * _M)) & _MASK
    rest = length & 3
    if rest:
        if rest == 3:
            h ^= data[whole + 2] << 16
        if rest >= 2:
            h ^= data[whole + 1] << 8
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The Java client's default partition for `key`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's `consistent` partition for `key`."""
    return zlib.crc32(key) % partitions


PARTITIONERS: Final[Mapping[str, Partitioner]] = {
    "murmur2": murmur2_partition,
    "murmur2_random": murmur2_partition,
    "consistent": crc32_partition,
    "consistent_random": crc32_partition,
}
"""The librdkafka `partitioner` setting values the in-memory producer understands."""


def partitioner_of(settings: Mapping[str, object]) -> Partitioner:
    """The partitioner the producer `settings` ask for (murmur2 unless told otherwise)."""
    name = str(settings.get("partitioner", "murmur2_random"))
    partitioner = PARTITIONERS.get(name)
    if partitioner is None:
        raise ConfigError(
            f"partitioner must be one of {', '.join(sorted(PARTITIONERS))}, got {name!r}"
        )
    return partitioner
