"""The machine-code audit: every CPU build holds only instructions its manifest says the machine must have.

``python -m fatdispatch audit WHEEL|DIR`` (and the end of ``build_ext``, and ``test-variants``) decodes the
executable sections of every build of every fat module and reports each instruction that needs a CPU feature
the build's manifest does not require: its address, symbol and section.  Code that runs when the file is loaded
(``.init_array``/``.preinit_array`` targets, ``.init``, and every function they call directly) is reported apart:
it runs inside ``dlopen``, before any dispatch could help, so one such instruction kills the import.

A build that dispatches inside itself declares what it guards, per symbol, in ``<mod>.variants/audit.json``
(written by ``build_ext`` from ``FatExtension(audit_guarded=...)`` / ``audit-guarded`` in the pyproject table)::

    {"schema": 1, "guarded": {"my_kernel_avx2": ["avx2", "fma"], "hot_loop.avx512*": ["avx512f"]}}

Keys are symbol names or ``fnmatch`` patterns; an instruction passes only when its symbol matches a key that
lists every feature it needs.  Nothing else passes.

Layers: :func:`decode_x86` / :func:`decode_aarch64` turn bytes into instructions with the features each needs
(iced-x86's CPUID tables; for aarch64 a mnemonic/operand classifier over capstone); :func:`audit_image` judges a
decoded :class:`Image` against a set of required features (pure); :func:`read_image` reads an ELF file with
pyelftools; :func:`audit_folder` / :func:`audit_wheel` / :func:`audit_path` do the I/O around them.
"""

from __future__ import annotations

import bisect
import fnmatch
import io
import json
import os
import re
import struct
import time
import zipfile
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Mapping, Sequence

from .._tables import feature_table
from .._errors import FatDispatchError
from .._manifest import MANIFEST_NAME, VARIANTS_SUFFIX, parse_manifest
from .._records import Manifest

AUDIT_NAME = "audit.json"  # the per-module side file holding the packager's guarded declarations
AUDIT_SCHEMA = 1
DEPENDENCIES = "pip install iced-x86 pyelftools capstone (or fatdispatch[audit])"


class AuditError(FatDispatchError):
    """The audit cannot run (missing tool, unreadable file, bad declaration)."""


class NotAudited(AuditError):
    """A build in a format or for an architecture the audit does not decode (Mach-O, PE, 32-bit, ...)."""


# ---------------------------------------------------------------- value types


@dataclass(frozen=True)
class Insn:
    """One decoded instruction: where it is, its text, the features it needs, a direct branch target."""

    address: int
    size: int
    text: str
    features: tuple[str, ...]
    target: int | None = None  # direct call/jump target
    is_call: bool = False


@dataclass(frozen=True)
class Section:
    name: str
    address: int
    data: bytes


@dataclass(frozen=True)
class Image:
    """What the audit needs from one ELF file."""

    arch: str  # "x86_64" or "aarch64"
    sections: tuple[Section, ...]  # executable sections
    symbols: tuple[tuple[int, int, str], ...]  # (address, size, name), functions and labels in code
    load_roots: tuple[tuple[int, str], ...]  # (address, why) of code run at load


@dataclass(frozen=True)
class Finding:
    address: int
    section: str
    symbol: str  # "name+0x12", or "?" where no symbol covers it
    function: str  # the bare symbol name ("" where none)
    text: str
    missing: tuple[str, ...]
    load_time: str = ""  # "" or how load reaches it (".init_array -> ctor -> helper")
    guarded: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"address": f"{self.address:#x}", "section": self.section, "symbol": self.symbol,
                "instruction": self.text, "missing": list(self.missing), "load_time": self.load_time or None,
                "guarded": self.guarded}


@dataclass(frozen=True)
class BuildAudit:
    module: str
    build: str
    kind: str
    path: str
    required: frozenset[str]
    findings: tuple[Finding, ...]
    instructions: int
    seconds: float
    error: str = ""
    not_audited: str = ""  # why this build's code was not decoded (a format or architecture not covered)

    @property
    def bad(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if not f.guarded)

    @property
    def ok(self) -> bool:
        return not self.bad and not self.error


@dataclass(frozen=True)
class ModuleAudit:
    module: str
    folder: str
    builds: tuple[BuildAudit, ...]
    stale: tuple[str, ...] = ()  # entries of the variants folder the manifest does not list
    missing: tuple[str, ...] = ()  # builds the manifest lists whose file is absent

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.builds) and not self.stale and not self.missing


# ---------------------------------------------------------------- features: data from cpu_features.json


def required_features(features: Iterable[str], x86_64_level: int | None) -> frozenset[str]:
    """What a build may use: its manifest's features plus everything its x86-64 level implies."""
    req = set(features)
    if x86_64_level:
        levels = feature_table()["x86"]["levels"]
        for lvl in range(1, x86_64_level + 1):
            req.update(levels.get(str(lvl), ()))
    return frozenset(req)


# iced-x86 CpuidFeature names that every x86-64 CPU has (the architecture itself, hint-space NOPs) and the
# ones whose fatdispatch name is not simply the lower-case iced name.
X86_ALWAYS = frozenset({"INTEL8086", "INTEL186", "INTEL286", "INTEL386", "INTEL486", "X64", "CPUID", "TSC",
                        "MULTIBYTENOP", "PAUSE", "CLFSH", "CET_IBT"})
X86_RENAME = {"FPU287": "fpu", "FPU387": "fpu", "CMPXCHG16B": "cx16", "SHA": "sha_ni", "AVX512_IFMA": "avx512ifma",
              "AVX512_VBMI": "avx512vbmi", "HLE_OR_RTM": "rtm", "SKINIT_OR_SVM": "svm"}
AARCH64_ALWAYS = frozenset({"fp", "asimd"})


def x86_feature_name(iced_name: str) -> str | None:
    """fatdispatch's name of an iced-x86 CpuidFeature (None: every x86-64 CPU has it)."""
    if iced_name in X86_ALWAYS:
        return None
    return X86_RENAME.get(iced_name, iced_name.lower())


# ---------------------------------------------------------------- decoders (pure: bytes in, instructions out)


def _iced() -> Any:
    try:
        import iced_x86
    except ImportError:
        raise AuditError(f"the x86-64 audit needs iced-x86: {DEPENDENCIES}") from None
    return iced_x86


_ICED_NAMES: dict[int, str | None] = {}


def decode_x86(code: bytes, address: int) -> tuple[list[Insn], int]:
    """Linear decode of x86-64 ``code`` loaded at ``address``: the instructions that need a feature or branch
    directly somewhere, and how many instructions were decoded.  Undecodable bytes are skipped."""
    iced = _iced()
    if not _ICED_NAMES:
        for name in dir(iced.CpuidFeature):
            if name.isupper():
                _ICED_NAMES[getattr(iced.CpuidFeature, name)] = x86_feature_name(name)
    names = _ICED_NAMES
    invalid = iced.Code.INVALID
    lahf = {iced.Mnemonic.LAHF, iced.Mnemonic.SAHF}
    branch = {iced.FlowControl.CALL: True, iced.FlowControl.UNCONDITIONAL_BRANCH: False,
              iced.FlowControl.CONDITIONAL_BRANCH: False}
    by_code: dict[int, tuple[tuple[str, ...], bool | None]] = {}  # features and branch kind depend on Code alone
    out: list[Insn] = []
    count = 0
    decoder = iced.Decoder(64, code, ip=address)
    ins = iced.Instruction()
    while decoder.can_decode:
        decoder.decode_out(ins)
        c = ins.code
        known = by_code.get(c)
        if known is None:
            if c == invalid:
                known = ((), None)
            else:
                feats = tuple(sorted({n for n in (names.get(i, f"cpuid{i}") for i in ins.cpuid_features()) if n}))
                if ins.mnemonic in lahf:
                    feats = ("lahf_lm",)  # LAHF/SAHF in 64-bit mode need CPUID.80000001H:ECX.LAHF-SAHF
                known = (feats, branch.get(ins.flow_control))
            by_code[c] = known
        if c == invalid:
            continue
        count += 1
        feats, kind = known
        if feats or kind is not None:
            target = ins.near_branch_target if kind is not None else 0
            out.append(Insn(ins.ip, ins.len, str(ins) if feats else "", feats, target or None, bool(kind)))
    return out, count


_Z_OR_P = re.compile(r"\b[zp]\d{1,2}\b")
_H_VEC = re.compile(r"\.[48]h\b")
_H_REG = re.compile(r"\bh\d{1,2}\b")
_AARCH64_MNEMONIC = [  # (prefix or exact mnemonic, feature): ACLE/HWCAP names as in variants/aarch64.json
    (("crc32",), "crc32"),
    (("ldadd", "ldclr", "ldeor", "ldset", "ldsmax", "ldsmin", "ldumax", "ldumin", "swp", "cas"), "atomics"),
    (("sqrdmlah", "sqrdmlsh"), "asimdrdm"),
    (("usdot", "sudot", "smmla", "ummla", "usmmla"), "i8mm"),
    (("sdot", "udot"), "asimddp"),
    (("aes",), "aes"), (("pmull",), "pmull"), (("sha1",), "sha1"), (("sha256",), "sha2"),
    (("sha512", "eor3", "rax1", "xar", "bcax"), "sha3"), (("sm3", "sm4"), "sm4"),
    (("bfdot", "bfmmla", "bfmlal", "bfcvt"), "bf16"),
    (("ldapr",), "lrcpc"), (("fjcvtzs",), "jscvt"), (("fcmla", "fcadd"), "fcma"),
]


def aarch64_features(mnemonic: str, op_str: str) -> tuple[str, ...]:
    """The HWCAP features an AArch64 instruction needs beyond fp/asimd, from its mnemonic and operands."""
    m = mnemonic.lower()
    ops = op_str.lower()
    out = set()
    if _Z_OR_P.search(ops) or m in ("rdvl", "addvl", "addpl", "cntb", "cnth", "cntw", "cntd", "ptrue", "whilelo"):
        out.add("sve")
    for prefixes, feat in _AARCH64_MNEMONIC:
        if m.startswith(prefixes):
            out.add(feat)
            break
    if m == "dc" and ops.startswith("cvap"):
        out.add("dcpop")
    if m.startswith("f") and "sve" not in out:
        if _H_VEC.search(ops):
            out.add("asimdhp")
        elif _H_REG.search(ops) and m not in ("fmov", "fcvt"):
            out.add("fphp")
    return tuple(sorted(out))


def decode_aarch64(code: bytes, address: int) -> tuple[list[Insn], int]:
    """Decode AArch64 ``code`` with capstone; the features come from :func:`aarch64_features`."""
    try:
        import capstone
    except ImportError:
        raise AuditError(f"the aarch64 audit needs capstone: {DEPENDENCIES}") from None
    md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    pos = 0
    out: list[Insn] = []
    count = 0
    while pos < len(code):
        for addr, size, mnemonic, op_str in md.disasm_lite(code[pos:], address + pos):
            count += 1
            pos = addr - address + size
            feats = aarch64_features(mnemonic, op_str)
            target = None
            is_call = mnemonic == "bl"
            if mnemonic in ("bl", "b") and op_str.startswith("#"):
                target = int(op_str[1:], 16)
            if feats or target is not None:
                out.append(Insn(addr, size, f"{mnemonic} {op_str}" if feats else "", feats, target, is_call))
        pos += 4  # capstone stopped at a word it cannot decode (or at the end): skip it
    return out, count


def decoder_for(arch: str) -> Any:
    if arch == "x86_64":
        return decode_x86
    if arch == "aarch64":
        return decode_aarch64
    raise AuditError(f"no machine-code audit for {arch} (x86_64 and aarch64 are audited)")


# ---------------------------------------------------------------- judging a decoded image (pure)


def _matches(guarded: Mapping[str, Sequence[str]], function: str, missing: Iterable[str]) -> bool:
    need = set(missing)
    return any(fnmatch.fnmatchcase(function, pat) and need <= set(feats) for pat, feats in guarded.items())


def audit_image(image: Image, required: frozenset[str], guarded: Mapping[str, Sequence[str]] | None = None,
                decoded: Mapping[str, Sequence[Insn]] | None = None) -> tuple[list[Finding], int]:
    """Every instruction of ``image`` that needs a feature outside ``required``; and how many were decoded.

    ``decoded`` (section name -> instructions) replaces decoding, for tests and tools with their own decoder."""
    guarded = guarded or {}
    always = AARCH64_ALWAYS if image.arch == "aarch64" else frozenset()
    allowed = required | always
    syms = sorted(s for s in image.symbols if s[2])
    starts = [s[0] for s in syms]

    def symbol_at(addr: int) -> tuple[str, str]:
        i = bisect.bisect_right(starts, addr) - 1
        if i < 0:
            return "", "?"
        start, _, name = syms[i]
        return name, (f"{name}+{addr - start:#x}" if addr != start else name)

    per_section: dict[str, Sequence[Insn]] = {}
    count = 0
    for sec in image.sections:
        if decoded and sec.name in decoded:
            per_section[sec.name] = list(decoded[sec.name])
            count += len(per_section[sec.name])
        else:
            per_section[sec.name], n = decoder_for(image.arch)(sec.data, sec.address)
            count += n

    # load-time reachability over direct calls and jumps, function by function
    func_starts = sorted(set(starts) | {r[0] for r in image.load_roots} | {s.address for s in image.sections})

    def func_of(addr: int) -> int:
        i = bisect.bisect_right(func_starts, addr) - 1
        return func_starts[i] if i >= 0 else addr

    edges: dict[int, set[int]] = {}
    lo = min((s.address for s in image.sections), default=0)
    hi = max((s.address + len(s.data) for s in image.sections), default=0)
    for insns in per_section.values():
        for ins in insns:
            if ins.target is not None and lo <= ins.target < hi:
                edges.setdefault(func_of(ins.address), set()).add(func_of(ins.target))
    reached: dict[int, str] = {}
    for addr, why in image.load_roots:
        f = func_of(addr)
        if f in reached:
            continue
        reached[f] = f"{why} -> {symbol_at(addr)[1]}"
        todo = [f]
        while todo:
            cur = todo.pop()
            for nxt in sorted(edges.get(cur, ())):
                if nxt not in reached:
                    reached[nxt] = f"{reached[cur]} -> {symbol_at(nxt)[1]}"
                    todo.append(nxt)

    findings: list[Finding] = []
    for sec_name, insns in per_section.items():
        for ins in insns:
            missing = tuple(f for f in ins.features if f not in allowed)
            if not missing:
                continue
            function, symbol = symbol_at(ins.address)
            findings.append(Finding(ins.address, sec_name, symbol, function, ins.text, missing,
                                    reached.get(func_of(ins.address), ""),
                                    bool(function) and _matches(guarded, function, missing)))
    findings.sort(key=lambda f: (not f.load_time, f.address))
    return findings, count


# ---------------------------------------------------------------- reading ELF files (pyelftools)


def _elftools() -> Any:
    try:
        import elftools.elf.elffile as elffile
    except ImportError:
        raise AuditError(f"the audit reads ELF files with pyelftools: {DEPENDENCIES}") from None
    return elffile


_RELATIVE = {"EM_X86_64": (8, 1), "EM_AARCH64": (1027, 257)}  # (R_*_RELATIVE, R_*_64/ABS64)


def read_image(stream: IO[bytes], where: str) -> Image:
    """The executable sections, code symbols and load-time entry points of an ELF shared object."""
    elffile = _elftools()
    try:
        elf = elffile.ELFFile(stream)
    except Exception as exc:  # pyelftools raises its own ELFError and struct errors
        stream.seek(0)
        magic = stream.read(4)
        kinds = {b"\xcf\xfa\xed\xfe": "Mach-O", b"\xca\xfe\xba\xbe": "Mach-O universal", b"MZ": "PE (Windows)"}
        kind = kinds.get(magic) or kinds.get(magic[:2])
        if kind:
            raise NotAudited(f"{kind} file: only ELF (Linux) builds are decoded") from None
        raise AuditError(f"{where}: not an ELF file ({exc})") from None
    machine = elf["e_machine"]
    arch = {"EM_X86_64": "x86_64", "EM_AARCH64": "aarch64"}.get(machine)
    if arch is not None and (elf.elfclass != 64 or not elf.little_endian):
        raise NotAudited(f"{where}: a {elf.elfclass}-bit {'little' if elf.little_endian else 'big'}-endian "
                         f"{machine} file; only 64-bit little-endian x86_64 and aarch64 are audited")
    if arch is None:
        raise NotAudited(f"{machine} code is not decoded (x86_64 and aarch64 are)")
    sections = []
    for sec in elf.iter_sections():
        if sec["sh_flags"] & 0x4 and sec["sh_type"] == "SHT_PROGBITS" and sec["sh_size"]:  # SHF_EXECINSTR
            sections.append(Section(sec.name, sec["sh_addr"], sec.data()))
    symbols: dict[int, tuple[int, int, str]] = {}
    for tab_name in (".dynsym", ".symtab"):  # .symtab last: its local names win
        tab = elf.get_section_by_name(tab_name)
        if tab is None or tab["sh_type"] == "SHT_NOBITS":
            continue
        strtab = elf.get_section(tab["sh_link"]).data()
        # Elf64_Sym entries read straight from the bytes (pyelftools' per-symbol parsing: ~1 s for 4000 symbols)
        for st_name, st_info, _, _, st_value, st_size in struct.iter_unpack(
                "<IBBHQQ", tab.data()[: tab["sh_size"] // 24 * 24]):
            if st_info & 0xF not in (0, 2, 10) or not st_value:  # STT_NOTYPE, STT_FUNC, STT_GNU_IFUNC
                continue
            name = strtab[st_name: strtab.find(b"\0", st_name)].decode("utf-8", "replace")
            if name and not name.startswith("$"):
                symbols[st_value] = (st_value, st_size, name)
    roots: list[tuple[int, str]] = []
    init = elf.get_section_by_name(".init")
    if init is not None:
        roots.append((init["sh_addr"], ".init"))
    relocs: dict[int, int] = {}
    relative, absolute = _RELATIVE[machine]
    dynsym = elf.get_section_by_name(".dynsym")
    slots: set[int] = set()
    for name in (".preinit_array", ".init_array"):
        sec = elf.get_section_by_name(name)
        if sec is not None:
            slots.update(range(sec["sh_addr"], sec["sh_addr"] + sec["sh_size"], 8))
    for sec in elf.iter_sections():
        if sec["sh_type"] != "SHT_RELA" or not slots:
            continue
        # read Elf64_Rela entries (r_offset, r_info, r_addend) straight from the bytes: pyelftools' per-entry
        # parsing costs ~0.5 s on a library with static cudart's relocations
        for r_offset, r_info, r_addend in struct.iter_unpack("<QQq", sec.data()[: sec["sh_size"] // 24 * 24]):
            if r_offset not in slots:
                continue
            rtype, rsym = r_info & 0xFFFFFFFF, r_info >> 32
            if rtype == relative:
                relocs[r_offset] = r_addend
            elif rtype == absolute and dynsym is not None and rsym:
                sym = dynsym.get_symbol(rsym)
                if sym["st_value"]:
                    relocs[r_offset] = sym["st_value"] + r_addend
    for name in (".preinit_array", ".init_array"):
        sec = elf.get_section_by_name(name)
        if sec is None or sec["sh_type"] == "SHT_NOBITS":
            continue
        data = sec.data()
        for off in range(0, len(data) - 7, 8):
            slot = sec["sh_addr"] + off
            target = relocs.get(slot, int.from_bytes(data[off:off + 8], "little"))
            if target not in (0, 0xFFFFFFFFFFFFFFFF):
                roots.append((target, name))
    return Image(arch, tuple(sections), tuple(sorted(symbols.values())), tuple(roots))


# ---------------------------------------------------------------- folders and wheels


def read_declarations(data: Any, where: str) -> dict[str, list[str]]:
    """Validate an ``audit.json`` object; return its ``guarded`` table (pattern -> features)."""
    if type(data) is not dict or data.get("schema") != AUDIT_SCHEMA or set(data) - {"schema", "guarded"}:
        raise AuditError(f"{where}: expected {{\"schema\": {AUDIT_SCHEMA}, \"guarded\": {{SYMBOL: [FEATURE, ...]}}}}")
    return check_guarded(data.get("guarded", {}), where)


def check_guarded(guarded: Any, where: str) -> dict[str, list[str]]:
    if type(guarded) is not dict or not all(
            isinstance(k, str) and k and type(v) is list and v and all(isinstance(f, str) and f for f in v)
            for k, v in guarded.items()):
        raise AuditError(f"{where}: 'guarded' must map symbol names (or fnmatch patterns) to non-empty lists of "
                         "CPU feature names, e.g. {\"kernel_avx2\": [\"avx2\", \"fma\"]}")
    return {k: sorted(set(v)) for k, v in guarded.items()}


def declarations_file(guarded: Mapping[str, Sequence[str]]) -> str:
    """The text of ``audit.json`` for a guarded table."""
    return json.dumps({"schema": AUDIT_SCHEMA, "guarded": {k: sorted(set(v)) for k, v in sorted(guarded.items())}},
                      indent=1) + "\n"


def stale_entries(files: Iterable[str], manifest: Manifest) -> list[str]:
    """Files (relative to the variants folder, ``/``-separated) that no build of ``manifest`` owns."""
    owned = [v.file for v in manifest.variants]
    out = []
    for rel in files:
        if rel in (MANIFEST_NAME, AUDIT_NAME):
            continue
        if not any(rel == f or rel.startswith(f + ".") for f in owned):
            out.append(rel)
    return sorted(out)


def _build_file(files: Iterable[str], stem: str) -> str | None:
    matches = sorted(f for f in files if f == stem or (f.startswith(stem + ".") and f.endswith((".so", ".pyd"))))
    return matches[0] if matches else None


def audit_module(module: Manifest, folder: str, files: Sequence[str], opener: Any,
                 only: Sequence[str] = ()) -> ModuleAudit:
    """Audit one fat module: ``files`` are its variants folder's entries, ``opener(rel)`` a binary stream."""
    guarded: dict[str, list[str]] = {}
    if AUDIT_NAME in files:
        with opener(AUDIT_NAME) as f:
            try:
                guarded = read_declarations(json.loads(f.read().decode("utf-8")), f"{folder}/{AUDIT_NAME}")
            except ValueError as exc:
                raise AuditError(f"{folder}/{AUDIT_NAME}: not valid JSON ({exc})") from None
    builds = []
    missing = []
    for v in module.variants:
        if only and v.name not in only:
            continue
        rel = _build_file(files, v.file)
        if rel is None:
            missing.append(v.name)
            continue
        required = required_features(v.features, v.x86_64_level)
        started = time.perf_counter()
        try:
            with opener(rel) as f:
                image = read_image(io.BytesIO(f.read()), f"{folder}/{rel}")
            findings, count = audit_image(image, required, guarded)
            error = skipped = ""
        except NotAudited as exc:
            findings, count, error, skipped = [], 0, "", str(exc)
        except AuditError as exc:
            if "needs iced-x86" in str(exc) or "needs capstone" in str(exc) or "pyelftools" in str(exc):
                raise
            findings, count, error, skipped = [], 0, str(exc), ""
        builds.append(BuildAudit(module.module, v.name, v.kind, f"{folder}/{rel}", required, tuple(findings), count,
                                 time.perf_counter() - started, error, skipped))
    return ModuleAudit(module.module, folder, tuple(builds), tuple(stale_entries(files, module)), tuple(missing))


def audit_folder(folder: str, only: Sequence[str] = ()) -> ModuleAudit:
    """Audit the variants folder ``folder`` (``.../<mod>.variants``)."""
    path = os.path.join(folder, MANIFEST_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = parse_manifest(json.load(f), path)
    except (OSError, ValueError) as exc:
        raise AuditError(f"{path}: cannot read the manifest ({exc})") from None
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            files.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
        if not names and not dirs and root != folder:
            files.append(os.path.relpath(root, folder).replace(os.sep, "/") + "/")
    return audit_module(manifest, folder, sorted(files), lambda rel: open(os.path.join(folder, rel), "rb"), only)


def audit_wheel(path: str) -> list[ModuleAudit]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        out = []
        for name in names:
            parts = name.split("/")
            if len(parts) >= 2 and parts[-1] == MANIFEST_NAME and parts[-2].endswith(VARIANTS_SUFFIX):
                folder = "/".join(parts[:-1])
                manifest = parse_manifest(json.loads(zf.read(name)), f"{path}!{name}")
                files = sorted(n[len(folder) + 1:] for n in names if n.startswith(folder + "/") and not n.endswith("/"))
                out.append(audit_module(manifest, f"{path}!{folder}", files,
                                        lambda rel, folder=folder: zf.open(f"{folder}/{rel}")))
        return out


def find_variant_folders(root: str) -> list[str]:
    """Every ``*.variants`` folder holding a manifest under ``root`` (``root`` itself included)."""
    if root.endswith(VARIANTS_SUFFIX) and os.path.isfile(os.path.join(root, MANIFEST_NAME)):
        return [root]
    found = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "node_modules"))
        if here.endswith(VARIANTS_SUFFIX) and MANIFEST_NAME in files:
            found.append(here)
            dirs[:] = []
    return found


def audit_path(path: str) -> list[ModuleAudit]:
    """Audit a wheel, a variants folder, or every variants folder under a directory."""
    if os.path.isfile(path) and path.endswith(".whl"):
        return audit_wheel(path)
    if os.path.isdir(path):
        folders = find_variant_folders(path)
        if not folders:
            raise AuditError(f"{path}: no fat modules (no */<mod>{VARIANTS_SUFFIX}/{MANIFEST_NAME}) under it")
        return [audit_folder(f) for f in folders]
    raise AuditError(f"{path}: not a wheel (.whl) or a folder")


# ---------------------------------------------------------------- reporting


def format_report(audits: Sequence[ModuleAudit], limit: int = 20) -> str:
    """The human-readable report; ``limit``: instructions listed per build (0: all)."""
    lines = []
    for m in audits:
        lines.append(f"{m.module} ({m.folder})")
        for rel in m.stale:
            lines.append(f"  STALE      {rel}: in the variants folder but no build in the manifest owns it")
        for name in m.missing:
            lines.append(f"  MISSING    {name}: listed in the manifest, its file is not there")
        for b in m.builds:
            head = f"  {b.build:<18}"
            if b.error:
                lines.append(f"{head} ERROR {b.error}")
                continue
            if b.not_audited:
                lines.append(f"{head} not audited: {b.not_audited}")
                continue
            guarded = [f for f in b.findings if f.guarded]
            tail = f"({b.instructions} instructions, {b.seconds:.2f} s)"
            if not b.bad:
                note = f"; {len(guarded)} guarded instructions as declared in {AUDIT_NAME}" if guarded else ""
                lines.append(f"{head} clean {tail}{note}")
                continue
            feats = sorted({x for f in b.bad for x in f.missing})
            load = [f for f in b.bad if f.load_time]
            lines.append(f"{head} {len(b.bad)} instructions need {', '.join(feats)}, which the manifest does not "
                         f"require {tail}")
            if load:
                lines.append(f"    LOAD-TIME: {len(load)} of them run inside dlopen, before any dispatch "
                             "(a CPU without them dies importing this build):")
            shown = 0
            for f in b.bad:
                if limit and shown >= limit:
                    lines.append(f"    ... {len(b.bad) - shown} more (--all lists every one)")
                    break
                where = f"  [load: {f.load_time}]" if f.load_time else ""
                lines.append(f"    {'LOAD ' if f.load_time else '     '}{f.address:#010x} {f.section:<8} "
                             f"{f.symbol:<32} {f.text:<40} needs {', '.join(f.missing)}{where}")
                shown += 1
            by_sym: dict[str, int] = {}
            for f in b.bad:
                by_sym[f.function or "?"] = by_sym.get(f.function or "?", 0) + 1
            lines.append("    by symbol: " + ", ".join(f"{s} ({n})" for s, n in sorted(by_sym.items(),
                                                                                      key=lambda kv: -kv[1])))
    bad = sum(len(b.bad) for m in audits for b in m.builds)
    problems = sum(bool(m.stale) + bool(m.missing) + sum(bool(b.error) for b in m.builds) for m in audits)
    total = sum(len(m.builds) for m in audits)
    lines.append(f"audit: {total} builds, {bad} instructions beyond their manifest, {problems} other problems"
                 + (" -- FAILED" if bad or problems else " -- clean"))
    return "\n".join(lines)


def report_dict(audits: Sequence[ModuleAudit]) -> dict[str, Any]:
    return {"ok": all(m.ok for m in audits), "modules": [
        {"module": m.module, "folder": m.folder, "stale": list(m.stale), "missing": list(m.missing),
         "builds": [{"build": b.build, "kind": b.kind, "path": b.path, "ok": b.ok, "error": b.error or None,
                     "instructions": b.instructions, "seconds": round(b.seconds, 4),
                     "not_audited": b.not_audited or None,
                     "findings": [f.as_dict() for f in b.findings]} for b in m.builds]} for m in audits]}


@dataclass
class Outcome:
    """What :func:`run_audit` found, for callers that decide what a failure means (build_ext, test-variants)."""

    audits: list[ModuleAudit] = field(default_factory=list)
    text: str = ""

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.audits)


def run_audit(paths: Sequence[str]) -> Outcome:
    """Audit wheels/folders; the function ``test-variants``, ``build_ext`` and CI recipes call."""
    audits: list[ModuleAudit] = []
    for p in paths:
        audits.extend(audit_path(p))
    return Outcome(audits, format_report(audits))


def main(paths: Sequence[str], as_json: bool = False, limit: int = 20) -> int:
    """``python -m fatdispatch audit``: 0 when every build is clean, 1 otherwise."""
    audits: list[ModuleAudit] = []
    if not paths:
        import sys

        from .._discover import discover

        found = discover(sys.path)
        if not found:
            raise AuditError("audit: no installed fat modules found on sys.path; name a wheel or a folder")
        audits = [audit_folder(folder) for _, folder in sorted(found.items())]
    for p in paths:
        audits.extend(audit_path(p))
    if as_json:
        print(json.dumps(report_dict(audits), indent=1))
    else:
        print(format_report(audits, limit))
    return 0 if all(m.ok for m in audits) else 1
