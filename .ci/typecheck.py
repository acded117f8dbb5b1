"""Run mypy on the merc packages (strictness per package is set in pyproject.toml).

The folders are installed under other names (stream/ is merc.stream, ...), which mypy cannot see
through setuptools' package-dir mapping, so this links them into a temporary merc/ tree first.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    with tempfile.TemporaryDirectory(prefix="merc-typecheck-") as tmp:
        for package, folder in mapping.items():
            link = Path(tmp, *package.split("."))
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(ROOT / folder, target_is_directory=True)
        command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "merc", *sys.argv[1:]]
        return subprocess.run(command, cwd=tmp).returncode


if __name__ == "__main__":
    sys.exit(main())
