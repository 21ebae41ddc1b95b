"""fatmeson: fatdispatch's Meson (meson-python) example, built from fatdemo's C sources.

``fatmeson._core`` ships as several builds (baseline x86-64, x86-64-v2/v3/v4), each built by
one ``py.extension_module`` per build in meson.build; fatdispatch binds the best one this machine can run.
"""

__import__("_fatdispatch").install(__name__, ["_core"])  # fatdispatch: bind the best build of each fat module

from . import _core  # noqa: E402
from ._core import build_info, hamming, noop, popcount  # noqa: E402

__all__ = ["hamming", "popcount", "noop", "build_info", "variant", "hamming_reference"]


def variant() -> str:
    """The build of ``fatmeson._core`` this process bound."""
    return str(_core.__fatdispatch_variant__)


def hamming_reference(a: bytes, b: bytes) -> int:
    """Pure-Python Hamming distance (for tests)."""
    if len(a) != len(b):
        raise ValueError("buffers differ in size")
    return sum(bin(x ^ y).count("1") for x, y in zip(bytes(a), bytes(b)))
