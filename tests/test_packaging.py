"""What a non-editable install ships: every package folder of the source tree."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_for_the_build() -> None:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"ddbpipe": ROOT / "pipeline", "ddbpipe.cli": ROOT / "cli"}
    found = set(folders)
    for name, folder in folders.items():
        found |= {
            f"{name}.{init.parent.relative_to(folder).as_posix().replace('/', '.')}"
            for init in folder.rglob("*/__init__.py")
        }
    assert set(settings["packages"]) == found
    assert settings["package-dir"] == {"ddbpipe": "pipeline", "ddbpipe.cli": "cli"}
