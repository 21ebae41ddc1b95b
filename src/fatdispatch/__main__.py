"""``python -m fatdispatch``: report, inspect and the packagers' commands."""

from __future__ import annotations

import argparse
import sys

from ._errors import FatDispatchError

DEFAULT_MODELS = ("qemu64", "Nehalem", "Haswell")  # the same as _toolbox.DEFAULT_MODELS (kept import-free)


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
    tv.add_argument("--qemu", action="store_true", help="also run each CPU model's build under qemu-x86_64 "
                    "(on aarch64: every aarch64 build under qemu-aarch64 with a CPU model that picks it)")
    tv.add_argument("--cpu-models", default=",".join(DEFAULT_MODELS),
                    help="qemu CPU models for --qemu, comma-separated (default: %(default)s)")
    tv.add_argument("--no-audit", action="store_true", help="skip the machine-code audit of the modules")
    tv.add_argument("--qemu-aarch64", metavar="QEMU", help="run the aarch64 builds under this qemu-aarch64 (>= 10), "
                    "one CPU model each; the command may be an emulated interpreter (see --sysroot)")
    tv.add_argument("--sysroot", metavar="DIR", help="with --qemu-aarch64: the aarch64 root filesystem (qemu -L)")
    tv.add_argument("--path", action="append", metavar="DIR", help="with --qemu-aarch64: find fat modules in DIR "
                    "(an install folder for the emulated interpreter) instead of on sys.path (repeatable)")
    tv.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND...")
    au = sub.add_parser("audit", help="check every CPU build's machine code against what its manifest requires")
    au.add_argument("paths", nargs="*", help="wheels or folders (default: the installed fat modules)")
    au.add_argument("--json", action="store_true", help="print one JSON object with every finding")
    au.add_argument("--all", action="store_true", help="list every offending instruction (default: 20 per build)")
    sl = sub.add_parser("slim", help="write a copy of a wheel holding only the chosen builds")
    sl.add_argument("wheel")
    sl.add_argument("--keep", nargs="+", required=True, help="build names to keep (the baseline is kept too)")
    sl.add_argument("-o", "--out", default="slim", help="output folder (default ./slim)")
    sl.add_argument("--drop-baseline", action="store_true", help="also drop the baseline build (warns)")
    sp = sub.add_parser("split", help="one PEP 825 variant wheel per build, plus the index and the fat fallback")
    sp.add_argument("wheel")
    sp.add_argument("-o", "--out", default="variants-out", help="output folder (default ./variants-out)")
    cap = sub.add_parser("capture", help="write this machine's facts (raw CPU words, GPUs, driver, environment) as JSON")
    cap.add_argument("-o", "--out", default=None, help="output file (default: stdout)")
    exp = sub.add_parser("explain", help="what TARGET (a wheel, a variants folder or an installed fat module) would "
                         "pick on a described machine, and why not the others")
    exp.add_argument("target")
    exp.add_argument("--machine", required=True, help="a machine description (python -m fatdispatch capture)")
    exp.add_argument("--json", action="store_true")
    nu = sub.add_parser("nuitka-args", help="print the Nuitka options that carry every build of an installed package")
    nu.add_argument("package")
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
            models = [m.strip() for m in args.cpu_models.split(",") if m.strip()]
            if args.qemu_aarch64 or (args.qemu and _machine_is_aarch64()):
                import shutil

                from ._toolbox import test_variants_aarch64

                qemu = args.qemu_aarch64 or shutil.which("qemu-aarch64")
                if qemu is None:
                    parser.error("--qemu on aarch64 needs qemu-aarch64 (>= 10 for the neoverse models) on PATH")
                rc = (test_variants(cmd, args.module, False, cpu_models=models, audit=not args.no_audit)
                      if not args.qemu_aarch64 else 0)
                return max(rc, test_variants_aarch64(cmd, qemu, args.sysroot, args.module, paths=args.path))
            return test_variants(cmd, args.module, args.qemu, cpu_models=models, audit=not args.no_audit)
        if args.command == "audit":
            from .build._audit import main as audit_main

            return audit_main(args.paths, args.json, 0 if args.all else 20)
        if args.command == "slim":
            from .build._wheel import print_slim

            return print_slim(args.wheel, args.keep, args.out, args.drop_baseline)
        if args.command == "split":
            from .build._wheel import split_wheel

            for written in split_wheel(args.wheel, args.out):
                print(written)
            return 0
        if args.command == "capture":
            from ._machine import print_capture

            return print_capture(args.out)
        if args.command == "explain":
            from ._machine import print_explain

            return print_explain(args.target, args.machine, args.json)
        if args.command == "nuitka-args":
            import shlex

            from ._load import fat_modules
            from ._frozen import nuitka_args

            try:
                print(" ".join(shlex.quote(a) for a in nuitka_args(args.package, fat_modules())))
            except LookupError as exc:
                print(f"nuitka-args: {exc}", file=sys.stderr)
                return 1
            return 0
        if args.command == "inspect":
            from .build._wheel import print_inspect

            return print_inspect(args.wheel, args.json)
    except FatDispatchError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 2


def _machine_is_aarch64() -> bool:
    import platform

    return platform.machine().lower() in ("aarch64", "arm64")


if __name__ == "__main__":
    sys.exit(main())
