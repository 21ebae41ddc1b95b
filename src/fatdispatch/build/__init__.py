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

The names are imported on first use, so the tools here that need no setuptools (``_audit``, ``_wheel``,
``python -m fatdispatch.build``: ``python -m fatdispatch audit|inspect|test-variants``, a CMake or Meson build
environment) also work where only the runtime is installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._catalog import BuildError, CpuVariant, CudaBuild, cpu_catalog, parse_cuda_spec
    from ._cffi import cffi_extension
    from ._cross import cross_env
    from ._setuptools import FatExtension, build_ext, build_py, cmdclass, wire_init

__all__ = ["FatExtension", "build_ext", "build_py", "cmdclass", "cffi_extension", "BuildError", "CpuVariant",
           "CudaBuild", "cpu_catalog", "cross_env", "parse_cuda_spec", "wire_init"]

_WHERE = {"BuildError": "_catalog", "CpuVariant": "_catalog", "CudaBuild": "_catalog", "cpu_catalog": "_catalog",
          "parse_cuda_spec": "_catalog", "cffi_extension": "_cffi", "cross_env": "_cross", "FatExtension": "_setuptools",
          "build_ext": "_setuptools", "build_py": "_setuptools", "cmdclass": "_setuptools", "wire_init": "_setuptools"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
