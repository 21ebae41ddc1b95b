"""``python -m fatdispatch``: report, inspect and the packagers' commands."""

from __future__ import annotations

import argparse
import sys

from ._runtime import FatDispatchError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fatdispatch",
                                     description="Explain and manage fat (multi-build) extension modules.")
    parser.add_argument("--cmake-dir", action="store_true",
                        help="print the folder of fatdispatch's CMake package (fatdispatchConfig.cmake) and exit")
    parser.add_argument("--meson-dir", action="store_true",
                        help="print the folder of fatdispatch's Meson helper (meson.build) and exit")
    sub = parser.add_subparsers(dest="command")
    rep = sub.add_parser("report", help="the detected hardware and, per installed fat module, its pick and why")
    rep.add_argument("--json", action="store_true", help="print one JSON object")
    ins = sub.add_parser("inspect", help="list the fat modules in a wheel, each build with its requirements and size")
    ins.add_argument("wheel")
    ins.add_argument("--json", action="store_true")
    tv = sub.add_parser("test-variants", help="run a test command once per build this machine can run")
    tv.add_argument("--module", action="append", default=[], help="only this fat module (repeatable)")
    tv.add_argument("--qemu", action="store_true", help="also run older x86-64 builds under qemu-x86_64")
    tv.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND...")
    sl = sub.add_parser("slim", help="write a copy of a wheel holding only the chosen builds")
    sl.add_argument("wheel")
    sl.add_argument("--keep", nargs="+", required=True, help="build names to keep (the baseline is kept too)")
    sl.add_argument("-o", "--out", default="slim", help="output folder (default ./slim)")
    sl.add_argument("--drop-baseline", action="store_true", help="also drop the baseline build (warns)")
    sp = sub.add_parser("split", help="one PEP 825 variant wheel per build, plus the index and the fat fallback")
    sp.add_argument("wheel")
    sp.add_argument("-o", "--out", default="variants-out", help="output folder (default ./variants-out)")
    args = parser.parse_args(argv)
    if args.cmake_dir or args.meson_dir:
        import os

        print(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cmake" if args.cmake_dir else "meson"))
        return 0
    if args.command is None:
        parser.error("a command is required (report, inspect, test-variants, slim, split) or --cmake-dir")
    try:
        if args.command == "report":
            from ._report import print_report

            return print_report(args.json)
        if args.command == "test-variants":
            from ._toolbox import test_variants

            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not cmd:
                parser.error("test-variants needs a command after --")
            return test_variants(cmd, args.module, args.qemu)
        if args.command == "slim":
            from .build._wheel import print_slim

            return print_slim(args.wheel, args.keep, args.out, args.drop_baseline)
        if args.command == "split":
            from .build._wheel import split_wheel

            for written in split_wheel(args.wheel, args.out):
                print(written)
            return 0
        if args.command == "inspect":
            from .build._wheel import print_inspect

            return print_inspect(args.wheel, args.json)
    except FatDispatchError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
