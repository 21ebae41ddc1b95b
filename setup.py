"""The one compiled module of fatdispatch: ``_fatdispatch`` (the import path and the CPU primitives).

Declared here rather than in ``pyproject.toml`` because its link flags depend on the platform.  Everything else
about the project is in ``pyproject.toml``.

* ``-fvisibility=hidden``: nothing is exported but ``PyInit__fatdispatch``.
* Linux, ``-z now``: every symbol is bound at load, so calls on the import path never go through the lazy-binding
  trampoline, and the whole GOT is read-only after load (full RELRO instead of partial).
* Linux, ``-z noseparate-code``: two mappings instead of four.  On a virtual machine each mapping and each first
  touch of a page costs tens of microseconds, and this module is loaded on every import of every fat package.
  ``benchmarks/run_all.py`` measures the import that pays for it.
"""

import sys

from setuptools import Extension, setup

link_args = ["-Wl,-z,now", "-Wl,-z,noseparate-code"] if sys.platform.startswith("linux") else []

setup(ext_modules=[Extension(
    "_fatdispatch",
    sources=["src/fatdispatch/_fatdispatch.c", "src/fatdispatch/_cpuid.c"],
    depends=["src/fatdispatch/_cpuid.h", "src/fatdispatch/_cpu_table.h"],
    extra_compile_args=["-fvisibility=hidden", "-g0"],
    extra_link_args=link_args,
)])
