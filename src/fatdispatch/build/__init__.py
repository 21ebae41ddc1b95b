"""fatdispatch's build side: declare an extension once, get every build, the manifest and the wiring.

setuptools (``setup.py``)::

    from setuptools import setup
    from fatdispatch.build import FatExtension, cmdclass

    setup(ext_modules=[FatExtension("mypkg._core", ["src/mypkg/_core.c"],
                                    cuda_sources=["src/mypkg/_core.cu"],
                                    cuda_targets=["sm_80", "sm_90", "compute_75"])],
          cmdclass=cmdclass())

or ``pyproject.toml`` alone (``[[tool.fatdispatch.extension]]`` tables, read
by a setuptools plugin).  cffi: :func:`cffi_extension`.
"""

from ._catalog import BuildError, CpuVariant, CudaBuild, cpu_catalog, parse_cuda_spec
from ._cffi import cffi_extension
from ._cross import cross_env
from ._setuptools import FatExtension, build_ext, build_py, cmdclass, wire_init

__all__ = ["FatExtension", "build_ext", "build_py", "cmdclass", "cffi_extension", "BuildError", "CpuVariant",
           "CudaBuild", "cpu_catalog", "cross_env", "parse_cuda_spec", "wire_init"]
