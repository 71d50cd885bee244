"""The container images of the container tier, and local stand-ins for those that cannot be had.

Every image is named by a setting (environment variable), defaulting to the standard image:

    PROCESSOR_IMAGE_PYTHON      python:3.11-slim        base of the stage image
    PROCESSOR_IMAGE_KAFKA       apache/kafka:4.1.1      the broker
    PROCESSOR_IMAGE_PROMETHEUS  prom/prometheus:v3.1.0  metrics of the compose stack
    PROCESSOR_IMAGE_STAGE       processor:0.1.0         the stage image, always built from the repo

An image that is present is used as it is. One that is missing is pulled, when pulling is allowed
(PROCESSOR_IMAGE_PULL: `always`; `never`; `auto`, the default, pulls unless the engine is the
private loopback-only engine of deploy/docker/engine.sh, which is meant for machines with no
registry). When it cannot be pulled, a stand-in is built locally, named `processor-local/...`:

* Debian bookworm from `mmdebstrap --variant=minbase` against the host's apt mirror, imported;
* Python: Debian's python3 in a venv, with the host's local CA certificates
  (deploy/docker/python.Dockerfile);
* Kafka: the Maven jars of deploy/docker/kafka/pom.xml on Debian's OpenJDK
  (deploy/docker/kafka.Dockerfile);
* Prometheus: Debian's package (deploy/docker/prometheus.Dockerfile).

Builds use host networking (the private engine has no bridge). Each built image carries a label
with a hash of its inputs (Dockerfile, build context, base image id, build arguments); an image
whose label matches is not rebuilt.

`python -m tests.containers.images` builds everything and prints the table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "deploy" / "docker"
INPUTS_LABEL = "org.processor.inputs"
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
KAFKA_VERSION = "4.1.1"
# Like Debian's slim images: no manual pages, documentation (but the copyright files) or
# translations, in the base and in every package installed on it later.
SLIM_EXCLUDES = ("man", "doc", "info", "locale", "lintian", "linda")
STAGE_CONTEXT = ("pyproject.toml", "setup.py", "README.md", "processor", "schemas",
                 "deploy/Dockerfile", ".dockerignore")

Source = Literal["present", "pulled", "built", "cached"]


class ImageError(RuntimeError):
    """An image could neither be found, pulled nor built."""


@dataclass(frozen=True)
class ImageSettings:
    """Image names and the pull policy, from the environment."""

    python: str = "python:3.11-slim"
    kafka: str = f"apache/kafka:{KAFKA_VERSION}"
    prometheus: str = "prom/prometheus:v3.1.0"
    stage: str = "processor:0.1.0"
    pull: str = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ImageSettings:
        env = os.environ if env is None else env
        defaults = cls()
        pull = env.get("PROCESSOR_IMAGE_PULL", defaults.pull).strip().lower() or "auto"
        if pull not in ("auto", "always", "never"):
            raise ImageError(f"PROCESSOR_IMAGE_PULL must be auto, always or never, not {pull!r}")
        return cls(
            python=env.get("PROCESSOR_IMAGE_PYTHON", "") or defaults.python,
            kafka=env.get("PROCESSOR_IMAGE_KAFKA", "") or defaults.kafka,
            prometheus=env.get("PROCESSOR_IMAGE_PROMETHEUS", "") or defaults.prometheus,
            stage=env.get("PROCESSOR_IMAGE_STAGE", "") or defaults.stage,
            pull=pull,
        )


@dataclass(frozen=True)
class ImageRecord:
    """Where an image came from, how long that took and how big it is."""

    role: str
    name: str
    source: Source
    seconds: float
    size_bytes: int
    build_seconds: float | None = None

    def line(self) -> str:
        built = "" if self.build_seconds is None else f"  (built in {self.build_seconds:.1f} s)"
        return (f"{self.role:<11} {self.name:<40} {self.size_bytes / 1e6:8.1f} MB  "
                f"{self.source:<7} {self.seconds:6.1f} s{built}")


class BuildLog:
    """How long the build of each (image, inputs) took, kept across runs in the user cache, so
    that a reused image still reports its build time."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or Path.home() / ".cache" / "processor" / "image-builds.json"

    def _load(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def get(self, tag: str, inputs: str) -> float | None:
        return self._load().get(f"{tag}@{inputs}")

    def put(self, tag: str, inputs: str, seconds: float) -> None:
        data = self._load()
        data[f"{tag}@{inputs}"] = round(seconds, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data, indent=1, sort_keys=True))


class Docker:
    """The docker CLI against one engine (`host` is its DOCKER_HOST, or None for the default)."""

    def __init__(self, host: str | None) -> None:
        self.env = dict(os.environ)
        if host:
            self.env["DOCKER_HOST"] = host

    def run(self, *args: str, check: bool = True, timeout: float = 1800.0,
            stdin: int | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["docker", *args], env=self.env, text=True, capture_output=True,
                                timeout=timeout, check=False, stdin=stdin)
        if check and result.returncode != 0:
            raise ImageError(f"docker {' '.join(args[:3])} ... failed ({result.returncode}): "
                             f"{result.stderr.strip()[-2000:]}")
        return result

    def image_field(self, name: str, template: str) -> str | None:
        """A field of an image (`docker image inspect -f`), or None when there is no image."""
        result = self.run("image", "inspect", "-f", template, name, check=False)
        return result.stdout.strip() if result.returncode == 0 else None

    def exists(self, name: str) -> bool:
        return self.image_field(name, "{{.Id}}") is not None

    def image_id(self, name: str) -> str:
        value = self.image_field(name, "{{.Id}}")
        if value is None:
            raise ImageError(f"no image {name}")
        return value

    def inputs_label(self, name: str) -> str | None:
        return self.image_field(name, "{{ index .Config.Labels \"" + INPUTS_LABEL + "\" }}")

    def size(self, name: str) -> int:
        return int(self.image_field(name, "{{.Size}}") or 0)

    def pull(self, name: str) -> bool:
        result = self.run("pull", "--quiet", name, check=False, timeout=600)
        if result.returncode != 0:
            logger.info("cannot pull %s: %s", name, result.stderr.strip()[-300:])
        return result.returncode == 0

    def prune_superseded(self) -> None:
        """Remove the untagged images our builds left behind (earlier versions, build stages)."""
        self.run("image", "prune", "--force", "--filter", f"label={INPUTS_LABEL}", check=False)

    def build(self, dockerfile: Path, context: Path, tag: str, inputs: str,
              args: Mapping[str, str] | None = None) -> None:
        command = ["build", "--network", "host", "--quiet", "-f", str(dockerfile),
                   "--label", f"{INPUTS_LABEL}={inputs}", "-t", tag]
        for key, value in (args or {}).items():
            command += ["--build-arg", f"{key}={value}"]
        self.run(*command, str(context))


def hash_tree(paths: Iterable[Path], root: Path, extra: Iterable[str] = ()) -> str:
    """A digest of files (path relative to `root`, mode and content) and extra strings."""
    digest = hashlib.sha256()
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.append(path)
    for path in sorted(set(files)):
        if "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(b"x" if os.access(path, os.X_OK) else b"-")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for item in extra:
        digest.update(item.encode() + b"\0")
    return digest.hexdigest()[:32]


def apt_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The host's Debian mirror: the first `URIs:` (deb822) or `deb URL` line of its sources."""
    candidates = sorted(sources_dir.glob("sources.list.d/*.sources"))
    candidates += [sources_dir / "sources.list", *sorted(sources_dir.glob("sources.list.d/*.list"))]
    for path in candidates:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            match = (re.match(r"\s*URIs:\s*(\S+)", line)
                     or re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", line))
            if match and "security" not in match.group(1):
                return match.group(1)
    return "http://deb.debian.org/debian"


@dataclass
class ImageBuilder:
    """Resolves every image of the tier (see the module docstring), recording what it did."""

    docker: Docker
    settings: ImageSettings
    private_engine: bool
    records: dict[str, ImageRecord] = field(default_factory=dict)
    build_log: BuildLog = field(default_factory=BuildLog)

    @property
    def may_pull(self) -> bool:
        if self.settings.pull == "auto":
            return not self.private_engine
        return self.settings.pull == "always"

    def _record(self, role: str, name: str, source: Source, started: float,
                inputs: str | None = None) -> str:
        seconds = time.monotonic() - started
        if source == "cached" and role in self.records:
            return name  # a second use of an image this run got already (the Debian base)
        build_seconds = None
        if inputs is not None:
            if source == "built":
                self.build_log.put(name, inputs, seconds)
            build_seconds = self.build_log.get(name, inputs)
        self.records[role] = ImageRecord(role, name, source, seconds, self.docker.size(name),
                                         build_seconds)
        logger.info("image %s", self.records[role].line())
        return name

    def _standard(self, role: str, name: str) -> str | None:
        """`name` when it is present or can be pulled, else None."""
        started = time.monotonic()
        if self.docker.exists(name):
            return self._record(role, name, "present", started)
        if self.may_pull and self.docker.pull(name):
            return self._record(role, name, "pulled", started)
        return None

    def _build(self, role: str, tag: str, dockerfile: Path, context: Path,
               context_files: Iterable[Path], base: str | None,
               args: Mapping[str, str] | None = None) -> str:
        started = time.monotonic()
        extra = [f"{k}={v}" for k, v in sorted((args or {}).items())]
        if base is not None:
            extra.append(self.docker.image_id(base))
        inputs = hash_tree(context_files, context, [dockerfile.read_text(), *extra])
        if self.docker.inputs_label(tag) == inputs:
            return self._record(role, tag, "cached", started, inputs)
        logger.info("building %s", tag)
        self.docker.build(dockerfile, context, tag, inputs, args)
        self.docker.prune_superseded()
        return self._record(role, tag, "built", started, inputs)

    def debian(self) -> str:
        """Debian bookworm (minbase, slimmed) from the host's apt mirror, imported as an image."""
        tag = "processor-local/debian:bookworm"
        mirror = apt_mirror()
        options = [*(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in SLIM_EXCLUDES),
                   "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                   "--aptopt=Acquire::Languages \"none\""]
        inputs = hash_tree([], ROOT, ["mmdebstrap --variant=minbase bookworm", mirror, *options])
        started = time.monotonic()
        if self.docker.inputs_label(tag) == inputs:
            return self._record("debian", tag, "cached", started, inputs)
        mmdebstrap = shutil.which("mmdebstrap")
        if mmdebstrap is None:
            raise ImageError("mmdebstrap is missing (Debian package mmdebstrap; "
                             "deploy/docker/engine.sh start installs it)")
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        logger.info("bootstrapping Debian bookworm from %s", mirror)
        with tempfile.TemporaryDirectory() as work:
            tarball = Path(work) / "rootfs.tar"
            subprocess.run([*sudo, "nice", "-n", "10", mmdebstrap, "--quiet", "--variant=minbase",
                            *options, "bookworm", str(tarball), mirror],
                           check=True, timeout=1200)
            self.docker.run("import", "--change", f"LABEL {INPUTS_LABEL}={inputs}",
                            "--change", 'CMD ["bash"]', str(tarball), tag)
        self.docker.prune_superseded()
        return self._record("debian", tag, "built", started, inputs)

    def python(self) -> str:
        standard = self._standard("python", self.settings.python)
        if standard is not None:
            return standard
        base = self.debian()
        with tempfile.TemporaryDirectory() as work:
            context = Path(work)
            certs = context / "ca-certificates"
            certs.mkdir()
            (certs / ".keep").write_text("")
            if LOCAL_CA_DIR.is_dir():
                for cert in LOCAL_CA_DIR.rglob("*.crt"):
                    shutil.copy(cert, certs / cert.name)
            return self._build("python", "processor-local/python:3.11",
                               DOCKER_DIR / "python.Dockerfile", context,
                               [certs], base, {"DEBIAN_IMAGE": base})

    def kafka(self) -> str:
        standard = self._standard("kafka", self.settings.kafka)
        if standard is not None:
            return standard
        base = self.debian()
        libs = kafka_image_jars()
        with tempfile.TemporaryDirectory() as work:
            context = Path(work)
            shutil.copytree(libs, context / "libs")
            shutil.copytree(DOCKER_DIR / "kafka" / "bin", context / "bin")
            shutil.copy(DOCKER_DIR / "kafka" / "log4j2.properties", context)
            files = [context / "libs", context / "bin", context / "log4j2.properties"]
            return self._build("kafka", f"processor-local/kafka:{KAFKA_VERSION}",
                               DOCKER_DIR / "kafka.Dockerfile", context, files, base,
                               {"DEBIAN_IMAGE": base})

    def prometheus(self) -> str:
        standard = self._standard("prometheus", self.settings.prometheus)
        if standard is not None:
            return standard
        base = self.debian()
        with tempfile.TemporaryDirectory() as work:
            return self._build("prometheus", "processor-local/prometheus:debian",
                               DOCKER_DIR / "prometheus.Dockerfile", Path(work), [], base,
                               {"DEBIAN_IMAGE": base})

    def stage(self) -> str:
        """The stage image from this checkout, on the resolved Python base."""
        base = self.python()
        return self._build("stage", self.settings.stage, ROOT / "deploy" / "Dockerfile", ROOT,
                           [ROOT / name for name in STAGE_CONTEXT], base,
                           {"BASE_IMAGE": base})

    def all(self) -> dict[str, str]:
        return {"stage": self.stage(), "kafka": self.kafka(), "prometheus": self.prometheus()}


def kafka_image_jars() -> Path:
    """The jars of deploy/docker/kafka/pom.xml, resolved once with Maven into the user cache."""
    pom = DOCKER_DIR / "kafka" / "pom.xml"
    key = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    libs = Path.home() / ".cache" / "processor" / f"kafka-image-{KAFKA_VERSION}-{key}" / "libs"
    if libs.is_dir() and any(libs.glob("kafka-tools-*.jar")):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ImageError("Maven is missing (Debian package maven) to fetch the Kafka jars")
    partial = libs.with_name("libs.partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run([mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                    f"-DoutputDirectory={partial}"], check=True, timeout=900)
    partial.rename(libs)
    return libs


def main() -> None:
    from tests.containers.engine import ensure_engine

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    engine = ensure_engine()
    builder = ImageBuilder(Docker(engine.host), ImageSettings.from_env(), engine.private)
    builder.all()
    for record in builder.records.values():
        print(record.line())


if __name__ == "__main__":
    main()
