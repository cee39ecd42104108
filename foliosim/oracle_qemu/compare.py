"""Parse the guest's console and compare it, statement by statement, with the model.

What is compared (the observables of a guest, see runtime_c.py):
- after every task statement: errno and signal of the task, and RssFile/RssAnon/RssShmem of
  every live task (pages; the kernel prints kB);
- after `truncate`/`punch`/`file`: the global errno;
- kernel reports (dmesg lines with WARNING:, BUG:, bad pud/pmd, Bad rss-counter, Oops)
  attributed to the statement after which they appeared, against the model's reports;
- `expect` lines whose query is observable (rss, errno, signal, warning): the kernel's value
  against the model's. `level()`, `folio()`, `page()`, `vmstat`, `free()` and pins are not
  observable from a guest's userspace without side effects: those rows say so and do not
  count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from foliosim.scenario.parser import Query, Stmt
from foliosim.scenario.runner import Run, execute

REPORT_RE = re.compile(
    r"WARNING:|BUG:|bad p[um4g]d|Bad rss-counter|Oops|general protection|"
    r"kernel BUG"
)
OBS_RE = re.compile(r"@@O s=(\d+) l=(-?\d+) e=(\S+) g=(\S+) r=(\S+) rss=(\S*)")
RSS_ITEM_RE = re.compile(r"(\w+):(-?\d+):(-?\d+):(-?\d+)")
KMSG_RE = re.compile(r"@@K s=(\d+) l=(-?\d+) (.*)")
TASK_KINDS = (
    "mmap",
    "munmap",
    "read",
    "write",
    "madvise",
    "mprotect",
    "mremap",
    "fork",
    "exit",
    "proc",
)
GLOBAL_KINDS = ("truncate", "punch", "file")
OBSERVABLE_QUERIES = ("rss", "errno", "signal", "global_errno", "var")


@dataclass
class Obs:
    errno: str
    signal: str | None
    ret: str
    rss: dict[str, tuple[int, int, int]]  # task -> (file, anon, shmem) in pages


@dataclass
class GuestScenario:
    obs: dict[int, Obs] = field(default_factory=dict)
    kmsg: dict[int, list[str]] = field(default_factory=dict)
    unobservable: set[int] = field(default_factory=set)
    began: bool = False
    ended: bool = False
    setup_errors: list[str] = field(default_factory=list)


@dataclass
class Console:
    release: str = ""
    region: str = ""
    scenarios: dict[int, GuestScenario] = field(default_factory=dict)
    dmesg: list[str] = field(default_factory=list)
    done: bool = False


def parse_console(text: str) -> Console:
    c = Console()
    in_dmesg = False
    current: GuestScenario | None = None
    for raw in text.splitlines():
        line = raw.strip("\x1b")
        i = line.find("@@")
        tail = line[i:] if i >= 0 else ""
        if tail.startswith("@@BOOT"):
            c.release = tail.split()[1] if len(tail.split()) > 1 else ""
        elif tail.startswith("@@REGION"):
            c.region = tail[9:]
        elif tail.startswith("@@PREP"):
            current = c.scenarios.setdefault(int(tail.split("s=")[1]), GuestScenario())
        elif tail.startswith("@@BEGIN"):
            n = int(tail.split("s=")[1])
            current = c.scenarios.setdefault(n, GuestScenario())
            current.began = True
        elif tail.startswith("@@SETUPFAIL"):
            target = current if current is not None else c.scenarios.setdefault(-1, GuestScenario())
            target.setup_errors.append(tail)
        elif (m := OBS_RE.match(tail)) is not None:
            s = c.scenarios.setdefault(int(m[1]), GuestScenario())
            rss: dict[str, tuple[int, int, int]] = {}
            # A console line can be cut by a kernel message: take the well-formed items.
            for name, f, a, sh in RSS_ITEM_RE.findall(m[6]):
                rss[name] = (int(f) // 4, int(a) // 4, int(sh) // 4)
            s.obs[int(m[2])] = Obs(m[3], None if m[4] == "-" else m[4], m[5], rss)
        elif (m := KMSG_RE.match(tail)) is not None:
            s = c.scenarios.setdefault(int(m[1]), GuestScenario())
            s.kmsg.setdefault(int(m[2]), []).append(m[3])
        elif tail.startswith("@@U"):
            m2 = re.match(r"@@U s=(\d+) l=(\d+)", tail)
            if m2:
                c.scenarios.setdefault(int(m2[1]), GuestScenario()).unobservable.add(int(m2[2]))
        elif tail.startswith("@@END"):
            c.scenarios.setdefault(int(tail.split("s=")[1]), GuestScenario()).ended = True
        elif tail.startswith("@@DMESG"):
            in_dmesg = True
        elif tail.startswith("@@DONE"):
            in_dmesg = False
            c.done = True
        elif in_dmesg:
            c.dmesg.append(line)
    return c


def reports_in(lines: list[str]) -> list[str]:
    return [ln for ln in lines if REPORT_RE.search(ln)]


@dataclass
class Row:
    line: int
    source: str
    model: str
    kernel: str
    verdict: str  # agree, DISAGREE, not observable, no result

    def json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _model_state(run: Run) -> dict[str, Any]:
    k = run.kernel
    tasks = {}
    for name, t in k.tasks.items():
        tasks[name] = {
            "errno": t.errno or "0",
            "signal": t.signal,
            "exited": t.exited,
            "rss": (t.mm.rss[0], t.mm.rss[1], t.mm.rss[3]),
        }
    return {
        "tasks": tasks,
        "global_errno": k.global_errno or "0",
        "reports": len(k.reports.reports),
    }


def run_model(path: str, stmts: list[Stmt], variant: str) -> Run:
    return execute(path, stmts, variant=variant, observe=_model_state)


def _fmt_rss(rss: dict[str, tuple[int, int, int]]) -> str:
    return " ".join(f"{t}:{f}/{a}/{s}" for t, (f, a, s) in rss.items())


def compare(stmts: list[Stmt], run: Run, guest: GuestScenario | None) -> list[Row]:
    """Rows of the side-by-side table (model vs kernel) for one scenario."""
    rows: list[Row] = []
    model_reports: dict[int, list[str]] = {}
    for rep in run.kernel.reports.reports:
        model_reports.setdefault(rep.line, []).append(rep.render().splitlines()[0])
    by_line = {r.line: (r, o) for r, o in zip(run.results, run.observations, strict=True)}
    last_obs: Obs | None = None
    kernel_reports_so_far: list[str] = []
    k_task: dict[str, tuple[str, str | None]] = {"": ("0", None)}
    for s in stmts:
        if s.line not in by_line:
            continue
        result, state = by_line[s.line]
        mrep = model_reports.get(s.line, [])
        krep = reports_in(guest.kmsg.get(s.line, [])) if guest else []
        kernel_reports_so_far += krep
        if s.kind in ("pin", "unpin", "shrink"):
            rows.append(Row(s.line, s.source, "-", "-", "not observable"))
            continue
        if s.kind in TASK_KINDS or s.kind in GLOBAL_KINDS or s.kind == "task":
            obs = guest.obs.get(s.line) if guest else None
            if obs is None:
                rows.append(Row(s.line, s.source, "", "(no observation)", "no result"))
                continue
            last_obs = obs
            if s.task is not None:
                k_task[s.task] = (obs.errno, obs.signal)
            elif s.kind != "task":
                k_task[""] = (obs.errno, None)
            tasks = state["tasks"]
            if s.task is not None:
                me = tasks[s.task]
                m_err, m_sig = str(me["errno"]), me["signal"]
            elif s.kind == "task":
                m_err, m_sig = "0", None
            else:
                m_err, m_sig = str(state["global_errno"]), None
            m_rss = {n: t["rss"] for n, t in tasks.items() if not t["exited"]}
            model = f"e={m_err} sig={m_sig or '-'} {_fmt_rss(m_rss)}"
            kernel = f"e={obs.errno} sig={obs.signal or '-'} {_fmt_rss(obs.rss)}"
            ok = m_err == obs.errno and m_sig == obs.signal and m_rss == obs.rss
            if mrep or krep:
                model += " | " + "; ".join(mrep) if mrep else ""
                kernel += " | " + "; ".join(krep) if krep else ""
            ok = ok and bool(mrep) == bool(krep)
            rows.append(Row(s.line, s.source, model, kernel, "agree" if ok else "DISAGREE"))
        elif s.kind == "expect_warning":
            text = str(s.args["text"])
            k_has = any(text in ln for ln in kernel_reports_so_far) if guest else None
            m_has = result.ok
            verdict = "no result" if k_has is None else ("agree" if k_has == m_has else "DISAGREE")
            rows.append(
                Row(
                    s.line,
                    s.source,
                    "warned" if m_has else "no such warning",
                    "warned" if k_has else "no such warning",
                    verdict,
                )
            )
        elif s.kind == "expect_no_warnings":
            k_none = not kernel_reports_so_far
            rows.append(
                Row(
                    s.line,
                    s.source,
                    "none" if result.ok else "warned",
                    "none" if k_none else "warned",
                    "agree" if k_none == result.ok else "DISAGREE",
                )
            )
        elif s.kind == "expect":
            q = s.args["query"]
            assert isinstance(q, Query)
            if q.kind not in OBSERVABLE_QUERIES or q.kind == "var":
                rows.append(
                    Row(
                        s.line,
                        s.source,
                        str(list(result.values.values())[:1]),
                        "-",
                        "not observable",
                    )
                )
                continue
            mval = result.values.get(q.text())
            kval = _kernel_value(q, last_obs, k_task)
            verdict = (
                "no result"
                if last_obs is None
                else (
                    "agree"
                    if str(mval if mval is not None else "none") == str(kval)
                    else "DISAGREE"
                )
            )
            rows.append(
                Row(s.line, s.source, f"{mval if mval is not None else 'none'}", str(kval), verdict)
            )
    if guest is not None:
        tear = reports_in(guest.kmsg.get(-1, []))
        if tear:
            rows.append(Row(0, "(end: remaining tasks exit)", "", "; ".join(tear), "DISAGREE"))
        if not guest.ended:
            rows.append(Row(0, "(scenario did not finish in the guest)", "", "", "no result"))
        for err in guest.setup_errors:
            rows.append(Row(0, "(guest set-up)", "", err, "no result"))
    return rows


def _kernel_value(q: Query, obs: Obs | None, k_task: dict[str, tuple[str, str | None]]) -> str:
    if obs is None:
        return "?"
    if q.kind == "rss":
        t = obs.rss.get(str(q.task))
        if t is None:
            return "none"
        idx = {"file": 0, "anon": 1, "shmem": 2}.get(q.field)
        return "?" if idx is None else str(t[idx])
    errno, signal = k_task.get("" if q.kind == "global_errno" else str(q.task), ("0", None))
    if q.kind in ("errno", "global_errno"):
        return errno
    if q.kind == "signal":
        return signal or "none"
    return "?"
