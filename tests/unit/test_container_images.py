"""The pure parts of the container tier: image builder settings and inputs, port functions."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.containers.images import (
    ImageError,
    ImageRecord,
    ImageSettings,
    apt_mirror,
    hash_tree,
)
from tests.containers.ports import _hex_address, is_loopback, listeners


def test_image_settings_default_to_the_standard_images() -> None:
    settings = ImageSettings.from_env({})
    assert settings.kafka == "apache/kafka:4.1.1"
    assert settings.python == "python:3.11-slim"
    assert settings.pull == "auto"
    chosen = ImageSettings.from_env({"PROCESSOR_IMAGE_KAFKA": "my/kafka:1",
                                     "PROCESSOR_IMAGE_PULL": "never"})
    assert (chosen.kafka, chosen.pull) == ("my/kafka:1", "never")
    with pytest.raises(ImageError, match="PROCESSOR_IMAGE_PULL"):
        ImageSettings.from_env({"PROCESSOR_IMAGE_PULL": "sometimes"})


def test_apt_mirror_reads_deb822_and_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    assert apt_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "deb http://security.example/debian-security bookworm-security main\n"
        "deb [arch=amd64] http://other.example/debian bookworm main\n")
    assert apt_mirror(tmp_path) == "http://other.example/debian"
    (tmp_path / "sources.list").unlink()
    assert apt_mirror(tmp_path) == "http://deb.debian.org/debian"


def test_hash_tree_follows_content_names_and_extras(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("one")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_text("two")
    (tmp_path / "sub" / "__pycache__").mkdir()
    first = hash_tree([tmp_path], tmp_path, ["arg=1"])
    (tmp_path / "sub" / "__pycache__" / "x.pyc").write_bytes(b"ignored")
    assert hash_tree([tmp_path], tmp_path, ["arg=1"]) == first
    assert hash_tree([tmp_path], tmp_path, ["arg=2"]) != first
    (tmp_path / "sub" / "b").write_text("three")
    assert hash_tree([tmp_path], tmp_path, ["arg=1"]) != first


def test_image_record_line_shows_size_and_build_time() -> None:
    line = ImageRecord("kafka", "processor-local/kafka:4.1.1", "cached", 0.1, 586_400_000,
                       12.0).line()
    assert "586.4 MB" in line and "cached" in line and "built in 12.0 s" in line


def test_proc_net_addresses_decode() -> None:
    assert _hex_address("0100007F:4A64") == ("127.0.0.1", 19044)
    assert _hex_address("00000000000000000000000001000000:0050") == ("::1", 80)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::")


def test_listeners_sees_a_listening_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert ("127.0.0.1", sock.getsockname()[1]) in listeners()
