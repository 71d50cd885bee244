"""Free loopback ports for containers on the host network."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 (all held open while choosing)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    return ports


def is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:`port` (a bind succeeds; connections of a
    closed listener lingering in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _hex_address(text: str) -> tuple[str, int]:
    """Address and port of a /proc/net/tcp{,6} `local_address` field (hex, host byte order)."""
    address, port = text.split(":")
    raw = bytes.fromhex(address)
    # Each 32-bit word is in host (little-endian) order.
    words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]
    packed = b"".join(words)
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, packed), int(port, 16)


def listeners() -> set[tuple[str, int]]:
    """Every listening TCP socket of this network namespace, as (address, port)."""
    found: set[tuple[str, int]] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                found.add(_hex_address(fields[1]))
    return found


def is_loopback(address: str) -> bool:
    return address in ("::1",) or address.startswith("127.") or address.startswith("::ffff:127.")
