"""``python -m fatdispatch.build``: the catalog's flags and the manifest writer, for CMake, Meson and scripts.

    python -m fatdispatch.build flags --variant x86-64-v3 --compiler GNU
    python -m fatdispatch.build cuda-flags --target sm_80+sm_86 --cuda-version 13.0
    python -m fatdispatch.build plan --module pkg._core --variants baseline x86-64-v3 --cuda-targets sm_90 \\
        --compiler GNU --cuda-version 13.0.88 --format cmake
    python -m fatdispatch.build meson-files --variants baseline x86-64-v2 x86-64-v3 --dir fatdispatch-meson
    python -m fatdispatch.build manifest --module pkg._core --variants baseline x86-64-v3 --cuda-targets sm_90 \\
        --cuda-version 13.0 --out build/pkg/_core.variants [--file baseline=PATH ...]

Every command reads the catalog installed with fatdispatch (``fatdispatch.variants``); none keeps a copy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from .._errors import FatDispatchError
from ._catalog import BuildError, cpu_variant, parse_cuda_spec
from ._layout import (Build, build_manifest, check_files, cmake_quote, cpu_flags, default_arch, nvcc_flags,
                      parse_cuda_version, plan_builds, write_manifest)


def _builds_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--module", required=True, help="the fat module's full name, e.g. pkg._core")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   help="CPU catalog names (default: every variant of the architecture)")
    p.add_argument("--cuda-targets", nargs="*", default=[], metavar="SPEC",
                   help="one CUDA build per SPEC: sm_XY, compute_XY, several joined with +, optionally NAME=...")
    p.add_argument("--cuda-version", default=None, help="the CUDA toolkit version built with (13.0 or 13.0.88)")
    p.add_argument("--arch", default=None, help="the architecture built for (default: this one)")


def _priorities(items: Sequence[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name] = int(value)
        except ValueError:
            raise BuildError(f"--priority {item!r}: expected NAME=INTEGER") from None
        if not sep or not name:
            raise BuildError(f"--priority {item!r}: expected NAME=INTEGER")
    return out


def _files(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise BuildError(f"--file {item!r}: expected BUILD=PATH")
        out[name] = path
    return out


def _runtime(args: argparse.Namespace, builds: Sequence[Build]) -> tuple[int, int]:
    if not any(b.cuda is not None for b in builds):
        return (0, 0)
    if not args.cuda_version:
        raise BuildError("CUDA builds need --cuda-version (CMake: ${CMAKE_CUDA_COMPILER_VERSION}; nvcc --version)")
    return parse_cuda_version(args.cuda_version)


def plan_cmake(module: str, builds: Sequence[Build], compiler: str, runtime: tuple[int, int]) -> str:
    """The builds as CMake ``set()`` lines (``FATDISPATCH_PLAN_*``) for ``fatdispatch_add_module`` to include."""
    lines = [f"# written by python -m fatdispatch.build plan for {module}",
             f"set(FATDISPATCH_PLAN_BUILDS {cmake_quote(b.name for b in builds)})"]
    for b in builds:
        lines.append(f"set(FATDISPATCH_PLAN_KIND_{b.name} {b.kind})")
        lines.append(f"set(FATDISPATCH_PLAN_CFLAGS_{b.name} {cmake_quote(cpu_flags(b.cpu, compiler))})")
        if b.cuda is not None:
            lines.append(f"set(FATDISPATCH_PLAN_NVCCFLAGS_{b.name} {cmake_quote(nvcc_flags(b.cuda, runtime))})")
    return "\n".join(lines) + "\n"


def plan_json(module: str, builds: Sequence[Build], compiler: str, runtime: tuple[int, int]) -> dict[str, Any]:
    return {"module": module, "builds": [
        {"name": b.name, "kind": b.kind, "cflags": cpu_flags(b.cpu, compiler),
         **({"nvcc_flags": nvcc_flags(b.cuda, runtime)} if b.cuda is not None else {})} for b in builds]}


def write_meson_files(folder: str, builds: Sequence[str]) -> list[str]:
    """Copy fatdispatch's Meson helper into ``folder``: the driver as ``meson.build``, and ``<build>/meson.build``
    for each build (Meson reads only files inside a project, and each folder only once)."""
    from importlib import resources

    here = resources.files("fatdispatch.meson")
    driver = here.joinpath("meson.build").read_text("utf-8")
    one = here.joinpath("build.meson").read_text("utf-8")
    written = [os.path.join(folder, "meson.build")]
    os.makedirs(folder, exist_ok=True)
    with open(written[0], "w", encoding="utf-8") as f:
        f.write(driver.replace("@WRITTEN@", "[" + ", ".join(f"'{b}'" for b in builds) + "]"))
    for b in builds:
        os.makedirs(os.path.join(folder, b), exist_ok=True)
        written.append(os.path.join(folder, b, "meson.build"))
        with open(written[-1], "w", encoding="utf-8") as f:
            f.write(one)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fatdispatch.build",
                                     description="fatdispatch's catalog flags and manifest writer for build systems.")
    sub = parser.add_subparsers(dest="command", required=True)
    fl = sub.add_parser("flags", help="the catalog's compiler flags of one CPU variant, space-separated")
    fl.add_argument("--variant", required=True)
    fl.add_argument("--compiler", required=True, help="GNU, Clang, AppleClang, IntelLLVM, MSVC, gcc, clang-cl...")
    fl.add_argument("--arch", default=None)
    cf = sub.add_parser("cuda-flags", help="nvcc's flags for one CUDA build (gencode, static cudart, compression)")
    cf.add_argument("--target", required=True, help="sm_XY, compute_XY, several joined with +")
    cf.add_argument("--cuda-version", required=True)
    pl = sub.add_parser("plan", help="every build of a module with its flags (for CMake: --format cmake)")
    _builds_args(pl)
    pl.add_argument("--compiler", required=True)
    pl.add_argument("--format", choices=("cmake", "json"), default="json")
    pl.add_argument("-o", "--output", default=None, help="write here instead of stdout")
    mf = sub.add_parser("manifest", help="write <out>/manifest.json through fatdispatch's manifest writer")
    _builds_args(mf)
    mf.add_argument("--priority", action="append", default=[], metavar="BUILD=N")
    mf.add_argument("--out", required=True, help="the module's variants folder (<pkg>/<mod>.variants)")
    mf.add_argument("--file", action="append", default=[], metavar="BUILD=PATH",
                    help="a built file to check (repeat for every build: all must be given, exist and be named "
                         "<mod><EXT_SUFFIX>)")
    mn = sub.add_parser("meson-files", help="write fatdispatch's Meson helper into a project (one folder per build)")
    mn.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                    help="CPU catalog names (default: every variant of the architecture)")
    mn.add_argument("--arch", default=None)
    mn.add_argument("--dir", default="fatdispatch-meson", help="the folder to write (default ./fatdispatch-meson)")
    args = parser.parse_args(argv)
    try:
        if args.command == "meson-files":
            for path in write_meson_files(args.dir, [b.name for b in plan_builds(args.variants, (), args.arch)]):
                print(f"fatdispatch: wrote {path}")
            return 0
        if args.command == "flags":
            print(" ".join(cpu_flags(cpu_variant(args.variant, args.arch or default_arch()), args.compiler)))
            return 0
        if args.command == "cuda-flags":
            print(" ".join(nvcc_flags(parse_cuda_spec(args.target), parse_cuda_version(args.cuda_version))))
            return 0
        builds = plan_builds(args.variants, args.cuda_targets, args.arch)
        runtime = _runtime(args, builds)
        if args.command == "plan":
            text = plan_cmake(args.module, builds, args.compiler, runtime) if args.format == "cmake" \
                else json.dumps(plan_json(args.module, builds, args.compiler, runtime), indent=1) + "\n"
            if args.output:
                os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
                with open(args.output, "w", encoding="utf-8") as f:
                    f.write(text)
            else:
                sys.stdout.write(text)
            return 0
        if args.command == "manifest":
            if args.file:
                check_files(args.module, builds, _files(args.file))
            manifest = build_manifest(args.module, builds, runtime, _priorities(args.priority))
            print(f"fatdispatch: wrote {write_manifest(os.path.abspath(args.out), manifest)}")
            return 0
    except FatDispatchError as exc:
        print(f"fatdispatch.build: error: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
