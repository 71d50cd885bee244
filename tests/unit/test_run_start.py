"""What `processor run` checks before a stage starts: a handler module is found in the
current directory (or the error names where it looked), and a metrics port that cannot be
bound is one error line naming the port and the setting to change. The command line
becomes settings in the CLI; the runtime takes those."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from processor.cli.main import build_parser
from processor.cli.run import settings_from_args
from processor.core.errors import ConfigError
from processor.ops.health import HealthState, MetricsPortError, MetricsServer
from processor.ops.settings import StageConfig, load_config
from processor.runtime.runner import serve_metrics_for

# The installed `processor` script: its own directory, not the current one, heads sys.path.
SCRIPT = str(Path(sys.executable).with_name("processor"))
RUN = [SCRIPT, "run", "--bootstrap-servers", "127.0.0.1:1", "--input-topic", "in",
       "--group", "g", "--metrics-port", "off"]


def run_in(cwd: Path, *handler: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUN, *(a for h in handler for a in ("--handler", h))], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_the_handler_module_is_imported_from_the_current_directory(tmp_path: Path) -> None:
    # The module says where it was imported from and ends the process there, before the
    # stage would look for its (unreachable) broker.
    (tmp_path / "here_handlers.py").write_text(
        "import sys\nprint('imported', __file__, flush=True)\nsys.exit(3)\n")
    result = run_in(tmp_path, "here_handlers:shout")
    assert result.returncode == 3, result.stderr
    assert result.stdout == f"imported {tmp_path / 'here_handlers.py'}\n"


def test_a_missing_module_names_the_search_path(tmp_path: Path) -> None:
    result = run_in(tmp_path, "not_here_handlers:shout")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("processor run: error: handler 'not_here_handlers:shout': "
                               "cannot import 'not_here_handlers'")
    assert f"(searched, in order: {tmp_path} (the current directory), " in lines[0]
    assert str(Path(SCRIPT).parent) in lines[0]


def test_the_cli_turns_its_flags_into_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Flags over the environment over the file, as `load_config` ranks them."""
    (tmp_path / "stage.yaml").write_text("batch_size: 5\nmax_in_flight: 900\n")
    monkeypatch.setenv("PROCESSOR_BATCH_SIZE", "7")
    monkeypatch.setenv("PROCESSOR_COMMIT_INTERVAL", "2.5")
    args = build_parser().parse_args([*RUN[1:], "--handler", "validate", "--replica-id",
                                      "ordinal", "--commit-interval", "0.5", "--config",
                                      str(tmp_path / "stage.yaml")])
    cfg = settings_from_args(args)
    assert isinstance(cfg, StageConfig)
    assert (cfg.options.input_topic, cfg.options.group, cfg.handlers) == ("in", "g",
                                                                         ("validate",))
    assert cfg.metrics_port is None and cfg.replica_id == "ordinal"
    o = cfg.options
    assert (o.commit_interval, o.batch_size, o.max_in_flight) == (0.5, 7, 900)
    assert cfg.sources["replica_id"] == "flag --replica-id"
    assert cfg.sources["batch_size"] == "environment PROCESSOR_BATCH_SIZE"


def config(port: int | None) -> StageConfig:
    """A stage's settings with `port` for metrics (None: the default)."""
    env = {"PROCESSOR_INPUT_TOPIC": "in", "PROCESSOR_GROUP": "g", "PROCESSOR_HANDLERS": "validate",
           "PROCESSOR_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "PROCESSOR_METRICS_HOST": "127.0.0.1"}
    if port is not None:
        env["PROCESSOR_METRICS_PORT"] = str(port)
    return load_config(None, env, {})


def test_a_busy_metrics_port_names_the_port_and_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortError) as raw:
            MetricsServer(HealthState(), "127.0.0.1", port).start()
        assert raw.value.in_use
        with pytest.raises(ConfigError) as error:
            serve_metrics_for(config(port), HealthState())
    assert str(error.value) == (
        f"cannot serve metrics on 127.0.0.1:{port}: the port is in use by another process; "
        "choose another port with --metrics-port (PROCESSOR_METRICS_PORT, metrics_port in "
        "YAML), 0 for any free port, or off for none")


def test_the_default_metrics_port_lets_stages_share_a_host() -> None:
    servers = [serve_metrics_for(config(None), HealthState()) for _ in range(2)]
    try:
        ports = {s.port for s in servers if s is not None}
        assert len(ports) == 2 and 0 not in ports
    finally:
        for server in servers:
            if server is not None:
                server.stop()
