"""A PEP 517 build backend for fat packages: ``setuptools.build_meta`` that fails the build, saying why, rather than
ship a wheel without its builds.

With ``build-backend = "setuptools.build_meta"``, a build environment that lacks fatdispatch (``--no-isolation``
without it, a front end that skipped ``requires``) or lacks its setuptools plugin (fatdispatch importable from a
folder on ``PYTHONPATH``, so no entry point is registered) silently makes a ``py3-none-any`` wheel with no
extension: setuptools ignores an unknown ``[tool.fatdispatch]`` table.  Name this backend instead::

    [build-system]
    requires = ["setuptools>=74.1", "fatdispatch"]
    build-backend = "fatdispatch.build.backend"

Without fatdispatch the front end then stops at once (``Backend 'fatdispatch.build.backend' is not available``,
naming the missing module); without the plugin, or when a built wheel lacks a declared fat module's builds, the
hooks below raise :class:`BuildError` naming the cause.  Everything else is setuptools' own.
"""

from __future__ import annotations

import os
import sys
import zipfile
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401 - the PEP 517/660 hooks this backend passes through unchanged
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

from ._catalog import BuildError

PLUGIN_GROUP = "setuptools.finalize_distribution_options"
PLUGIN = "fatdispatch.build._setuptools:finalize_distribution_options"

__all__ = ["build_wheel", "build_editable", "build_sdist", "get_requires_for_build_wheel",
           "get_requires_for_build_sdist", "get_requires_for_build_editable", "prepare_metadata_for_build_wheel",
           "prepare_metadata_for_build_editable", "declared_modules", "plugin_problem", "missing_in_wheel"]


def declared_modules(pyproject: str = "pyproject.toml") -> list[str]:
    """The fat modules ``[[tool.fatdispatch.extension]]`` declares (none for a ``setup.py`` project)."""
    if not os.path.isfile(pyproject):
        return []
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    with open(pyproject, "rb") as f:
        data = tomllib.load(f)
    return [str(t["name"]) for t in data.get("tool", {}).get("fatdispatch", {}).get("extension", []) if "name" in t]


def plugin_problem() -> str | None:
    """Why setuptools will not run fatdispatch's plugin in this environment, or None."""
    from importlib.metadata import entry_points

    found = [ep.value for ep in entry_points(group=PLUGIN_GROUP) if ep.name == "fatdispatch"]
    if PLUGIN in found:
        return None
    import fatdispatch

    where = os.path.dirname(os.path.dirname(os.path.abspath(fatdispatch.__file__)))
    return (f"fatdispatch is importable (from {where}) but not installed as a distribution, so its setuptools "
            f"plugin ({PLUGIN_GROUP} entry point) is not registered and setuptools would build no fat module. "
            "Install fatdispatch in the build environment (pip install fatdispatch, or a wheel of it) rather "
            "than putting it on PYTHONPATH")


def missing_in_wheel(wheel: str, modules: list[str]) -> list[str]:
    """The declared fat modules whose ``<module>.variants/manifest.json`` the wheel lacks."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    return [m for m in modules if "/".join(m.split(".")) + ".variants/manifest.json" not in names]


def _check_before(modules: list[str]) -> None:
    if modules:
        why = plugin_problem()
        if why:
            raise BuildError(f"fatdispatch.build.backend: refusing to build {', '.join(modules)} without their "
                             f"builds: {why}")


def build_wheel(wheel_directory: str, config_settings: dict[str, Any] | None = None,
                metadata_directory: str | None = None) -> str:
    modules = declared_modules()
    _check_before(modules)
    name: str = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    missing = missing_in_wheel(os.path.join(wheel_directory, name), modules)
    if missing:
        os.unlink(os.path.join(wheel_directory, name))
        raise BuildError(f"fatdispatch.build.backend: {name} came out without the builds of {', '.join(missing)} "
                         "(no <module>.variants/manifest.json in it), so it was deleted. Check that "
                         "[[tool.fatdispatch.extension]] names match the packages setuptools builds and that "
                         "build_ext ran (pip wheel -v shows it)")
    return name


def build_editable(wheel_directory: str, config_settings: dict[str, Any] | None = None,
                   metadata_directory: str | None = None) -> str:
    _check_before(declared_modules())
    name: str = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    return name
