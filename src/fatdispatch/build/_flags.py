"""Compiler flags that decide a build's instruction set, told apart from every other flag (pure).

Each build's ISA is its variant's flags (``variants/*.json``) and nothing else: ``-mavx2`` in ``CFLAGS`` would
put AVX2 into the baseline build (GCC lets an explicit ``-m<isa>`` win over any ``-march``), and
``-march=native`` would put this machine's ISA into all of them.  :func:`split_isa_flags` finds those flags in a
command line; ``build_ext`` drops them from the compiler and linker commands (``CFLAGS``, ``CXXFLAGS``,
``CPPFLAGS``, ``LDFLAGS`` and Python's own configured flags all end up there) and says so once in the build log.
"""

from __future__ import annotations

import re
from typing import Iterable

# GCC/Clang x86 ISA extension switches (-m<isa> / -mno-<isa>); tuning switches (-mprefer-vector-width=,
# -mfpmath=, -mstackrealign, -m64, -mno-red-zone ...) are not ISA and pass through.
_X86_ISA = (
    r"mmx|3dnow|3dnowa|sse|sse2|sse3|ssse3|sse4|sse4\.1|sse4\.2|sse4a|avx|avx2|avx512[a-z0-9]*|avx10[.0-9a-z-]*"
    r"|avxvnni[a-z0-9]*|avxifma|avxneconvert|fma|fma4|xop|bmi|bmi2|lzcnt|popcnt|f16c|movbe|aes|pclmul|sha"
    r"|sha512|sm3|sm4|adx|rdrnd|rdseed|fsgsbase|xsave|xsaveopt|xsavec|xsaves|fxsr|cx16|sahf|crc32|abm|tbm|lwp"
    r"|gfni|vaes|vpclmulqdq|amx-[a-z0-9-]+|prfchw|prefetchwt1|prefetchi|clflushopt|clwb|rtm|hle|mwaitx|clzero"
    r"|pku|rdpid|movdiri|movdir64b|waitpkg|cldemote|serialize|tsxldtrk|uintr|hreset|kl|widekl|enqcmd|ptwrite"
    r"|cmpccxadd|raoint|apxf|evex512|usermsr|rdpru|invpcid|pconfig|wbnoinvd|sgx|shstk|ibt"
)
_ISA_FLAG = re.compile(rf"^-m(?:no-)?(?:{_X86_ISA})$")
_ISA_VALUE = re.compile(r"^-m(?:arch|cpu|tune|fpu|sve-vector-bits|isa-level)=")  # -march=, -mcpu=, -mtune=, ...


def is_isa_flag(arg: str) -> bool:
    """Does ``arg`` choose (or tune for) an instruction set?"""
    return bool(_ISA_VALUE.match(arg) or _ISA_FLAG.match(arg))


def split_isa_flags(args: Iterable[str]) -> tuple[list[str], list[str]]:
    """``args`` without the ISA flags, and the ISA flags removed (in order).  ``-march native`` (two
    arguments) is not a GCC spelling, so every flag is one argument."""
    kept: list[str] = []
    removed: list[str] = []
    for arg in args:
        (removed if is_isa_flag(arg) else kept).append(arg)
    return kept, removed


FP_CONTRACT_OFF = {"gcc": ["-ffp-contract=off"], "msvc": []}  # MSVC: left at its default (/fp:precise); not checked here
"""Flags that keep ``a*b+c`` two roundings in every build (GCC contracts it to FMA by default wherever the
variant has FMA, so v3/v4 builds would give other results than baseline/v2)."""
