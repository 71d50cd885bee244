"""The local Kafka launcher without starting a JVM: configuration, ports, missing tools."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from processor.devtools.local_kafka import (
    LocalKafka,
    NodeConfig,
    ToolMissing,
    ensure_jars,
    free_ports,
    main_broker,
    new_cluster_id,
    plan_nodes,
    render_log4j,
    render_server_properties,
    require_java,
    require_maven,
)


def parse(text: str) -> dict[str, str]:
    pairs = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key not in pairs, f"{key} set twice"
            pairs[key] = value
    return pairs


def render(nodes: int, tmp_path: Path) -> list[dict[str, str]]:
    cluster = plan_nodes(nodes, tmp_path)
    return [parse(render_server_properties(node, cluster)) for node in cluster]


def test_one_node_is_a_standalone_kraft_broker_and_controller(tmp_path: Path) -> None:
    (props,) = render(1, tmp_path)
    node = plan_nodes(1, tmp_path)[0]  # ports differ, shapes do not
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "0"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", props["controller.quorum.bootstrap.servers"])
    assert "controller.quorum.voters" not in props
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["default.replication.factor"] == "1"
    assert props["min.insync.replicas"] == "1"
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["log.dirs"] == str(tmp_path / "node-0" / "data")
    assert node.directory == tmp_path / "node-0"


def test_three_nodes_form_a_static_quorum_with_replicated_internal_topics(
    tmp_path: Path,
) -> None:
    cluster = plan_nodes(3, tmp_path)
    rendered = [parse(render_server_properties(n, cluster)) for n in cluster]
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in cluster)
    assert [p["node.id"] for p in rendered] == ["0", "1", "2"]
    for node, props in zip(cluster, rendered, strict=True):
        assert props["controller.quorum.voters"] == voters
        assert "controller.quorum.bootstrap.servers" not in props
        assert props["offsets.topic.replication.factor"] == "3"
        assert props["transaction.state.log.replication.factor"] == "3"
        assert props["transaction.state.log.min.isr"] == "2"
        assert props["default.replication.factor"] == "3"
        assert props["min.insync.replicas"] == "2"
        assert props["listeners"] == (
            f"PLAINTEXT://127.0.0.1:{node.broker_port},"
            f"CONTROLLER://127.0.0.1:{node.controller_port}")
        assert props["log.dirs"] == str(node.data_dir)
    assert len({p["log.dirs"] for p in rendered}) == 3


def test_every_address_is_loopback_and_every_placeholder_filled(tmp_path: Path) -> None:
    for nodes in (1, 3):
        cluster = plan_nodes(nodes, tmp_path / str(nodes))
        for node in cluster:
            text = render_server_properties(node, cluster)
            assert "$" not in text
            assert "0.0.0.0" not in text
            hosts = re.findall(r"(?:://|@|=)([\w.-]+):\d+", text)
            assert hosts and set(hosts) == {"127.0.0.1"}


def test_log4j_config_writes_one_file_per_node(tmp_path: Path) -> None:
    node = NodeConfig(0, 1, 2, tmp_path)
    text = render_log4j(node)
    assert f"appender.file.fileName = {tmp_path / 'server.log'}" in text
    assert "${" not in text


def test_free_ports_are_distinct_and_bindable_on_loopback() -> None:
    ports = free_ports(6)
    assert len(set(ports)) == 6
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_planned_nodes_use_distinct_ports(tmp_path: Path) -> None:
    cluster = plan_nodes(3, tmp_path)
    ports = [p for n in cluster for p in (n.broker_port, n.controller_port)]
    assert len(set(ports)) == 6


def test_cluster_ids_have_kafkas_form() -> None:
    ids = {new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    for cluster_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
        assert not cluster_id.startswith("-")


def test_missing_java_and_maven_name_the_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing, match=r"java.*openjdk-17-jre-headless"):
        require_java()
    with pytest.raises(ToolMissing, match=r"mvn.*apt-get install maven"):
        require_maven()


def test_starting_without_java_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    kafka = LocalKafka(nodes=1, workdir=tmp_path / "work")
    with pytest.raises(ToolMissing, match="openjdk-17-jre-headless"):
        kafka.start()
    assert not kafka.node_configs


def test_jars_are_resolved_once_then_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn: a second resolution would fail
    with pytest.raises(ToolMissing, match="maven"):
        ensure_jars(home)
    (home / "libs").mkdir(parents=True)
    (home / "libs" / ".complete").write_text("4.1.1\n")
    assert ensure_jars(home) == home / "libs"


def test_broker_command_without_java_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main_broker(1) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "java" in err and "openjdk-17-jre-headless" in err


def test_broker_command_without_maven_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\nexit 1\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("PROCESSOR_KAFKA_HOME", str(tmp_path / "empty-home"))
    assert main_broker(1) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "mvn" in err and "maven" in err
