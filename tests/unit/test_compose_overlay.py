"""The host-network overlay (deploy/compose.host.yml) agrees with docker-compose.yml and with
its Prometheus configuration: every service on the host network, loopback only, distinct
ports, and Prometheus scraping each stage where it listens."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml

ROOT = Path(__file__).resolve().parents[2]


class _Loader(yaml.SafeLoader):
    """Reads compose's `!reset` and `!override` tags as plain values."""


def _tagged(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    return loader.construct_scalar(cast(yaml.ScalarNode, node))


_Loader.add_multi_constructor("!", _tagged)


def load(path: str) -> dict[str, Any]:
    return cast(dict[str, Any], yaml.load((ROOT / path).read_text(), Loader=_Loader))


MAIN = load("docker-compose.yml")["services"]
HOST = load("deploy/compose.host.yml")["services"]
STAGES = ("validate", "transform", "enrich")


def test_every_service_runs_on_the_host_network_without_published_ports() -> None:
    assert set(HOST) == set(MAIN)
    for name, service in HOST.items():
        assert service.get("network_mode") == "host", name
        if "ports" in MAIN[name]:
            assert service.get("ports") == [], f"{name}: ports are reset"


def test_everything_listens_on_loopback_on_distinct_ports() -> None:
    kafka = HOST["kafka"]["environment"]
    assert all("127.0.0.1:" in part for part in kafka["KAFKA_LISTENERS"].split(","))
    assert kafka["KAFKA_ADVERTISED_LISTENERS"].startswith("PLAINTEXT://127.0.0.1:")
    ports = [int(part.rsplit(":", 1)[1]) for part in kafka["KAFKA_LISTENERS"].split(",")]
    for stage in STAGES:
        env = HOST[stage]["environment"]
        assert env["PROCESSOR_METRICS_HOST"] == "127.0.0.1"
        assert env["PROCESSOR_BOOTSTRAP_SERVERS"] == "127.0.0.1:" + str(ports[0])
        ports.append(int(env["PROCESSOR_METRICS_PORT"]))
    listen = [a for a in HOST["prometheus"]["command"] if a.startswith("--web.listen-address=")]
    assert listen and listen[0].split("=", 1)[1].startswith("127.0.0.1:")
    ports.append(int(listen[0].rsplit(":", 1)[1]))
    assert len(ports) == len(set(ports)), ports
    assert "grafana" in HOST["grafana"]["profiles"]
    assert HOST["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"


def test_prometheus_scrapes_each_stage_on_its_loopback_port() -> None:
    config = load("deploy/prometheus/prometheus.host.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "processor"]
    targets = {group["labels"]["stage"]: group["targets"] for group in job["static_configs"]}
    assert set(targets) == set(STAGES)
    for stage in STAGES:
        assert targets[stage] == [
            f"127.0.0.1:{HOST[stage]['environment']['PROCESSOR_METRICS_PORT']}"]
    mount = HOST["prometheus"]["volumes"][0]
    assert mount.startswith("./deploy/prometheus/prometheus.host.yml:")


def test_the_generator_handles_sigterm() -> None:
    assert MAIN["generator"]["init"] is True
