"""fatdispatch: ship one wheel with several builds of an extension; import the best one this machine can run.

A fat package's ``__init__.py`` holds the line fatdispatch's build helper writes::

    __import__("_fatdispatch").install(__name__, ["_core"])  # fatdispatch: bind the best build of each fat module

and from then on ``import mypkg._core`` binds the best build of ``_core`` under that stable name.
``python -m fatdispatch report`` explains every decision.

Public API: :func:`install`, :func:`explain`, :func:`loaded`, :func:`hardware`, :func:`fat_modules`, the
error classes and the value types they return.  Each is defined on first use: a fat package's import never
needs this package when its pick is cached, and otherwise loads only the modules of the full path.
Everything else is private.

Layout (each module one job; layers import downwards only, ``tests/test_layers.py`` walks the graph):

* ``_fatdispatch`` (top-level, compiled from ``_fatdispatch.c`` and ``_cpuid.c``): the import path (registry,
  finder and loader, file checks, the private-file reader, the pick cache) and the CPU primitives
  (CPUID/XGETBV, the x86 feature decoder, auxv, sysctl, AMX).
* ``_records`` value types; ``_errors`` the error hierarchy; ``_manifest`` the manifest contract;
  ``_env`` every ``FATDISPATCH_*`` rule; ``_cpu`` the CPU probe; ``_cuda`` NVIDIA's compatibility rules;
  ``_nvml`` the NVML binding; ``_gpu`` the GPU probe and its cache; ``_select`` the pure decision;
  ``_load`` the full path; ``_report``, ``_discover``, ``__main__``, ``_toolbox``, ``_pyinstaller`` and
  ``build`` on top.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from _fatdispatch import install

    from ._errors import ConfigError, FatDispatchError, ManifestError, NoUsableBuildError
    from ._load import explain, fat_modules, hardware, loaded
    from ._records import CPU, GPU, GPUs, Candidate, Hardware, LoadRecord, Manifest, Selection, Variant

__version__ = "0.1.0"
__all__ = ["install", "explain", "loaded", "hardware", "fat_modules", "FatDispatchError", "ManifestError",
           "ConfigError", "NoUsableBuildError", "CPU", "GPU", "GPUs", "Candidate", "Hardware", "LoadRecord",
           "Manifest", "Selection", "Variant", "__version__"]

_WHERE = {"install": "_fatdispatch",
          **{n: "fatdispatch._errors" for n in ("FatDispatchError", "ManifestError", "ConfigError",
                                                "NoUsableBuildError")},
          **{n: "fatdispatch._load" for n in ("explain", "loaded", "hardware", "fat_modules")},
          **{n: "fatdispatch._records" for n in ("CPU", "GPU", "GPUs", "Candidate", "Hardware", "LoadRecord",
                                                 "Manifest", "Selection", "Variant")}}


def __getattr__(name: str) -> "Any":
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'fatdispatch' has no attribute {name!r}")
    __import__(where)
    import sys

    return getattr(sys.modules[where], name)


def __dir__() -> "list[str]":
    return sorted(set(globals()) | set(__all__))
