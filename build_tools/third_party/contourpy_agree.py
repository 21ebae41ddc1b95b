"""Print one SHA-256 over contourpy's output for fixed random grids: every algorithm, line type, fill type, chunking
and z_interp it offers (the threaded algorithm with the chunk-combined types only: the order of separate lines
follows its threads' timing) (lines and filled contours, corner masks, masked arrays). Run it under the stock wheel
(--dump FILE) and under each build of the fat one (--compare FILE): equal digests mean bit-identical output; else
the arrays are compared (structure exactly, coordinates within a relative 1e-12). Prints the build bound."""

from __future__ import annotations

import hashlib
import sys

import numpy as np

import contourpy
from contourpy import FillType, LineType, contour_generator


ARRAYS: list[np.ndarray] = []  # every array, in order, for --dump / --compare


def feed(h: "hashlib._Hash", obj: object) -> None:
    if obj is None:
        h.update(b"N")
    elif isinstance(obj, np.ndarray):
        h.update(str((obj.dtype.str, obj.shape)).encode())
        h.update(np.ascontiguousarray(obj).tobytes())
        ARRAYS.append(np.array(obj))
    elif isinstance(obj, (list, tuple)):
        h.update(b"[%d" % len(obj))
        for item in obj:
            feed(h, item)
    else:
        h.update(repr(obj).encode())


def compare(path: str) -> str:
    """Against arrays dumped by another run: the same arrays, shapes and dtypes, integer arrays (codes, offsets)
    equal, float arrays (coordinates) equal or within a relative 1e-12; says which and the largest difference."""
    with np.load(path) as ref:
        theirs = [ref[f"a{i}"] for i in range(len(ref.files))]
    if len(theirs) != len(ARRAYS):
        return f"DIFFERENT: {len(ARRAYS)} arrays here, {len(theirs)} there"
    worst, unequal = 0.0, 0
    for i, (a, b) in enumerate(zip(ARRAYS, theirs)):
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"DIFFERENT: array {i}: {a.dtype}{a.shape} here, {b.dtype}{b.shape} there"
        if a.dtype.kind != "f":
            if not np.array_equal(a, b):
                return f"DIFFERENT: array {i} ({a.dtype}) differs"
            continue
        if not np.array_equal(a, b, equal_nan=True):
            unequal += 1
            rel = float(np.nanmax(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))
            worst = max(worst, rel)
    if unequal == 0:
        return "identical to the reference"
    verdict = "AGREES" if worst <= 1e-12 else "DIFFERENT"
    return f"{verdict}: structure identical, {unequal} of {len(ARRAYS)} float arrays differ, max relative {worst:.2e}"


def main() -> int:
    rng = np.random.default_rng(20261201)
    h = hashlib.sha256()
    cases = 0
    for ny, nx in ((37, 53), (120, 90)):
        x, y = np.meshgrid(np.linspace(-3, 3, nx), np.linspace(-2, 2, ny))
        z = np.sin(x * y) + 0.25 * rng.standard_normal((ny, nx))
        zm = np.ma.masked_array(z, mask=rng.random((ny, nx)) < 0.05)
        levels = np.linspace(z.min(), z.max(), 9)[1:-1]
        for name in ("serial", "threaded", "mpl2014", "mpl2005"):
            cls = contourpy._class_lookup[name]
            for zz, corner in ((z, False), (zm, False), (zm, True)):
                if corner and not cls.supports_corner_mask():
                    continue
                for chunk in (0, 17):
                    kw = {"name": name, "chunk_size": chunk, "corner_mask": corner}
                    if cls.supports_threads():
                        kw["thread_count"] = 2
                    for lt in LineType.__members__.values():
                        if not cls.supports_line_type(lt) or (name == "threaded" and "Chunk" not in lt.name):
                            continue  # threaded: the order of separate lines follows the threads' timing
                        g = contour_generator(x, y, zz, line_type=lt, **kw)
                        for lev in levels:
                            feed(h, (name, corner, chunk, str(lt), float(lev), g.lines(lev)))
                            cases += 1
                    for ft in FillType.__members__.values():
                        if not cls.supports_fill_type(ft) or (name == "threaded" and "Chunk" not in ft.name):
                            continue
                        g = contour_generator(x, y, zz, fill_type=ft, **kw)
                        for lo, hi in zip(levels[:-1], levels[1:]):
                            feed(h, (name, corner, chunk, str(ft), float(lo), g.filled(lo, hi)))
                            cases += 1
        g = contour_generator(x, y, np.exp(z), name="serial", z_interp=contourpy.ZInterp.Log,
                              line_type=LineType.ChunkCombinedOffset)
        feed(h, g.lines(float(np.exp(levels[3]))))
    variant = getattr(contourpy._contourpy, "__fatdispatch_variant__", "stock")
    print(f"contourpy {contourpy.__version__} build={variant} cases={cases} sha256={h.hexdigest()}")
    if len(sys.argv) == 3 and sys.argv[1] == "--dump":
        np.savez(sys.argv[2], **{f"a{i}": a for i, a in enumerate(ARRAYS)})
    if len(sys.argv) == 3 and sys.argv[1] == "--compare":
        verdict = compare(sys.argv[2])
        print(f"  versus the reference: {verdict}")
        return 1 if verdict.startswith("DIFFERENT") else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
