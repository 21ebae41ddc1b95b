"""fatdemo's own tests: plain functions that pytest collects, also runnable as a script (no pytest, no NumPy),
so they run under qemu-x86_64 on emulated old CPUs:  python examples/fatdemo/tests/test_fatdemo.py
FATDEMO_PACKAGE=fatcmake (or fatmeson) runs the same tests on the CMake and Meson examples, built from these kernels."""

import array
import importlib
import os
import random
import sys

fatdemo = importlib.import_module(os.environ.get("FATDEMO_PACKAGE", "fatdemo"))


def test_known_values():
    assert fatdemo.hamming(b"", b"") == 0
    assert fatdemo.hamming(b"\xff" * 100, b"\x00" * 100) == 800
    assert fatdemo.popcount(b"\x01\x03\x07\x0f") == 10


def test_matches_reference_at_every_length():
    rng = random.Random(1234)
    for n in list(range(0, 300)) + [1023, 4096, 65537]:
        a = bytes(rng.getrandbits(8) for _ in range(n))
        b = bytes(rng.getrandbits(8) for _ in range(n))
        assert fatdemo.hamming(a, b) == fatdemo.hamming_reference(a, b), n


def test_large_random():
    a, b = os.urandom(1 << 20), os.urandom(1 << 20)
    assert fatdemo.hamming(a, b) == fatdemo.hamming_reference(a, b)
    assert fatdemo.popcount(a) == fatdemo.hamming_reference(a, bytes(len(a)))


def test_buffer_kinds():
    a = array.array("I", range(1000))
    b = array.array("I", reversed(range(1000)))
    ref = fatdemo.hamming_reference(a.tobytes(), b.tobytes())
    assert fatdemo.hamming(a, b) == ref
    assert fatdemo.hamming(memoryview(a), bytearray(b.tobytes())) == ref


def test_errors():
    for args, exc in (((b"a", b"ab"), ValueError), ((b"a", 5), TypeError), ((u"text", b"t"), TypeError)):
        try:
            fatdemo.hamming(*args)
        except exc:
            pass
        else:
            raise AssertionError(f"no {exc.__name__} for {args!r}")


def test_build_identity():
    info = fatdemo.build_info()
    assert info["variant"] == fatdemo.variant()
    assert isinstance(info["isa_macros"], list)


if __name__ == "__main__":
    tests = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_") and callable(f)]
    failed = 0
    for name, fn in tests:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            failed += 1
            print(f"FAILED {name}: {type(exc).__name__}: {exc}")
    print(f"{fatdemo.__name__} {fatdemo.variant()} ({fatdemo.build_info()['kernel']}): {len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
