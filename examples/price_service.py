"""A small price service for the README's async handler example (`enrich_async.py`).

    python examples/price_service.py [--port 8080] [--latency 0.02]

It listens on 127.0.0.1 only and answers `GET /price?item=ITEM` with `{"price": 2.5}`
(application/json); an item it has no price for, or any other path, is 404. Each answer
takes `--latency` seconds, as a remote service's would, so that a stage's concurrent calls
show: on Ctrl-C (or SIGTERM) it stops and prints how many requests it served and the most
it served at once. Port 8080 is what `enrich_async.py` calls unless `PRICES_URL` says
otherwise; `--port 0` takes any free port. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from urllib.parse import parse_qs, urlparse

PRICES: Mapping[str, float] = {"tea": 2.5, "coffee": 3.0, "cake": 4.25}
HOST = "127.0.0.1"
PORT = 8080
"""The port of `enrich_async.py`'s default `PRICES_URL`, http://127.0.0.1:8080."""
LATENCY = 0.02
"""Seconds each answer takes by default."""


class PriceService(ThreadingHTTPServer):
    """The service: a price per item, one thread per request, and counts of the requests
    it served."""

    daemon_threads = True
    request_queue_size = 512  # the listen backlog: a stage opens many connections at once

    def __init__(self, port: int = PORT, prices: Mapping[str, float] = PRICES,
                 latency: float = LATENCY) -> None:
        super().__init__((HOST, port), PriceHandler)
        self.prices = dict(prices)
        self.latency = latency
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        """The most requests served at the same time."""
        self.requests = 0

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class PriceHandler(BaseHTTPRequestHandler):
    server: PriceService

    def do_GET(self) -> None:
        server = self.server
        with server.lock:
            server.running += 1
            server.requests += 1
            server.most_at_once = max(server.most_at_once, server.running)
        try:
            time.sleep(server.latency)  # the service's latency
            url = urlparse(self.path)
            item = parse_qs(url.query).get("item", [""])[0]
            if url.path != "/price" or item not in server.prices:
                self.send_error(404, f"no price for {item!r}" if url.path == "/price" else None)
                return
            body = json.dumps({"price": server.prices[item]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            with server.lock:
                server.running -= 1

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line a request is too many at hundreds a second: the counts are printed


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="A price service on 127.0.0.1 for the README's async handler example: "
        "GET /price?item=ITEM answers {\"price\": ...}, or 404 for an unknown item.")
    parser.add_argument("--port", type=int, default=PORT,
                        help=f"port to listen on (default {PORT}; 0: any free port)")
    parser.add_argument("--latency", type=float, default=LATENCY,
                        help=f"seconds each answer takes (default {LATENCY})")
    args = parser.parse_args(argv)
    try:
        service = PriceService(args.port, latency=args.latency)
    except OSError as exc:
        print(f"price service: cannot listen on {HOST}:{args.port}: {exc.strerror}; "
              "choose another --port (and set PRICES_URL to match)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _stop)
    print(f"price service on {service.url} (prices of {', '.join(service.prices)}); "
          "Ctrl-C stops it", flush=True)
    try:
        service.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        service.server_close()
    print(f"served {service.requests} requests, at most {service.most_at_once} at once",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
