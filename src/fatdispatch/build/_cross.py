"""Cross builds: the environment that makes setuptools (and fatdispatch's ``build_ext``) build for another arch.

    env = dict(os.environ, **cross_env("aarch64", ".arm64/rootfs"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "."], env=env)

gives ``*-linux_aarch64.whl`` whose extensions are compiled by ``aarch64-linux-gnu-gcc`` against the target's
Python headers (a sysroot holding ``usr/include/python3.X``, e.g. one unpacked from Debian's
``libpython3.X-dev``).  How: ``CC``/``LDSHARED`` name the cross compiler, ``CFLAGS`` puts the target's headers
before the host's, ``SETUPTOOLS_EXT_SUFFIX`` gives the target's file suffix (setuptools' own variable; fatdispatch's
fat builds read it too) and ``_PYTHON_HOST_PLATFORM`` makes ``sysconfig.get_platform()`` -- hence the wheel's
platform tag and :func:`fatdispatch.build._layout.default_arch`, which picks the variant catalog -- the target's.
"""

from __future__ import annotations

import os
import sys

from ._catalog import BuildError

TRIPLETS = {"aarch64": "aarch64-linux-gnu", "x86_64": "x86_64-linux-gnu"}


def cross_env(arch: str, sysroot: str, python: tuple[int, int] | None = None,
              compiler: str | None = None) -> dict[str, str]:
    """Environment variables for a Linux cross build of CPython ``python`` (default: this one's) extensions."""
    if arch not in TRIPLETS:
        raise BuildError(f"no cross build recipe for {arch!r}; known: {', '.join(TRIPLETS)}")
    major, minor = python or sys.version_info[:2]
    triplet = TRIPLETS[arch]
    inc = os.path.join(os.path.abspath(sysroot), "usr", "include")
    headers = [os.path.join(inc, f"python{major}.{minor}"), os.path.join(inc, triplet, f"python{major}.{minor}")]
    if not os.path.isfile(os.path.join(headers[0], "Python.h")):
        raise BuildError(f"{headers[0]}/Python.h is missing: the sysroot needs the target's Python headers "
                         f"(libpython{major}.{minor}-dev for {arch}; build_tools/arm64_env.sh makes one)")
    cc = compiler or f"{triplet}-gcc"
    return {
        "CC": cc,
        "LDSHARED": f"{cc} -shared",
        "CFLAGS": " ".join([*(f"-I{h}" for h in headers if os.path.isdir(h)), "-idirafter", inc]),
        "SETUPTOOLS_EXT_SUFFIX": f".cpython-{major}{minor}-{triplet}.so",
        "_PYTHON_HOST_PLATFORM": f"linux-{arch}",
    }
