"""The README's async enrich example, run as written against a price service on 127.0.0.1.

The Python block of the "Async handlers" section is read from README.md and imported as
`enrich_async`; the service is a small threaded HTTP server started here, which answers
`/price?item=...` after a short delay (a service's latency) and counts the requests it
serves at once. A stage on the in-memory broker runs the example's `enrich`: every known
order comes out priced, in order per key, the unknown item is dead-lettered, and the
service saw many requests at once. The section's shell command is checked against the
CLI's parser.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from processor.backends.memory import MemoryBroker
from processor.cli.main import build_parser
from processor.core.artifact import Artifact
from processor.core.options import StageOptions
from processor.runtime.stage import Stage
from processor.serde.codec import Codec
from tests.procs import ROOT

pytestmark = pytest.mark.timeout(120)

README = (ROOT / "README.md").read_text(encoding="utf-8")
PRICES = {"tea": 2.5, "coffee": 3.0, "cake": 4.25}
LATENCY = 0.02
"""Seconds the service takes per request."""
CODEC = Codec()


def section() -> str:
    match = re.search(r"^## Async handlers\n(.*?)(?=^## |\Z)", README, flags=re.S | re.M)
    assert match is not None, "README.md has no 'Async handlers' section"
    return match.group(1)


class PriceService(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the listen backlog: many connections open at once

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), PriceHandler)
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        self.requests = 0


class PriceHandler(BaseHTTPRequestHandler):
    server: PriceService

    def do_GET(self) -> None:
        server = self.server
        with server.lock:
            server.running += 1
            server.requests += 1
            server.most_at_once = max(server.most_at_once, server.running)
        try:
            time.sleep(LATENCY)  # the service's latency, not a synchronisation
            url = urlparse(self.path)
            item = parse_qs(url.query).get("item", [""])[0]
            if url.path != "/price" or item not in PRICES:
                self.send_error(404)
                return
            body = json.dumps({"price": PRICES[item]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            with server.lock:
                server.running -= 1

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the test reads the counts


@pytest.fixture
def price_service() -> Iterator[PriceService]:
    service = PriceService()
    thread = threading.Thread(target=service.serve_forever, name="prices", daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.shutdown()
        service.server_close()
        thread.join(10)


def test_the_readme_async_example_prices_orders_concurrently(
    price_service: PriceService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", section(), flags=re.S)
    assert blocks and blocks[0].startswith("# enrich_async.py")
    path = tmp_path / "enrich_async.py"
    path.write_text(blocks[0], encoding="utf-8")
    host, port = price_service.server_address[:2]
    monkeypatch.setenv("PRICES_URL", f"http://{host!s}:{port}")
    spec = importlib.util.spec_from_file_location("enrich_async", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    broker = MemoryBroker()
    admin = broker.admin()
    for topic, partitions in (("in", 3), ("out", 2), ("in.dlq", 1)):
        admin.create_topic(topic, partitions=partitions)
    items = ["tea", "coffee", "cake"]
    orders: list[tuple[int, str]] = [(i, "durian" if i == 17 else items[i % 3])
                                     for i in range(120)]
    producer = broker.producer()
    for number, item in orders:
        artifact = Artifact.new(json.dumps({"order": number, "item": item}),
                                meta={"order": number})
        producer.produce("in", CODEC.encode(artifact), b"customer-%d" % (number % 9))
    producer.flush()

    options = StageOptions(name="pricing", input_topic="in", output_topic="out",
                           group="pricing", dlq_topic="in.dlq", max_concurrency=200,
                           poll_timeout=0.05)
    stage = Stage(options, broker, module.enrich)
    stage.run(idle_timeout=1.0)

    reader = broker.consumer("check")
    reader.subscribe(["out", "in.dlq"])
    got = reader.consume(1000, 0.1)
    reader.close()
    out = [m for m in got if m.topic() == "out"]
    dead = [m for m in got if m.topic() == "in.dlq"]
    priced = {CODEC.decode(m.value() or b"").get("order", -1):
              CODEC.decode(m.value() or b"").get("price") for m in out}
    assert priced == {number: PRICES[item] for number, item in orders if item in PRICES}
    per_key: dict[bytes | None, list[int]] = {}
    for m in out:
        per_key.setdefault(m.key(), []).append(CODEC.decode(m.value() or b"").get("order", -1))
    assert all(seq == sorted(seq) for seq in per_key.values())
    assert [dict(m.headers() or [])["dlq.reason"] for m in dead] == [b"invalid"]
    # One request per order, and more only if a connection failed and was retried.
    assert price_service.requests >= len(orders)
    assert price_service.most_at_once >= 10, "the calls did not overlap"


def test_the_readme_async_command_is_valid() -> None:
    match = re.search(r"```sh\n(.*?)```", section(), flags=re.S)
    assert match is not None
    command = shlex.split(re.sub(r"\\\n\s*", " ", match.group(1)).replace("PORT", "9092"))
    assert command[:2] == ["processor", "run"]
    args = build_parser().parse_args(command[1:])
    assert args.max_concurrency == 200
