"""The folders are the packages: every folder of code is installed under its merc.* name, and the
layout README draws is the one setuptools installs."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_code_folder_is_an_installed_package_and_the_reverse():
    config = _setuptools()
    found = set()
    for package, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([package, *relative]))
    assert found == set(config["packages"])


def test_every_package_says_what_it_is_for():
    config = _setuptools()
    for folder in config["package-dir"].values():
        for init in (ROOT / folder).rglob("__init__.py"):
            assert init.read_text().startswith('"""'), f"{init} has no docstring"


def test_readme_draws_every_subpackage():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## How the code is laid out"):]
    for package in _setuptools()["packages"]:
        name = package.rsplit(".", 1)[-1]
        assert f"{name}/" in layout or package in layout, package
