"""`processor pipeline plan` against Kafka: a missing topic, one with fewer partitions and
another retention, one as the file says; the cluster is left as it was."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from processor.backends.kafka import KafkaBroker
from processor.cli.main import main

pytestmark = pytest.mark.timeout(60)


def test_plan_shows_the_differences_and_changes_nothing(
        kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = uuid.uuid4().hex[:8]
    same, grow, missing = (f"plan-{run}-{n}" for n in ("same", "grow", "missing"))
    admin = KafkaBroker(kafka_bootstrap).admin()
    try:
        admin.create_topic(same, 2, 1)
        admin.create_topic(grow, 1, 1, {"retention.ms": "3600000"})
        before = {name: admin.describe_topic(name) for name in (same, grow)}
        path = tmp_path / "p.yaml"
        path.write_text(f"""\
defaults: {{bootstrap_servers: kafka:9092}}
topics:
  {same}: {{input: true, partitions: 2, replication: 1}}
  {grow}: {{partitions: 3, replication: 1, config: {{retention.ms: 86400000}}}}
  {missing}: {{partitions: 2, replication: 1, config: {{cleanup.policy: compact}}}}
stages:
  a: {{handlers: [validate], input_topic: {same}, output_topic: {grow}}}
  b: {{handlers: [validate], input_topic: {grow}, output_topic: {missing}}}
""")
        code = main(["pipeline", "plan", str(path), "--bootstrap-servers", kafka_bootstrap])
        out = capsys.readouterr().out
        assert code == 0
        assert out.splitlines() == [
            f"= topic {same}",
            f"~ topic {grow}: partitions 1 -> 3, retention.ms 3600000 -> 86400000",
            f"+ topic {missing} (2 partitions, replication 1, cleanup.policy=compact)",
            "p.yaml: 1 to create, 1 to change, 1 unchanged",
        ]
        assert missing not in admin.list_topics()
        assert {name: admin.describe_topic(name) for name in (same, grow)} == before
    finally:
        for name in (same, grow):
            admin.delete_topic(name)
        admin.close()
