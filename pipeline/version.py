"""The installed version of ddbpipe: one source of truth, the package metadata (which
pyproject.toml's ``version`` becomes when the package is installed)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["VERSION"]


def _installed_version() -> str:
    try:
        return version("ddbpipe")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


VERSION = _installed_version()
