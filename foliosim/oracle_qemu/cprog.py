"""Translate parsed scenarios into the guest's C program and its set-up plan.

Every scenario of a boot becomes a table of `struct op` (one per statement the guest runs)
compiled with the runtime in `runtime_c.py` into one static binary; `argv[1]` picks the
scenario, the remaining arguments give the paths of its devices (`INDEX=PATH`), which the
guest's shell script creates with ndctl before running it.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foliosim.oracle_qemu.runtime_c import RUNTIME
from foliosim.scenario.parser import Addr, Stmt

PROT = {
    "none": "PROT_NONE",
    "r": "PROT_READ",
    "rw": "PROT_READ|PROT_WRITE",
    "rx": "PROT_READ|PROT_EXEC",
    "rwx": "PROT_READ|PROT_WRITE|PROT_EXEC",
}
ADVICE = {
    "DONTNEED": "MADV_DONTNEED",
    "HUGEPAGE": "MADV_HUGEPAGE",
    "NOHUGEPAGE": "MADV_NOHUGEPAGE",
    "COLLAPSE": "MADV_COLLAPSE",
    "PAGEOUT": "MADV_PAGEOUT",
    "FREE": "MADV_FREE",
    "COLD": "MADV_COLD",
    "WILLNEED": "MADV_WILLNEED",
    "NORMAL": "MADV_NORMAL",
    "GUARD_INSTALL": "MADV_GUARD_INSTALL",
    "GUARD_REMOVE": "MADV_GUARD_REMOVE",
}
KIND = {
    "mmap": "OP_MMAP",
    "munmap": "OP_MUNMAP",
    "read": "OP_READ",
    "write": "OP_WRITE",
    "madvise": "OP_MADVISE",
    "mprotect": "OP_MPROTECT",
    "mremap": "OP_MREMAP",
    "fork": "OP_FORK",
    "exit": "OP_EXIT",
    "proc": "OP_PROC",
    "file": "OP_FILE",
    "truncate": "OP_TRUNCATE",
    "punch": "OP_PUNCH",
    "task": "OP_TASK",
}
UNOBSERVABLE = ("pin", "unpin", "shrink")
SKIPPED = (
    "config",
    "memory",
    "devdax",
    "fsdax",
    "expect",
    "expect_warning",
    "expect_no_warnings",
    "print",
    "check",
)


PAGECACHE_FS_SIZE = 256 << 20  # the ext4 that holds a scenario's page-cache files


class Unsupported(Exception):
    """A scenario the guest cannot run (the message says why)."""


@dataclass
class Device:
    index: int
    name: str
    kind: str  # devdax, fsdax, shmem, pagecache
    size: int = 0
    align: int = 0
    huge: str = ""


@dataclass
class Plan:
    """What the guest sets up for one scenario and how its program is called."""

    number: int
    path: str
    thp: str = "madvise"
    devices: list[Device] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    unobservable: list[int] = field(default_factory=list)


def _c_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Translator:
    def __init__(self, number: int, path: str, stmts: list[Stmt]) -> None:
        self.plan = Plan(number, path)
        self.stmts = stmts
        self.names: dict[str, int] = {}
        self.devs: dict[str, int] = {}
        self.tasks: dict[str, int] = {}

    def name(self, n: str) -> int:
        return self.names.setdefault(n, len(self.names))

    def task(self, n: str) -> int:
        if n not in self.tasks:
            if len(self.tasks) >= 16:
                raise Unsupported("more than 16 tasks")
            self.tasks[n] = len(self.tasks)
            self.plan.tasks.append(n)
        return self.tasks[n]

    def device(self, name: str, kind: str, **kw: int | str) -> int:
        index = len(self.devs)
        self.devs[name] = index
        dev = Device(index, name, kind)
        for key, value in kw.items():
            setattr(dev, key, value)
        self.plan.devices.append(dev)
        return index

    def addr(self, a: Addr | None) -> tuple[int, int]:
        if a is None:
            return -2, 0
        if a.name is None:
            return -1, a.offset
        return self.name(a.name), a.offset

    def translate(self) -> Plan:
        for s in self.stmts:
            self.statement(s)
        return self.plan

    def statement(self, s: Stmt) -> None:
        a = s.args
        if s.kind == "config":
            kv: dict[str, tuple[str, int]] = a["kv"]  # type: ignore[assignment]
            for key, (value, _col) in kv.items():
                if key == "arch" and value != "x86_64":
                    raise Unsupported(f"arch={value} (the guest is x86_64)")
                if key == "granule" and value != "4K":
                    raise Unsupported(f"granule={value}")
                if key == "mthp" or key.startswith("CONFIG_") or key == "swap":
                    raise Unsupported(f"config {key}= cannot be set in the guest")
                if key == "thp":
                    self.plan.thp = value
            return
        if s.kind == "devdax":
            align = s.num("align") if a["align"] is not None else 2 << 20
            self.device(str(a["name"]), "devdax", size=s.num("size"), align=align)
            return
        if s.kind == "fsdax":
            self.device(str(a["name"]), "fsdax", size=s.num("size"))
            return
        if s.kind in SKIPPED:
            return
        if s.kind in UNOBSERVABLE:
            self.plan.unobservable.append(s.line)
            self.emit(s, kind="OP_UNOBSERVABLE")
            return
        if s.kind == "file":
            fs, _ = s.pair("fs")
            if fs == "pagecache":
                # One ext4 per scenario on a pmem namespace mounted without -o dax: page
                # cache with large folios (ext4 has them since 6.16; older guests make
                # order-0 folios only, and the comparison says so).
                parent = self.devs.get("pagecache")
                if parent is None:
                    parent = self.device("pagecache", "pagecache", size=PAGECACHE_FS_SIZE)
            elif fs == "shmem":
                huge = str(a["huge"])
                key = f"shm-{huge}"
                parent = self.devs.get(key)
                if parent is None:
                    parent = self.device(key, "shmem", huge=huge)
            else:
                parent = self.devs[fs]
            index = self.device(str(a["name"]), "file")
            flags = 1 if a["filled"] else 0
            self.emit(
                s,
                kind="OP_FILE",
                dev=parent,
                other=index,
                len=s.num("size"),
                flags=flags,
                text=_c_str(str(a["name"])),
            )
            return
        if s.kind == "task":
            self.emit(s, kind="OP_TASK", task=self.task(str(a["name"])))
            return
        if s.kind in ("truncate", "punch"):
            dev = self.devs[str(a["file"])]
            if s.kind == "truncate":
                self.emit(s, dev=dev, len=s.num("size"))
            else:
                self.emit(s, dev=dev, off=s.num("off"), len=s.num("len"))
            return
        assert s.task is not None
        t = self.task(s.task)
        aname, aoff = self.addr(s.addr("addr"))
        common: dict[str, Any] = {"task": t, "aname": aname, "aoff": aoff}
        if s.kind == "mmap":
            fd = a["fd"]
            dev = self.devs[s.pair("fd")[0]] if fd is not None else -1
            shared = a["shared"] if a["shared"] is not None else fd is not None
            flags = (1 if shared else 0) | (2 if a["populate"] else 0)
            atname, atoff = self.addr(s.addr("at"))
            align = s.num("align") if a["align"] is not None else 0
            self.emit(
                s,
                task=t,
                bind=self.name(str(a["bind"])),
                len=s.num("len"),
                prot=PROT[str(a["prot"])],
                flags=flags,
                dev=dev,
                off=s.num("off"),
                align=align,
                atname=atname,
                atoff=atoff,
            )
        elif s.kind in ("munmap", "read", "write"):
            self.emit(s, len=s.num("len"), **common)
        elif s.kind == "madvise":
            self.emit(s, len=s.num("len"), adv=ADVICE[str(a["advice"])], **common)
        elif s.kind == "mprotect":
            self.emit(s, len=s.num("len"), prot=PROT[str(a["prot"])], **common)
        elif s.kind == "mremap":
            fname, foff = self.addr(s.addr("fixed"))
            self.emit(
                s,
                len=s.num("old"),
                len2=s.num("new"),
                maymove=int(bool(a["maymove"])),
                fname=fname,
                foff=foff,
                bind=self.name(str(a["bind"])),
                **common,
            )
        elif s.kind == "fork":
            self.emit(s, task=t, other=self.task(str(a["child"])))
        elif s.kind == "exit":
            self.emit(s, task=t)
        elif s.kind == "proc":
            self.emit(s, task=t, other=self.task(str(a["of"])), text=_c_str(str(a["file"])))
        else:
            raise Unsupported(f"statement '{s.kind}'")

    def emit(self, s: Stmt, kind: str | None = None, **fields: object) -> None:
        values: dict[str, object] = {
            "line": s.line,
            "kind": kind or KIND[s.kind],
            "task": -1,
            "other": -1,
            "bind": 0,
            "dev": -1,
            "aname": -2,
            "atname": -2,
            "fname": -2,
        }
        values.update(fields)
        body = ", ".join(f".{k} = {v}" for k, v in values.items())
        self.plan.ops.append("    { " + body + " },")


def translate(number: int, path: str, stmts: list[Stmt]) -> Plan:
    return Translator(number, path, stmts).translate()


def c_source(plans: list[Plan]) -> str:
    parts = [RUNTIME]
    cases = []
    for p in plans:
        n = p.number
        parts.append(f"/* scenario {n}: {p.path.replace('*/', '')} */")
        parts.append(f"static struct op ops_{n}[] = {{\n" + "\n".join(p.ops) + "\n    {0}\n};")
        tnames = ", ".join(_c_str(t) for t in p.tasks) or '""'
        parts.append(f"static const char *const tnames_{n}[] = {{ {tnames} }};")
        cases.append(
            f"    case {n}: return run_scenario(ops_{n}, {len(p.ops)}, {len(p.tasks)}, tnames_{n});"
        )
    parts.append(
        "int main(int argc, char **argv) {\n"
        "    if (argc < 2) return 2;\n"
        "    scen = atoi(argv[1]);\n"
        "    for (int i = 2; i < argc; i++) {\n"
        "        char *eq = strchr(argv[i], '=');\n"
        '        if (eq) snprintf(paths[atoi(argv[i])], sizeof paths[0], "%s", eq + 1);\n'
        "    }\n"
        "    setvbuf(stdout, NULL, _IOLBF, 0);\n"
        "    switch (scen) {\n" + "\n".join(cases) + "\n    }\n    return 2;\n}\n"
    )
    return "\n".join(parts)


def build(plans: list[Plan], workdir: Path) -> Path:
    """Compile the program with gcc -static (cached by the hash of its source)."""
    source = c_source(plans)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    workdir.mkdir(parents=True, exist_ok=True)
    binary = workdir / f"foliosim-guest-{digest}"
    if binary.exists():
        return binary
    src = workdir / f"foliosim-guest-{digest}.c"
    src.write_text(source)
    proc = subprocess.run(
        ["gcc", "-static", "-O1", "-w", "-o", str(binary), str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"gcc failed on {src}:\n{proc.stderr[-2000:]}")
    return binary
