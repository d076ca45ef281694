"""Locate files shipped with mlpipe (migrations, bundled job specs) in a checkout or a wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The folder `name` (sql or jobs): inside the wheel, or at the top of a source checkout."""
    for candidate in (_PACKAGE / "_resources" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"mlpipe resource folder {name!r} not found next to {_PACKAGE}")
