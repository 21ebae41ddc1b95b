"""setuptools integration: one declaration, every build, the manifest and the import wiring.

* :class:`FatExtension` declares the extension once (C/C++ sources, ``.cu``
  sources, the CPU variants and CUDA targets to build).
* :class:`build_ext` compiles every variant in its own object folder (so two
  variants of one source never share an object file), all of them in parallel,
  each exporting the same ``PyInit_<name>``; installs them into
  ``<pkg>/<mod>.variants/<variant>/`` and writes the manifest there.
* :class:`build_py` wires ``import mypkg`` to the dispatcher by adding one line
  to the package's ``__init__.py`` in the build tree, where it is missing.
* :func:`finalize_distribution_options` (a setuptools plugin entry point) reads
  ``[[tool.fatdispatch.extension]]`` tables from ``pyproject.toml`` so a
  package needs no ``setup.py`` at all.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator, Mapping, Sequence

from setuptools import Extension
from setuptools.command.build_ext import build_ext as _build_ext
from setuptools.command.build_py import build_py as _build_py

from .. import __version__
from .._cpu import normalize_arch
from .._manifest import MANIFEST_NAME, SCHEMA_VERSION, VARIANTS_SUFFIX, parse_manifest
from . import _audit
from ._layout import default_arch, host_variant
from ._catalog import (BuildError, CpuVariant, CudaBuild, check_cuda_build, cpu_catalog, cpu_variant, cuda_flags,
                       nvcc_path, nvcc_version, parse_cuda_spec, variants_for)
from ._flags import FP_CONTRACT_OFF, split_isa_flags

PYPI_LIMIT = 100 * 1024 * 1024
WIRING_MARKER = "# fatdispatch: bind the best build of each fat module"


def ext_suffix(arch: str) -> str:
    """The extension file suffix for ``arch``: ``SETUPTOOLS_EXT_SUFFIX`` (setuptools' own cross-build variable, so
    the fat builds and plain extensions agree), else this interpreter's, which is right only for its own arch."""
    suffix = os.environ.get("SETUPTOOLS_EXT_SUFFIX") or sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    host = normalize_arch(platform.machine())
    if arch != host and not os.environ.get("SETUPTOOLS_EXT_SUFFIX"):
        raise BuildError(f"building for {arch} on {host}: set SETUPTOOLS_EXT_SUFFIX to the target's EXT_SUFFIX "
                         f"(e.g. .cpython-311-{arch}-linux-gnu.so), or use fatdispatch.build.cross_env()")
    return suffix


class FatExtension(Extension):
    """An extension built once per variant and dispatched at import.

    ``variants``: CPU catalog names (default: every variant of the build
    architecture); names from another architecture's catalog are left out, so
    one list serves every architecture the package is built for.  ``cuda_sources``: ``.cu`` files compiled by nvcc into the
    CUDA builds only; ``cuda_targets``: one CUDA build per entry, an entry being
    ``sm_XY``/``compute_XY`` or several joined with ``+`` (``"sm_80+sm_86"``),
    optionally named (``"ampere=sm_80+sm_86"``).  The C sources of a CUDA build
    are compiled with ``-DFATDISPATCH_CUDA=1``; every build gets
    ``-DFATDISPATCH_VARIANT="<name>"``.  ``priorities`` maps build names to the
    packager's priority (higher wins among usable builds of one kind; default
    0).  ``cuda="required"`` fails the build where nvcc is missing;
    ``cuda="optional"`` then skips the CUDA builds with a warning.

    ``fp_contract=False`` (the default) compiles every build with ``-ffp-contract=off`` so builds with FMA give
    the same floating-point results as those without; ``True`` lets the compiler fuse ``a*b+c``.
    ``audit``: what a failed machine-code audit does at the end of the build: ``"error"`` (default),
    ``"warn"`` or ``"off"`` (``FATDISPATCH_AUDIT`` overrides it).  ``audit_guarded`` maps symbol names (or
    ``fnmatch`` patterns) to the CPU features their code may use because it checks for them at run time
    (written to ``<mod>.variants/audit.json``).
    """

    def __init__(self, name: str, sources: list[str], *, variants: Sequence[str] | None = None,
                 cuda_sources: Sequence[str] = (), cuda_targets: Sequence[str] = (),
                 priorities: Mapping[str, int] | None = None, nvcc_flags: Sequence[str] = (),
                 cuda: str = "required", fp_contract: bool = False, audit: str = "error",
                 audit_guarded: Mapping[str, Sequence[str]] | None = None, **kwargs: Any) -> None:
        super().__init__(name, sources, **kwargs)
        self.arch = default_arch()
        catalog = cpu_catalog(self.arch)
        self.variants = variants_for(list(variants) if variants is not None else list(catalog), self.arch)
        self.cuda_sources = list(cuda_sources)
        self.cuda_builds = [parse_cuda_spec(t) for t in cuda_targets]
        if self.cuda_builds and not self.cuda_sources:
            raise BuildError(f"{name}: cuda_targets given but no cuda_sources")
        if cuda not in ("required", "optional"):
            raise BuildError(f"{name}: cuda={cuda!r}; expected 'required' or 'optional'")
        self.cuda_mode = cuda
        self.nvcc_flags = list(nvcc_flags)
        self.priorities = dict(priorities or {})
        if type(fp_contract) is not bool:
            raise BuildError(f"{name}: fp_contract={fp_contract!r}; expected true or false")
        self.fp_contract = fp_contract
        if audit not in AUDIT_MODES:
            raise BuildError(f"{name}: audit={audit!r}; expected one of {', '.join(AUDIT_MODES)}")
        self.audit = audit
        try:
            self.audit_guarded = _audit.check_guarded(dict(audit_guarded or {}), f"{name}: audit_guarded")
        except _audit.AuditError as exc:
            raise BuildError(str(exc)) from None
        names = [v.name for v in self.variants] + [b.name for b in self.cuda_builds]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise BuildError(f"{name}: duplicate build names {sorted(dupes)}")
        unknown = set(self.priorities) - set(names)
        if unknown:
            raise BuildError(f"{name}: priorities name unknown builds {sorted(unknown)}; builds: {', '.join(names)}")
        if not self.variants:
            raise BuildError(f"{name}: at least one CPU variant is required (the fallback where no GPU is usable)")

    @property
    def package(self) -> str:
        return str(self.name).rpartition(".")[0]

    @property
    def modname(self) -> str:
        return str(self.name).rpartition(".")[2]


AUDIT_MODES = ("error", "warn", "off")


def audit_mode(ext: FatExtension, env: Mapping[str, str]) -> str:
    """``FATDISPATCH_AUDIT`` (error/warn/off) if set, else the extension's own setting."""
    raw = env.get("FATDISPATCH_AUDIT", "").strip().lower()
    if not raw:
        return ext.audit
    if raw not in AUDIT_MODES:
        raise BuildError(f"FATDISPATCH_AUDIT={raw!r}; expected one of {', '.join(AUDIT_MODES)}")
    return raw


_COMPILER_COMMANDS = ("compiler", "compiler_so", "compiler_cxx", "compiler_so_cxx", "linker_so", "linker_so_cxx",
                      "linker_exe", "linker_exe_cxx", "preprocessor")


class _Job:
    def __init__(self, ext: FatExtension, name: str, kind: str, cpu: CpuVariant, cuda: CudaBuild | None) -> None:
        self.ext, self.name, self.kind, self.cpu, self.cuda = ext, name, kind, cpu, cuda
        self.output = ""
        self.seconds = 0.0


class build_ext(_build_ext):
    """``build_ext`` that builds :class:`FatExtension` variants (and plain extensions as usual)."""

    user_options = _build_ext.user_options + [
        ("fat-jobs=", None, "parallel variant builds (default: all cores; env FATDISPATCH_BUILD_JOBS)"),
    ]

    def initialize_options(self) -> None:
        super().initialize_options()
        self.fat_jobs: int | str | None = None
        self._fat_outputs: list[str] = []
        self._fat_done: list[FatExtension] = []
        self._fat_pending: list[FatExtension] = []
        self._deferring = False
        self._isa_said = False

    extensions: list[Any]

    def _fat(self) -> list[FatExtension]:
        return [e for e in self.extensions if isinstance(e, FatExtension)]

    @contextlib.contextmanager
    def _plain_only(self) -> Iterator[list[Any]]:
        """setuptools' own code sees only the plain extensions while inside."""
        saved = self.extensions
        self.extensions = [e for e in saved if not isinstance(e, FatExtension)]
        try:
            yield self.extensions
        finally:
            self.extensions = saved

    def build_extensions(self) -> None:
        """setuptools' loop (or the project's own ``build_extensions`` above ours) sees every extension, so a
        project's per-extension tweaks reach FatExtensions too; :meth:`build_extension` collects the fat ones,
        which are then built together, all variants in parallel."""
        self._deferring = True
        try:
            super().build_extensions()
        finally:
            self._deferring = False
        self._build_pending()
        rest = [e for e in self._fat() if e not in self._fat_done]  # a project loop that skipped them
        if rest:
            self.check_extensions_list(rest)
            self._build_fat(rest)

    def build_extension(self, ext: Any) -> None:
        """Called per extension by setuptools' ``build_extensions``: a FatExtension is never built plain, even
        when a subclass calls setuptools' base class directly instead of ours."""
        if isinstance(ext, FatExtension):
            if ext not in self._fat_done and ext not in self._fat_pending:
                self._fat_pending.append(ext)
            if not self._deferring:
                print(f"fatdispatch: {ext.name}: reached through setuptools' build_extensions, not "
                      "fatdispatch's (a build_ext subclass calls setuptools' base class directly); building every "
                      "variant anyway", flush=True)
                self._build_pending()
            return
        super().build_extension(ext)

    def _build_pending(self) -> None:
        pending, self._fat_pending = self._fat_pending, []
        if pending:
            self._build_fat(pending)

    def run(self) -> None:
        super().run()
        self._build_pending()
        self._check_fat()

    def _check_fat(self) -> None:
        """A build is fat or it fails: every FatExtension must have its builds and manifest by now."""
        missing = [e.name for e in self._fat() if e not in self._fat_done]
        if missing:
            raise BuildError(
                f"{', '.join(missing)}: build_ext finished without the fat builds and manifest of these "
                f"FatExtensions (the command {type(self).__module__}.{type(self).__qualname__} skipped fatdispatch's "
                "build_ext, so a wheel would fail to import on every machine). Derive your build_ext from "
                "fatdispatch.build.build_ext (class build_ext(fatdispatch.build.build_ext): ...) and call "
                "super().build_extensions() / super().build_extension(ext) instead of setuptools' base class; "
                "see README.md, 'Combining with an existing build_ext'")

    # -- planning and running

    def _jobs(self) -> int:
        raw = self.fat_jobs or os.environ.get("FATDISPATCH_BUILD_JOBS") or 0
        try:
            n = int(raw)
        except ValueError:
            raise BuildError(f"FATDISPATCH_BUILD_JOBS/--fat-jobs={raw!r} is not a number") from None
        return n if n > 0 else (os.cpu_count() or 1)

    def _build_fat(self, exts: list[FatExtension]) -> None:
        jobs: list[_Job] = []
        nvcc = None
        runtime = (0, 0)
        for ext in exts:
            for v in ext.variants:
                jobs.append(_Job(ext, v.name, "cpu", v, None))
            if ext.cuda_builds and os.environ.get("FATDISPATCH_SKIP_CUDA") == "1":
                self.warn(f"{ext.name}: FATDISPATCH_SKIP_CUDA=1: building without its CUDA builds")
            elif ext.cuda_builds:
                nvcc = nvcc or nvcc_path()
                if nvcc is None:
                    msg = (f"{ext.name}: nvcc not found (PATH, CUDA_HOME, /usr/local/cuda); install the CUDA "
                           "toolkit or declare cuda='optional'")
                    if ext.cuda_mode == "required":
                        raise BuildError(msg + " (or set FATDISPATCH_SKIP_CUDA=1)")
                    self.warn(msg + ": building without CUDA builds")
                    continue
                runtime = nvcc_version(nvcc)
                host = host_variant(ext.variants)
                for cb in ext.cuda_builds:
                    jobs.append(_Job(ext, cb.name, "cuda", host, cb))
        for ext in exts:
            self._clean_variants_dir(ext)
        workers = min(self._jobs(), len(jobs)) or 1
        started = time.perf_counter()
        with self._isa_clean_compiler(), ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(self._run_job, job, nvcc, runtime) for job in jobs]
            for f in futures:
                f.result()
        wall = time.perf_counter() - started
        for ext in exts:
            mine = [j for j in jobs if j.ext is ext]
            self._write_manifest(ext, mine, runtime)
            self._print_sizes(ext, mine, wall, workers)
            self._audit(ext)
            self._fat_done.append(ext)

    def _clean_variants_dir(self, ext: FatExtension) -> None:
        """No stale builds: the variants folder is rebuilt from nothing, so it holds exactly what the manifest
        lists (a rebuild with fewer builds, e.g. FATDISPATCH_SKIP_CUDA=1, leaves no old folders behind)."""
        folder = self._variants_dir(ext)
        if os.path.isdir(folder):
            old = sorted(os.listdir(folder))
            shutil.rmtree(folder)
            if old:
                print(f"fatdispatch: {ext.name}: removed the previous build's {folder} ({', '.join(old)})", flush=True)

    @contextlib.contextmanager
    def _isa_clean_compiler(self) -> Iterator[None]:
        """The compiler and linker commands without ISA flags (-m<isa>, -march, -mcpu, -mtune) while the
        variants build: CFLAGS/CXXFLAGS/CPPFLAGS/LDFLAGS and Python's own flags end up in these commands, and
        each build's ISA must be its variant's flags alone.  Other flags pass through."""
        saved: dict[str, list[str]] = {}
        removed: list[str] = []
        for attr in _COMPILER_COMMANDS:
            cmd = getattr(self.compiler, attr, None)
            if isinstance(cmd, list):
                kept, gone = split_isa_flags(cmd)
                if gone:
                    saved[attr] = cmd
                    setattr(self.compiler, attr, kept)
                    removed += [g for g in gone if g not in removed]
        if removed and not self._isa_said:
            self._isa_said = True
            print(f"fatdispatch: ignoring the ISA flags {' '.join(removed)} of the compiler/linker command "
                  "(from CFLAGS, CXXFLAGS, CPPFLAGS, LDFLAGS or Python's build flags): each build's instruction "
                  "set is its variant's flags; other flags pass through", flush=True)
        try:
            yield
        finally:
            for attr, cmd in saved.items():
                setattr(self.compiler, attr, cmd)

    def _ext_args(self, ext: FatExtension, args: Sequence[str] | None, what: str) -> list[str]:
        kept, gone = split_isa_flags(list(args or []))
        if gone:
            self.warn(f"{ext.name}: {what} {' '.join(gone)} ignored: they would change the instruction set of "
                      "every build; choose variants instead (or guard the code and declare audit_guarded)")
        return kept

    def _audit(self, ext: FatExtension) -> None:
        """The machine-code audit of the builds just made; fails the build unless told to warn."""
        mode = audit_mode(ext, os.environ)
        if mode == "off":
            print(f"fatdispatch: {ext.name}: machine-code audit off (audit='off' / FATDISPATCH_AUDIT=off)",
                  flush=True)
            return
        try:
            outcome = _audit.run_audit([self._variants_dir(ext)])
        except _audit.AuditError as exc:
            msg = f"{ext.name}: the machine-code audit could not run: {exc}"
            if mode == "warn":
                self.warn(msg)
                return
            raise BuildError(msg + "; or set FATDISPATCH_AUDIT=warn to build without it") from None
        print("fatdispatch: audit of " + outcome.text.replace("\n", "\nfatdispatch: "), flush=True)
        if outcome.ok:
            return
        msg = (f"{ext.name}: the machine-code audit found instructions its builds' manifests do not require "
               "(above). Find where they come from (flags, a static library, inline assembly, a constructor); "
               "if a symbol checks the CPU itself before using them, declare it in audit_guarded / audit-guarded. "
               "FATDISPATCH_AUDIT=warn (or audit='warn') turns this into a warning")
        if mode == "warn":
            self.warn(msg)
            return
        raise BuildError(msg)

    def _variants_dir(self, ext: FatExtension) -> str:
        return os.path.join(self.build_lib, *ext.package.split("."), ext.modname + VARIANTS_SUFFIX)

    def _run_job(self, job: _Job, nvcc: str | None, runtime: tuple[int, int]) -> None:
        ext = job.ext
        started = time.perf_counter()
        suffix = ext_suffix(ext.arch)
        out_dir = os.path.join(self._variants_dir(ext), job.name)
        os.makedirs(out_dir, exist_ok=True)
        job.output = os.path.join(out_dir, ext.modname + suffix)
        tmp = os.path.join(self.build_temp, "fatdispatch", ext.name, job.name)  # one object folder per build
        ctype = self.compiler.compiler_type
        family = "msvc" if ctype == "msvc" else "gcc"
        flags = list(job.cpu.flags.get(family, ()))
        if not ext.fp_contract:
            flags += FP_CONTRACT_OFF[family]
        macros = list(ext.define_macros) + [("FATDISPATCH_VARIANT", f'"{job.name}"')]
        if job.kind == "cuda":
            macros.append(("FATDISPATCH_CUDA", "1"))
        objects = self.compiler.compile(ext.sources, output_dir=tmp, macros=macros, include_dirs=ext.include_dirs,
                                        debug=self.debug,
                                        extra_postargs=self._ext_args(ext, ext.extra_compile_args,
                                                                      "extra_compile_args") + flags,
                                        depends=ext.depends)
        objects += list(ext.extra_objects or [])
        if job.kind == "cuda":
            assert job.cuda is not None and nvcc is not None
            if ctype == "msvc":
                raise BuildError("CUDA builds with MSVC are not supported yet")
            objects += self._nvcc_compile(job, nvcc, runtime, tmp, macros)
            libs = self.get_libraries(ext)
            cmd = [nvcc, "-shared", "--no-device-link", "-o", job.output, *objects, "--cudart=static",
                   *[f"-L{d}" for d in ext.library_dirs], *[f"-l{lib}" for lib in libs],
                   *[f"-Xlinker={a}" for a in self._ext_args(ext, ext.extra_link_args, "extra_link_args")]]
            _run(cmd)
        else:
            self.compiler.link_shared_object(
                objects, job.output, libraries=self.get_libraries(ext), library_dirs=ext.library_dirs,
                runtime_library_dirs=ext.runtime_library_dirs,
                extra_postargs=self._ext_args(ext, ext.extra_link_args, "extra_link_args"),
                export_symbols=self.get_export_symbols(ext), debug=self.debug, build_temp=tmp,
                target_lang=self.compiler.detect_language(ext.sources))
        job.seconds = time.perf_counter() - started

    def _nvcc_compile(self, job: _Job, nvcc: str, runtime: tuple[int, int], tmp: str,
                      macros: list[tuple[str, str | None]]) -> list[str]:
        assert job.cuda is not None
        tk = check_cuda_build(job.cuda, runtime)
        gencode = [f"-gencode=arch=compute_{t},code=sm_{t}" for t in job.cuda.sass]
        gencode += [f"-gencode=arch=compute_{t},code=compute_{t}" for t in job.cuda.ptx]
        defines = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in macros]
        objects = []
        for src in job.ext.cuda_sources:
            obj = os.path.join(tmp, "cuda", os.path.splitdrive(src)[1].lstrip("/\\") + ".o")
            os.makedirs(os.path.dirname(obj), exist_ok=True)
            cmd = [nvcc, "-c", src, "-o", obj, "-Xcompiler", "-fPIC", *gencode, *cuda_flags(), *tk["compress"],
                   *defines, *[f"-I{d}" for d in job.ext.include_dirs], *job.ext.nvcc_flags]
            _run(cmd)
            objects.append(obj)
        return objects

    # -- manifest and report

    def _write_manifest(self, ext: FatExtension, jobs: list[_Job], runtime: tuple[int, int]) -> None:
        from ._layout import Build, build_manifest, write_manifest  # the one manifest writer of every backend

        manifest = build_manifest(ext.name, [Build(j.name, j.kind, j.cpu, j.cuda) for j in jobs], runtime,
                                  ext.priorities)
        self._fat_outputs.append(write_manifest(self._variants_dir(ext), manifest))
        self._fat_outputs.extend(j.output for j in jobs)
        if ext.audit_guarded:
            side = os.path.join(self._variants_dir(ext), _audit.AUDIT_NAME)
            with open(side, "w", encoding="utf-8") as f:
                f.write(_audit.declarations_file(ext.audit_guarded))
            self._fat_outputs.append(side)

    def _print_sizes(self, ext: FatExtension, jobs: list[_Job], wall: float, workers: int) -> None:
        total = 0
        lines = [f"fatdispatch: {ext.name}: {len(jobs)} builds in {wall:.1f} s with {workers} parallel jobs"]
        for job in jobs:
            size = os.path.getsize(job.output)
            total += size
            lines.append(f"fatdispatch:   {job.name:<18} {size / 1024:10.1f} KiB  {job.seconds:6.1f} s")
        lines.append(f"fatdispatch:   {'total':<18} {total / 1024:10.1f} KiB")
        print("\n".join(lines), flush=True)
        if total > PYPI_LIMIT:
            self.warn(f"{ext.name}: the builds add up to {total / 2**20:.1f} MiB, over PyPI's 100 MiB file limit; "
                      "drop CUDA targets, use PTX, or split the wheel (python -m fatdispatch split)")

    # -- outputs, editable installs

    def get_outputs(self) -> list[str]:
        plain = [e for e in self.extensions if not isinstance(e, FatExtension)]
        outs = [self.get_ext_fullpath(e.name) for e in plain]
        for ext in self._fat():
            folder = self._variants_dir(ext)
            if os.path.isdir(folder):
                for root, _, files in os.walk(folder):
                    outs.extend(os.path.join(root, f) for f in files)
        return outs

    def get_output_mapping(self) -> dict[str, str]:
        build_py = self.get_finalized_command("build_py")
        mapping = {}
        for ext in self._fat():
            src_root = build_py.get_package_dir(ext.package)
            folder = self._variants_dir(ext)
            for root, _, files in os.walk(folder):
                for f in files:
                    full = os.path.join(root, f)
                    rel = os.path.relpath(full, folder)
                    mapping[os.path.join(src_root, ext.modname + VARIANTS_SUFFIX, rel)] = full
        with self._plain_only():
            mapping.update(super().get_output_mapping())
        return mapping

    def copy_extensions_to_source(self) -> None:
        build_py = self.get_finalized_command("build_py")
        for ext in self._fat():
            dest = os.path.join(build_py.get_package_dir(ext.package), ext.modname + VARIANTS_SUFFIX)
            if os.path.isdir(dest):
                shutil.rmtree(dest)
            shutil.copytree(self._variants_dir(ext), dest)
        with self._plain_only():
            super().copy_extensions_to_source()


def _run(cmd: list[str]) -> None:
    print("fatdispatch: " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


# ---------------------------------------------------------------- wiring import mypkg


def wiring_line(modules: Iterable[str]) -> str:
    """The line that registers a package's fat modules (the wiring contract, frozen into every wheel built with
    it): one call of the top-level import path ``_fatdispatch``, which imports no package when the pick cache
    answers.  A missing fatdispatch is then a plain ``ModuleNotFoundError: No module named '_fatdispatch'``."""
    mods = ", ".join(f'"{m}"' for m in sorted(set(modules)))
    return f'__import__("_fatdispatch").install(__name__, [{mods}])  {WIRING_MARKER}\n'


def wire_init(source: str, modules: Iterable[str]) -> str:
    """``source`` with the install line added after the docstring and ``__future__`` imports, if missing."""
    if "fatdispatch" in source and "install(" in source:
        return source
    tree = ast.parse(source)
    line = 0
    for node in tree.body:
        is_doc = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        is_future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        if is_doc or is_future:
            line = node.end_lineno or line
            continue
        break
    lines = source.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    lines.insert(line, wiring_line(modules))
    return "".join(lines)


class build_py(_build_py):
    """``build_py`` that wires each fat module's package to the dispatcher in the build tree."""

    def run(self) -> None:
        super().run()
        by_package: dict[str, list[str]] = {}
        for ext in self.distribution.ext_modules or []:
            if isinstance(ext, FatExtension):
                by_package.setdefault(ext.package, []).append(ext.modname)
        for package, mods in by_package.items():
            init = os.path.join(self.build_lib, *package.split("."), "__init__.py")
            if not os.path.isfile(init):
                src = os.path.join(self.get_package_dir(package), "__init__.py")
                with open(src, encoding="utf-8") as f:
                    if "fatdispatch" not in f.read():
                        self.warn(f"{src} does not call fatdispatch.install; in this (editable) install add:\n    "
                                  + wiring_line(mods))
                continue
            with open(init, encoding="utf-8") as f:
                text = f.read()
            wired = wire_init(text, mods)
            if wired != text:
                with open(init, "w", encoding="utf-8") as f:
                    f.write(wired)
                print(f"fatdispatch: wired {package} to its fat modules {mods} in {init}", flush=True)
        self._check_dependency()

    def _check_dependency(self) -> None:
        reqs = [str(r).lower() for r in (self.distribution.install_requires or [])]
        if not any(r.startswith("fatdispatch") for r in reqs):
            self.warn("this package has fat modules but does not depend on fatdispatch: add 'fatdispatch' to "
                      "[project] dependencies, or imports fail where it is not installed")


def cmdclass() -> dict[str, type]:
    """The commands to pass as ``setup(cmdclass=...)``."""
    return {"build_ext": build_ext, "build_py": build_py}


# ---------------------------------------------------------------- pyproject.toml plugin

_KEYS = {"name", "sources", "variants", "cuda-sources", "cuda-targets", "priorities", "nvcc-flags", "cuda",
         "include-dirs", "define-macros", "libraries", "library-dirs", "extra-compile-args", "extra-link-args",
         "depends", "language", "fp-contract", "audit", "audit-guarded"}


def extensions_from_pyproject(data: Mapping[str, Any]) -> list[FatExtension]:
    """``[[tool.fatdispatch.extension]]`` tables -> :class:`FatExtension` objects."""
    tool = data.get("tool", {}).get("fatdispatch", {})
    unknown = set(tool) - {"extension"}
    if unknown:
        raise BuildError(f"pyproject.toml [tool.fatdispatch]: unknown keys {sorted(unknown)} (expected 'extension')")
    out = []
    for i, table in enumerate(tool.get("extension", [])):
        bad = set(table) - _KEYS
        if bad:
            import difflib

            hints = [f"{b} (did you mean {difflib.get_close_matches(b, _KEYS, 1)[0]}?)"
                     if difflib.get_close_matches(b, _KEYS, 1) else b for b in sorted(bad)]
            raise BuildError(f"pyproject.toml [[tool.fatdispatch.extension]] #{i}: unknown keys {', '.join(hints)}")
        kw = {k.replace("-", "_"): v for k, v in table.items() if k not in ("name", "sources")}
        if "define_macros" in kw:
            kw["define_macros"] = [tuple(m) if isinstance(m, list) else (m, None) for m in kw["define_macros"]]
        out.append(FatExtension(table["name"], list(table["sources"]), **kw))
    return out


def finalize_distribution_options(dist: Any) -> None:
    """setuptools plugin: add the extensions declared in ``pyproject.toml``; make sure every FatExtension meets
    fatdispatch's commands, whichever ``build_ext``/``build_py`` the project (or versioneer, ...) supplies."""
    path = os.path.join(os.getcwd(), "pyproject.toml")
    if os.path.isfile(path):
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        with open(path, "rb") as f:
            data = tomllib.load(f)
        if "fatdispatch" in data.get("tool", {}):
            dist.ext_modules = list(dist.ext_modules or []) + extensions_from_pyproject(data)
    if any(isinstance(e, FatExtension) for e in dist.ext_modules or []):
        for name, cls in cmdclass().items():
            dist.cmdclass[name] = fat_command(name, dist.cmdclass.get(name), cls)


def fat_command(name: str, given: type | None, ours: type) -> type:
    """The command class to use for ``name``: ``ours`` if nothing is given or ``given`` already derives from it;
    else ``given`` with ours put in front (``class X(ours, given)``), so a project's own ``build_ext`` (or
    versioneer's ``build_py``) keeps its behaviour for everything else and still builds and wires fat modules."""
    if given is None or issubclass(given, ours):
        return given or ours
    try:
        return type(given.__name__, (ours, given), {"__module__": given.__module__, "__doc__": given.__doc__})
    except TypeError as exc:
        raise BuildError(f"cmdclass[{name!r}] = {given.__module__}.{given.__qualname__} cannot be combined with "
                         f"fatdispatch.build.{ours.__name__} ({exc}); derive it from fatdispatch.build."
                         f"{ours.__name__} (see README.md, 'Combining with an existing build_ext')") from None


finalize_distribution_options.order = 100  # type: ignore[attr-defined]  # after setuptools' own pyproject step
