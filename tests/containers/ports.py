"""Free loopback ports for containers on the host network."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from processor.devtools.local_kafka import free_ports

__all__ = ["container_sockets", "free_ports", "is_free", "is_loopback", "listeners"]


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


def listeners(inodes: set[int] | None = None) -> set[tuple[str, int]]:
    """Listening TCP sockets of this network namespace, as (address, port); only those with
    the given socket inodes when `inodes` is given."""
    found: set[tuple[str, int]] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and (inodes is None or int(fields[9]) in inodes):  # LISTEN
                found.add(_hex_address(fields[1]))
    return found


def container_sockets(container_ids: list[str]) -> set[int]:
    """Socket inodes held by the processes of the given containers (found by their cgroup)."""
    inodes: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cgroup = (proc / "cgroup").read_text()
            if not any(cid in cgroup for cid in container_ids):
                continue
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        except OSError:  # the process ended meanwhile
            continue
    return inodes


def is_loopback(address: str) -> bool:
    return address in ("::1",) or address.startswith("127.") or address.startswith("::ffff:127.")
