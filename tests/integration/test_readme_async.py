"""The README's async enrich example, run as written against the price service the
repository ships (`examples/price_service.py`) on 127.0.0.1.

The Python block of the "Async handlers" section is read from README.md and imported as
`enrich_async`; the service, a small threaded HTTP server, answers `/price?item=...` after
a short delay (a service's latency) and counts the requests it serves at once. A stage on
the in-memory broker runs the example's `enrich`: every known order comes out priced, in
order per key, the unknown item is dead-lettered, and the service saw many requests at
once. The service also runs as the README says to start it, as a script; the section's
shell command is checked against the CLI's parser.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

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
LATENCY = 0.02
"""Seconds the service takes per request."""
CODEC = Codec()


def section() -> str:
    match = re.search(r"^## Async handlers\n(.*?)(?=^## |\Z)", README, flags=re.S | re.M)
    assert match is not None, "README.md has no 'Async handlers' section"
    return match.group(1)


def load_example(name: str) -> ModuleType:
    """A module of the repository's `examples/` folder, as shipped."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PRICE_SERVICE = load_example("price_service")
PRICES: dict[str, float] = dict(PRICE_SERVICE.PRICES)


@pytest.fixture
def price_service() -> Iterator[Any]:
    """The shipped example service (`examples/price_service.py`) on a free port."""
    service = PRICE_SERVICE.PriceService(port=0, latency=LATENCY)
    thread = threading.Thread(target=service.serve_forever, name="prices", daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.shutdown()
        service.server_close()
        thread.join(10)


def test_the_readme_async_example_prices_orders_concurrently(
    price_service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", section(), flags=re.S)
    assert blocks and blocks[0].startswith("# enrich_async.py")
    path = tmp_path / "enrich_async.py"
    path.write_text(blocks[0], encoding="utf-8")
    monkeypatch.setenv("PRICES_URL", price_service.url)
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


def test_the_readme_says_how_to_get_httpx_and_the_price_service() -> None:
    import tomllib

    text = " ".join(section().split())
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"][
        "optional-dependencies"]
    assert "pip install 'processor[examples]'" in text
    assert ".venv/bin/pip install -e '.[examples]'" in text
    assert any(re.match(r"httpx\b", requirement) for requirement in extras["examples"])
    assert any(re.match(r"httpx\b", requirement) for requirement in extras["test"])
    assert "python examples/price_service.py &" in text
    assert "127.0.0.1:8080" in text and PRICE_SERVICE.PORT == 8080
    assert PRICE_SERVICE.HOST == "127.0.0.1"


def test_the_price_service_runs_as_a_script() -> None:
    script = ROOT / "examples" / "price_service.py"
    with subprocess.Popen([sys.executable, str(script), "--port", "0", "--latency", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            match = re.match(r"price service on (http://127\.0\.0\.1:\d+) ", first)
            assert match is not None, first + (proc.stderr.read() if proc.stderr else "")
            url = match.group(1)
            with urllib.request.urlopen(f"{url}/price?item=tea", timeout=10) as response:
                assert response.headers["Content-Type"] == "application/json"
                assert json.loads(response.read()) == {"price": PRICES["tea"]}
            for path in ("/price?item=durian", "/other"):
                with pytest.raises(urllib.error.HTTPError) as missing:
                    urllib.request.urlopen(f"{url}{path}", timeout=10)
                assert missing.value.code == 404
                missing.value.close()
        finally:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    # One request after another; the next may begin before the last one's thread has
    # counted itself out.
    assert re.fullmatch(r"served 3 requests, at most [12] at once\n", out), out
