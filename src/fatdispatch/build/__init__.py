"""fatdispatch's build side: declare an extension once, get every build, the manifest and the wiring.

setuptools (``setup.py``)::

    from setuptools import setup
    from fatdispatch.build import FatExtension, cmdclass

    setup(ext_modules=[FatExtension("mypkg._core", ["src/mypkg/_core.c"],
                                    cuda_sources=["src/mypkg/_core.cu"],
                                    cuda_targets=["sm_80", "sm_90", "compute_75"])],
          cmdclass=cmdclass())

or ``pyproject.toml`` alone (``[[tool.fatdispatch.extension]]`` tables, read
by a setuptools plugin).  cffi: :func:`cffi_extension`.  CMake
(scikit-build-core) and Meson (meson-python): ``fatdispatch/cmake/`` and
``fatdispatch/meson/``, which call ``python -m fatdispatch.build`` for flags
and the manifest (:mod:`._layout`, shared by every backend).

The setuptools names are imported on first use, so ``python -m
fatdispatch.build`` works in a CMake or Meson build environment without
setuptools.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._catalog import BuildError, CpuVariant, CudaBuild, cpu_catalog, parse_cuda_spec

if TYPE_CHECKING:
    from ._cffi import cffi_extension
    from ._setuptools import FatExtension, build_ext, build_py, cmdclass, wire_init

__all__ = ["FatExtension", "build_ext", "build_py", "cmdclass", "cffi_extension", "BuildError", "CpuVariant",
           "CudaBuild", "cpu_catalog", "parse_cuda_spec", "wire_init"]

_LAZY = {"FatExtension": "_setuptools", "build_ext": "_setuptools", "build_py": "_setuptools",
         "cmdclass": "_setuptools", "wire_init": "_setuptools", "cffi_extension": "_cffi"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
