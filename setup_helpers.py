"""setup_helpers.py — the packager-facing setuptools helper of fatdispatch.

Copy this file next to your ``setup.py`` (or import it from a fatdispatch
checkout) and write::

    from setup_helpers import FatExtension, cmdclass
    setup(ext_modules=[FatExtension("mypkg._core", ["src/mypkg/_core.c"])], cmdclass=cmdclass())

It is a thin, stable front for :mod:`fatdispatch.build`, which must be a build
requirement (``[build-system] requires = ["setuptools", "fatdispatch"]``).  A
project that prefers no ``setup.py`` declares ``[[tool.fatdispatch.extension]]``
tables in ``pyproject.toml`` instead (see README.md, "Packagers' guide").
"""

from __future__ import annotations

try:
    from fatdispatch.build import BuildError, FatExtension, build_ext, build_py, cffi_extension, cmdclass
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "setup_helpers needs fatdispatch at build time: add 'fatdispatch' to [build-system] requires in "
        "pyproject.toml (or pip install fatdispatch, then build with --no-build-isolation)"
    ) from exc

__all__ = ["FatExtension", "build_ext", "build_py", "cffi_extension", "cmdclass", "BuildError"]
