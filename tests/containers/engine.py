"""The Docker engine and Compose plugin of the container tier.

`ensure_engine` uses the engine the environment already points at (DOCKER_HOST, or the default
socket) when it answers. Otherwise it starts the private loopback-only engine of
deploy/docker/engine.sh (installing Debian's docker.io first when needed) and remembers that it
did, so that `Engine.stop` stops only an engine this process started.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
ENGINE_SCRIPT = ROOT / "deploy" / "docker" / "engine.sh"
COMPOSE_SCRIPT = ROOT / "deploy" / "docker" / "compose-plugin.sh"


class EngineError(RuntimeError):
    """No Docker engine could be found or started."""


@dataclass(frozen=True)
class Engine:
    """A running engine: its DOCKER_HOST (None: the CLI default), and who started it."""

    host: str | None
    private: bool
    started_here: bool

    def env(self) -> dict[str, str]:
        """The environment for docker, compose and testcontainers against this engine."""
        env = dict(os.environ)
        if self.host:
            env["DOCKER_HOST"] = self.host
        return env

    def stop(self) -> None:
        if self.started_here:
            subprocess.run([str(ENGINE_SCRIPT), "stop"], check=True, timeout=120)


def _answers(host: str | None) -> bool:
    env = dict(os.environ)
    if host:
        env["DOCKER_HOST"] = host
    try:
        result = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                                env=env, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _private_host() -> str | None:
    result = subprocess.run([str(ENGINE_SCRIPT), "env"], capture_output=True, text=True,
                            timeout=30, check=False)
    if result.returncode == 0 and result.stdout.startswith("DOCKER_HOST="):
        return result.stdout.strip().split("=", 1)[1]
    return None


def ensure_engine() -> Engine:
    """An engine that answers (see the module docstring)."""
    private = _private_host()
    if private is not None:
        return Engine(private, private=True, started_here=False)
    ambient = os.environ.get("DOCKER_HOST") or None
    if _answers(ambient):
        return Engine(ambient, private=False, started_here=False)
    logger.info("no Docker engine answers: starting the private engine (%s)", ENGINE_SCRIPT)
    result = subprocess.run([str(ENGINE_SCRIPT), "start"], capture_output=True, text=True,
                            timeout=1200, check=False)
    if result.returncode != 0 or not result.stdout.startswith("DOCKER_HOST="):
        raise EngineError(f"{ENGINE_SCRIPT} start failed: {result.stderr.strip()[-2000:]}")
    host = result.stdout.strip().split("=", 1)[1]
    return Engine(host, private=True, started_here=True)


def ensure_compose(engine: Engine) -> None:
    """Docker Compose v2 as a CLI plugin, built from source when missing."""
    result = subprocess.run([str(COMPOSE_SCRIPT)], env=engine.env(), capture_output=True,
                            text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise EngineError(f"{COMPOSE_SCRIPT} failed: {result.stderr.strip()[-2000:]}")
