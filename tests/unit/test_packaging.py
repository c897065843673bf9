"""The packages pyproject.toml lists are every package in the tree, and the services import
as ``protege_services`` (their folder stays ``services/``)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {name: folder for name, folder in config["package-dir"].items()}
    found = set()
    for init in [*REPO.glob("protege/**/__init__.py"), *REPO.glob("services/**/__init__.py")]:
        parts = init.parent.relative_to(REPO).parts
        top = next((name for name, folder in mapped.items() if folder == parts[0]), parts[0])
        found.add(".".join((top, *parts[1:])))
    assert set(config["packages"]) == found


def test_services_import_under_their_own_name() -> None:
    import protege_services.scorer.handler as scorer

    assert Path(scorer.__file__).parent == REPO / "services" / "scorer"
