"""The package version, defined once: ``[project] version`` in pyproject.toml.

An installed fasteplb (wheel or editable) reads it from its metadata; a source tree without
metadata (``PYTHONPATH=python``) reads it from the pyproject.toml two levels above.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def from_pyproject(path: Path = _PYPROJECT) -> str:
    """``version`` of the ``[project]`` table of ``path`` (ValueError when absent)."""
    text = path.read_text(encoding="utf-8")
    table = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    found = table and re.search(r'^version\s*=\s*"([^"]+)"', table.group(1), re.M)
    if not found:
        raise ValueError(f"{path} has no [project] version")
    return found.group(1)


def version() -> str:
    try:
        return metadata.version("fasteplb")
    except metadata.PackageNotFoundError:
        pass
    try:
        return from_pyproject()
    except (OSError, ValueError):
        return "0+unknown"
