"""A fault-injecting TCP proxy on 127.0.0.1, for the network fault tests.

It forwards one listening port to one target (a Kafka node's EXTERNAL listener, which
advertises the proxy's port, so that every reconnection of a client comes back through
it) and injects on demand:

* `latency`: seconds added before each chunk is forwarded, both ways;
* `bandwidth`: a limit in bytes per second, both ways;
* `cut()`: every open connection reset at once (mid-request for those busy);
* `blackhole()`: the open connections stay open but carry nothing any more, for ever (a
  half-open connection: the peer is gone and no FIN or RST says so). New connections are
  served normally, unless `refuse` is set (a node unreachable).

Written for the tests rather than taking Toxiproxy: the faults needed are these few, the
test drives them in-process and synchronously (no HTTP API to poll, no Go toolchain to
build it in CI), and asyncio does the work of a proxy in about a hundred lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import TypeVar

CHUNK = 64 * 1024

T = TypeVar("T")


class FaultProxy:
    """Forwards `127.0.0.1:port` to `target`; runs its own event loop on a thread."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self.latency = 0.0
        self.bandwidth: float | None = None
        self.refuse = False
        self.connections = 0
        self._open: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy",
                                        daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._accept, "127.0.0.1", self.port))
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, coro: Coroutine[object, object, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(10)

    # -- faults --

    def cut(self) -> int:
        """Reset every open connection now; returns how many."""
        async def cut_all() -> int:
            links = list(self._open)
            for link in links:
                link.reset()
            return len(links)
        return self._run(cut_all())

    def blackhole(self) -> int:
        """Make every open connection carry nothing from now on; returns how many."""
        async def hole_all() -> int:
            links = list(self._open)
            for link in links:
                link.blackholed = True
            return len(links)
        return self._run(hole_all())

    def release_blackholed(self) -> None:
        """Close the blackholed connections (sockets kept only to stay half-open)."""
        async def close_holes() -> None:
            for link in [link for link in self._open if link.blackholed]:
                link.reset()
        self._run(close_holes())

    # -- forwarding --

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        self.connections += 1
        link = _Link(writer, up_writer)
        self._open.add(link)
        try:
            await asyncio.gather(self._pump(reader, up_writer, link),
                                 self._pump(up_reader, writer, link))
        finally:
            self._open.discard(link)
            link.reset()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    link: _Link) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if link.blackholed:
                    continue  # swallowed: the other side never hears of it
                if self.latency:
                    await asyncio.sleep(self.latency)
                if self.bandwidth:
                    await asyncio.sleep(len(data) / self.bandwidth)
                if link.blackholed:
                    continue
                writer.write(data)
                await writer.drain()
        if not link.blackholed:
            link.reset()


class _Link:
    """Both sockets of one proxied connection."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.blackholed = False

    def reset(self) -> None:
        _abort(self.client)
        _abort(self.upstream)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (RST), not an orderly FIN."""
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
