"""Print one SHA-256 over contourpy's output for fixed random grids: every algorithm, line type, fill type, chunking
and z_interp it offers (lines and filled contours, corner masks, masked arrays). Run it under the stock wheel and the
fat one; the digests must be equal. Also prints which build of contourpy._contourpy was bound."""

from __future__ import annotations

import hashlib
import sys

import numpy as np

import contourpy
from contourpy import FillType, LineType, contour_generator


def feed(h: "hashlib._Hash", obj: object) -> None:
    if obj is None:
        h.update(b"N")
    elif isinstance(obj, np.ndarray):
        h.update(str((obj.dtype.str, obj.shape)).encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, (list, tuple)):
        h.update(b"[%d" % len(obj))
        for item in obj:
            feed(h, item)
    else:
        h.update(repr(obj).encode())


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
                        if not cls.supports_line_type(lt):
                            continue
                        g = contour_generator(x, y, zz, line_type=lt, **kw)
                        for lev in levels:
                            feed(h, (name, corner, chunk, str(lt), float(lev), g.lines(lev)))
                            cases += 1
                    for ft in FillType.__members__.values():
                        if not cls.supports_fill_type(ft):
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
