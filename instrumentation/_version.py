"""The installed distribution's version, read from its package metadata (never hard-coded).

flowtel installs as the full ``flowtel`` distribution or as the API-only ``flowtel-api``; both
carry the version ``pyproject.toml`` declares. A source tree that is not installed reports
``0+unknown``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]


def _installed_version() -> str:
    for distribution in ("flowtel", "flowtel-api"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return "0+unknown"


__version__ = _installed_version()
