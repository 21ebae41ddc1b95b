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
from .._runtime import normalize_arch
from .._runtime import MANIFEST_NAME, SCHEMA_VERSION, VARIANTS_SUFFIX, parse_manifest
from ._catalog import (BuildError, CpuVariant, CudaBuild, check_cuda_build, cpu_catalog, cpu_variant, cuda_flags,
                       nvcc_path, nvcc_version, parse_cuda_spec)

PYPI_LIMIT = 100 * 1024 * 1024
WIRING_MARKER = "# added by fatdispatch.build"


def build_arch() -> str:
    """The architecture being built for (``_PYTHON_HOST_PLATFORM`` for cross builds, else this machine)."""
    host = os.environ.get("_PYTHON_HOST_PLATFORM") or sysconfig.get_platform()
    for arch in ("x86_64", "aarch64", "arm64", "amd64"):
        if host.lower().endswith(arch):
            return normalize_arch(arch)
    return normalize_arch(platform.machine())


class FatExtension(Extension):
    """An extension built once per variant and dispatched at import.

    ``variants``: CPU catalog names (default: every variant of the build
    architecture).  ``cuda_sources``: ``.cu`` files compiled by nvcc into the
    CUDA builds only; ``cuda_targets``: one CUDA build per entry, an entry being
    ``sm_XY``/``compute_XY`` or several joined with ``+`` (``"sm_80+sm_86"``),
    optionally named (``"ampere=sm_80+sm_86"``).  The C sources of a CUDA build
    are compiled with ``-DFATDISPATCH_CUDA=1``; every build gets
    ``-DFATDISPATCH_VARIANT="<name>"``.  ``priorities`` maps build names to the
    packager's priority (higher wins among usable builds of one kind; default
    0).  ``cuda="required"`` fails the build where nvcc is missing;
    ``cuda="optional"`` then skips the CUDA builds with a warning.
    """

    def __init__(self, name: str, sources: list[str], *, variants: Sequence[str] | None = None,
                 cuda_sources: Sequence[str] = (), cuda_targets: Sequence[str] = (),
                 priorities: Mapping[str, int] | None = None, nvcc_flags: Sequence[str] = (),
                 cuda: str = "required", **kwargs: Any) -> None:
        super().__init__(name, sources, **kwargs)
        self.arch = build_arch()
        catalog = cpu_catalog(self.arch)
        self.variants = [cpu_variant(v, self.arch) for v in (variants if variants is not None else list(catalog))]
        self.cuda_sources = list(cuda_sources)
        self.cuda_builds = [parse_cuda_spec(t) for t in cuda_targets]
        if self.cuda_builds and not self.cuda_sources:
            raise BuildError(f"{name}: cuda_targets given but no cuda_sources")
        if cuda not in ("required", "optional"):
            raise BuildError(f"{name}: cuda={cuda!r}; expected 'required' or 'optional'")
        self.cuda_mode = cuda
        self.nvcc_flags = list(nvcc_flags)
        self.priorities = dict(priorities or {})
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
        fat = self._fat()
        with self._plain_only() as plain:
            if plain:
                super().build_extensions()
        if fat:
            self.check_extensions_list(fat)
            self._build_fat(fat)

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
                host = _host_variant(ext)
                for cb in ext.cuda_builds:
                    jobs.append(_Job(ext, cb.name, "cuda", host, cb))
        workers = min(self._jobs(), len(jobs)) or 1
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(self._run_job, job, nvcc, runtime) for job in jobs]
            for f in futures:
                f.result()
        wall = time.perf_counter() - started
        for ext in exts:
            mine = [j for j in jobs if j.ext is ext]
            self._write_manifest(ext, mine, runtime)
            self._print_sizes(ext, mine, wall, workers)

    def _variants_dir(self, ext: FatExtension) -> str:
        return os.path.join(self.build_lib, *ext.package.split("."), ext.modname + VARIANTS_SUFFIX)

    def _run_job(self, job: _Job, nvcc: str | None, runtime: tuple[int, int]) -> None:
        ext = job.ext
        started = time.perf_counter()
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        out_dir = os.path.join(self._variants_dir(ext), job.name)
        os.makedirs(out_dir, exist_ok=True)
        job.output = os.path.join(out_dir, ext.modname + suffix)
        tmp = os.path.join(self.build_temp, "fatdispatch", ext.name, job.name)  # one object folder per build
        ctype = self.compiler.compiler_type
        flags = list(job.cpu.flags.get("msvc" if ctype == "msvc" else "gcc", ()))
        macros = list(ext.define_macros) + [("FATDISPATCH_VARIANT", f'"{job.name}"')]
        if job.kind == "cuda":
            macros.append(("FATDISPATCH_CUDA", "1"))
        objects = self.compiler.compile(ext.sources, output_dir=tmp, macros=macros, include_dirs=ext.include_dirs,
                                        debug=self.debug, extra_postargs=list(ext.extra_compile_args or []) + flags,
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
                   *[f"-Xlinker={a}" for a in (ext.extra_link_args or [])]]
            _run(cmd)
        else:
            self.compiler.link_shared_object(
                objects, job.output, libraries=self.get_libraries(ext), library_dirs=ext.library_dirs,
                runtime_library_dirs=ext.runtime_library_dirs, extra_postargs=ext.extra_link_args,
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


def _host_variant(ext: FatExtension) -> CpuVariant:
    """The CPU variant the host code of CUDA builds is compiled for: the lowest one built."""
    return min(ext.variants, key=lambda v: (v.x86_64_level or 0, len(v.features)))


def _run(cmd: list[str]) -> None:
    print("fatdispatch: " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


# ---------------------------------------------------------------- wiring import mypkg


def wiring_line(modules: Iterable[str]) -> str:
    """The lines that register a package's fat modules: through the compiled helper alone where it is there (no
    import of the fatdispatch package when the pick cache answers), else through fatdispatch."""
    mods = ", ".join(repr(m) for m in sorted(set(modules)))
    return (f"try:  {WIRING_MARKER}\n"
            f"    __import__('_fatdispatch').install(__name__, [{mods}])\n"
            f"except (ImportError, AttributeError):  # fatdispatch without its compiled helper\n"
            f"    __import__('fatdispatch').install(__name__, [{mods}])\n")


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
         "depends", "language"}


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
    """setuptools plugin: add the extensions declared in ``pyproject.toml`` and our commands."""
    path = os.path.join(os.getcwd(), "pyproject.toml")
    if not os.path.isfile(path):
        return
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    with open(path, "rb") as f:
        data = tomllib.load(f)
    if "fatdispatch" not in data.get("tool", {}):
        return
    exts = extensions_from_pyproject(data)
    dist.ext_modules = list(dist.ext_modules or []) + exts
    for name, cls in cmdclass().items():
        dist.cmdclass[name] = _compose(name, cls, dist.cmdclass.get(name))


def _compose(name: str, ours: type, theirs: type | None) -> type:
    """Our command, or one deriving from ours and from another plugin's (scikit-build-core's setuptools plugin
    installs its own build_ext in every project; keeping it alone built FatExtensions as plain extensions)."""
    if theirs is None:
        return ours
    if issubclass(theirs, ours) or not issubclass(theirs, ours.__mro__[1]):
        return theirs  # already ours, or not a setuptools command at all: left as it was
    return type(name, (ours, theirs), {"__doc__": ours.__doc__})


finalize_distribution_options.order = 100  # type: ignore[attr-defined]  # after setuptools' own pyproject step
