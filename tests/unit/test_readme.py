"""The README's handler example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_handler_example_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = next(b for b in blocks if b.startswith("# my_handlers.py"))
    (tmp_path / "my_handlers.py").write_text(example, encoding="utf-8")
    result = subprocess.run([sys.executable, "my_handlers.py"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "shouted" in result.stdout
    assert "payload=13 bytes" in result.stdout

    sys.path.insert(0, str(tmp_path))
    try:
        import my_handlers  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    from processor import Artifact, InvalidArtifact

    out = my_handlers.shout(Artifact.new("abc"))
    assert out.payload == b"ABC"
    assert my_handlers.shout(Artifact.new("x", meta={"skip": True})) is None
    try:
        my_handlers.shout(Artifact.new(b""))
    except InvalidArtifact:
        pass
    else:
        raise AssertionError("an empty payload must be invalid")
