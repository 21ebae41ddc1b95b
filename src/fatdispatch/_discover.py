"""Finding installed fat modules without importing them (for ``report``)."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable

from ._manifest import MANIFEST_NAME, VARIANTS_SUFFIX

MAX_DEPTH = 4


def discover(paths: Iterable[str]) -> dict[str, str]:
    """Module name -> variants folder for every ``<pkg>/<mod>.variants/manifest.json`` under ``paths``."""
    found: dict[str, str] = {}
    for entry in paths:
        if not entry or not os.path.isdir(entry):
            continue
        _walk(entry, [], found, 0)
    return found


def _walk(folder: str, package: list[str], found: dict[str, str], depth: int) -> None:
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        full = os.path.join(folder, name)
        if name.endswith(VARIANTS_SUFFIX) and package:
            if os.path.isfile(os.path.join(full, MANIFEST_NAME)):
                mod = ".".join(package + [name[: -len(VARIANTS_SUFFIX)]])
                found.setdefault(mod, full)
        elif depth < MAX_DEPTH and name.isidentifier() and os.path.isfile(os.path.join(full, "__init__.py")):
            _walk(full, package + [name], found, depth + 1)
