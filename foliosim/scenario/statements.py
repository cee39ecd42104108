"""Statement grammar of the scenario language and the static checks over a whole file."""

from __future__ import annotations

from foliosim.scenario.parser import (
    ADVICES,
    FOLIO_FIELDS,
    OPERATORS,
    PAGE_FIELDS,
    PROC_FILES,
    PROTS,
    Addr,
    LineParser,
    Num,
    Query,
    ScenarioError,
    Stmt,
    Tok,
    Value,
    parse_kv,
    parse_number,
    tokenize,
)

CONFIG_KEYS = {
    "arch": "x86_64|arm64",
    "levels": "4|5",
    "granule": "4K|16K|64K",
    "thp": "always|madvise|never",
    "mthp": "SIZE:MODE,...",
    "mapcount": "page|nopage",
    "variant": "legacy|seed|mainline",
    "swap": "SIZE",
    "smallpages": "arrays|objects",
}
RSS_FIELDS = ("anon", "file", "shmem", "swap")


def parse_text(path: str, text: str) -> list[Stmt]:
    """Parse a whole scenario and run the static checks."""
    stmts: list[Stmt] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        toks = tokenize(path, lineno, raw)
        if not toks:
            continue
        p = LineParser(path, lineno, toks, raw)
        stmt = parse_statement(p)
        stmt.source = raw.strip()
        stmts.append(stmt)
    static_check(path, stmts)
    return stmts


def parse_statement(p: LineParser) -> Stmt:
    first = p.peek()
    assert first is not None
    second = p.toks[1] if len(p.toks) > 1 else None
    if second is not None and second.text == ":" and not first.quoted:
        task = p.name("a task name")
        p.expect(":")
        return parse_task_statement(p, task.text, first.col)
    word = p.next("a statement")
    kind = word.text
    stmt = Stmt(p.line, word.col, kind)
    if word.quoted:
        raise p.error("expected a statement", word.col)
    if kind == "config":
        stmt.args["kv"] = parse_kv(p, CONFIG_KEYS)
    elif kind == "memory":
        stmt.args["size"] = p.number("a size")
    elif kind in ("devdax", "fsdax"):
        stmt.args["name"] = p.name("a device name").text
        allowed = {"size": "SIZE", "align": "4K|2M|1G"} if kind == "devdax" else {"size": "SIZE"}
        dev_kv = parse_kv(p, allowed)
        _require(p, dev_kv, "size", stmt)
        stmt.args["size"] = _kv_number(p, dev_kv, "size")
        if kind == "devdax":
            stmt.args["align"] = _kv_number(p, dev_kv, "align") if "align" in dev_kv else None
    elif kind == "file":
        stmt.args["name"] = p.name("a file name").text
        kv: dict[str, tuple[str, int]] = {}
        filled = False
        while p.peek() is not None:
            tok = p.next("an option")
            if tok.text == "filled":
                filled = True
                continue
            key, eq, value = tok.text.partition("=")
            if not eq or key not in ("size", "fs", "huge"):
                raise p.error(f"unknown file option '{tok.text}'", tok.col)
            kv[key] = (value, tok.col + len(key) + 1)
        _require(p, kv, "size", stmt)
        _require(p, kv, "fs", stmt)
        stmt.args["size"] = _kv_number(p, kv, "size")
        stmt.args["fs"] = kv["fs"]
        huge = kv.get("huge", ("never", 0))
        if huge[0] not in ("never", "always", "within_size", "advise"):
            raise p.error(f"bad huge= value '{huge[0]}'", huge[1])
        stmt.args["huge"] = huge[0]
        stmt.args["filled"] = filled
    elif kind == "task":
        stmt.args["name"] = p.name("a task name").text
    elif kind == "unpin":
        stmt.args["name"] = p.name("a pin name").text
    elif kind == "truncate":
        stmt.args["file"] = p.name("a file name").text
        stmt.args["size"] = p.number("a size")
    elif kind == "punch":
        stmt.args["file"] = p.name("a file name").text
        stmt.args["off"] = p.number("an offset")
        stmt.args["len"] = p.number("a length")
    elif kind in ("shrink", "check"):
        pass
    elif kind == "expect":
        parse_expect(p, stmt)
    elif kind == "print":
        stmt.args["query"] = parse_query(p)
    else:
        raise p.error(f"unknown statement '{kind}'", word.col)
    p.done()
    return stmt


def _require(p: LineParser, kv: dict[str, tuple[str, int]], key: str, stmt: Stmt) -> None:
    if key not in kv:
        raise p.error(f"'{stmt.kind}' needs {key}=", stmt.col)


def _kv_number(p: LineParser, kv: dict[str, tuple[str, int]], key: str) -> int:
    value, col = kv[key]
    return parse_number(p, value, col, key).value


def parse_task_statement(p: LineParser, task: str, col: int) -> Stmt:
    toks = p.toks
    bind: str | None = None
    if p.pos + 1 < len(toks) and toks[p.pos + 1].text == "=" and not toks[p.pos + 1].quoted:
        bind = p.name("a name").text
        p.expect("=")
    word = p.next("a task statement")
    kind = word.text
    stmt = Stmt(p.line, col, kind, task=task)
    stmt.args["bind"] = bind
    binding = ("mmap", "mremap", "pin")
    if bind is not None and kind not in binding:
        raise p.error(f"'{kind}' does not return a value", word.col)
    if bind is None and kind in binding:
        raise p.error(f"'{kind}' needs a NAME = in front", word.col)
    if kind == "mmap":
        parse_mmap(p, stmt)
    elif kind == "munmap" or kind in ("read", "write"):
        stmt.args["addr"] = p.addr()
        stmt.args["len"] = p.number("a length")
    elif kind == "madvise":
        stmt.args["addr"] = p.addr()
        stmt.args["len"] = p.number("a length")
        tok = p.next("an advice")
        advice = tok.text.upper().removeprefix("MADV_")
        if advice not in ADVICES:
            raise p.error(f"unknown advice '{tok.text}'", tok.col)
        stmt.args["advice"] = advice
    elif kind == "mprotect":
        stmt.args["addr"] = p.addr()
        stmt.args["len"] = p.number("a length")
        tok = p.next("a protection")
        if tok.text not in PROTS:
            raise p.error(f"bad protection '{tok.text}' (r, rw, rx, rwx, none)", tok.col)
        stmt.args["prot"] = tok.text
    elif kind == "mremap":
        stmt.args["addr"] = p.addr()
        stmt.args["old"] = p.number("the old length")
        stmt.args["new"] = p.number("the new length")
        stmt.args["maymove"] = False
        stmt.args["fixed"] = None
        while p.peek() is not None:
            tok = p.next("an option")
            if tok.text == "maymove":
                stmt.args["maymove"] = True
            elif tok.text.startswith("fixed="):
                stmt.args["fixed"] = parse_addr_text(p, tok, 6)
            else:
                raise p.error(f"unknown mremap option '{tok.text}'", tok.col)
    elif kind == "fork":
        stmt.args["child"] = p.name("a child task name").text
    elif kind == "exit":
        pass
    elif kind == "pin":
        stmt.args["addr"] = p.addr()
        stmt.args["len"] = p.number("a length")
        opts = {"longterm": False, "get": False, "ro": False}
        while p.peek() is not None:
            tok = p.next("an option")
            if tok.text not in opts:
                raise p.error(f"unknown pin option '{tok.text}'", tok.col)
            opts[tok.text] = True
        stmt.args.update(opts)
    elif kind == "proc":
        tok = p.next("a /proc file")
        if tok.text not in PROC_FILES:
            raise p.error(f"unknown /proc file '{tok.text}'", tok.col)
        stmt.args["file"] = tok.text
        stmt.args["of"] = task
        if p.peek() is not None:
            p.expect("of")
            stmt.args["of"] = p.name("a task name").text
    else:
        raise p.error(f"unknown task statement '{kind}'", word.col)
    p.done()
    return stmt


def parse_addr_text(p: LineParser, tok: Tok, skip: int) -> Addr:
    from foliosim.scenario.parser import parse_addr

    return parse_addr(p, Tok(tok.text[skip:], tok.col + skip))


def parse_mmap(p: LineParser, stmt: Stmt) -> None:
    stmt.args["len"] = p.number("a length")
    args: dict[str, object] = {
        "prot": "rw",
        "shared": None,
        "fd": None,
        "off": 0,
        "at": None,
        "align": None,
        "populate": False,
    }
    while p.peek() is not None:
        tok = p.next("an mmap option")
        text = tok.text
        if text in PROTS:
            args["prot"] = text
        elif text in ("shared", "private"):
            args["shared"] = text == "shared"
        elif text == "anon":
            args["fd"] = None
        elif text == "populate":
            args["populate"] = True
        elif text.startswith("fd="):
            name = text[3:]
            if not name:
                raise p.error("fd= needs a file or device name", tok.col)
            args["fd"] = (name, tok.col + 3)
        elif text.startswith("off="):
            args["off"] = parse_number(p, text[4:], tok.col + 4, "off").value
        elif text.startswith("align="):
            args["align"] = parse_number(p, text[6:], tok.col + 6, "align").value
        elif text.startswith("at="):
            args["at"] = parse_addr_text(p, tok, 3)
        else:
            raise p.error(f"unknown mmap option '{text}'", tok.col)
    stmt.args.update(args)


def parse_expect(p: LineParser, stmt: Stmt) -> None:
    tok = p.peek()
    if tok is not None and tok.text == "warning" and not tok.quoted:
        p.next("warning")
        text = p.next('a quoted "TEXT"')
        if not text.quoted:
            raise p.error('expected a quoted "TEXT"', text.col)
        stmt.kind = "expect_warning"
        stmt.args["text"] = text.text
        return
    if tok is not None and tok.text == "no" and not tok.quoted:
        p.next("no")
        w = p.next("'warnings'")
        if w.text != "warnings":
            raise p.error(f"expected 'warnings', found '{w.text}'", w.col)
        stmt.kind = "expect_no_warnings"
        return
    query = parse_query(p)
    op = p.next("a comparison (==, !=, <, <=, >, >=)")
    if op.text not in OPERATORS:
        raise p.error(f"expected a comparison, found '{op.text}'", op.col)
    value = parse_value(p)
    for side, other in ((query, value), (value, query)):
        if (
            isinstance(side, Query)
            and side.page_counted()
            and isinstance(other, Num)
            and other.sized
        ):
            pages = other.value // 4096
            raise p.error(
                f"{side.text()} counts pages: write {pages} (4K pages) instead of a size",
                other.col,
            )
    stmt.args.update(query=query, op=op.text, value=value)


def parse_value(p: LineParser) -> Value:
    tok = p.peek()
    if tok is None:
        raise p.error("expected a value")
    if tok.quoted:
        raise p.error("expected a value, not a string", tok.col)
    from foliosim.scenario.parser import NUMBER_RE

    if NUMBER_RE.match(tok.text):
        p.next("a value")
        return parse_number(p, tok.text, tok.col, "a value")
    if tok.text.startswith("-") and NUMBER_RE.match(tok.text[1:]):
        # A negative integer, e.g. folio_nr_pages_mapped() == -1 under NO_PAGE_MAPCOUNT.
        p.next("a value")
        num = parse_number(p, tok.text[1:], tok.col + 1, "a value")
        return Num(-num.value, num.sized, tok.col)
    nxt = p.toks[p.pos + 1] if p.pos + 1 < len(p.toks) else None
    if "." in tok.text or (nxt is not None and nxt.text == "(") or tok.text in ("errno",):
        return parse_query(p)
    p.next("a value")
    return tok.text


def parse_query(p: LineParser) -> Query:
    tok = p.next("a query")
    col = tok.col
    text = tok.text
    if tok.quoted:
        raise p.error("expected a query", col)
    if text in ("level", "folio", "page", "free"):
        p.expect("(")
        if text == "free":
            dev = p.name("a device name").text
            p.expect(")")
            return Query("free", field=dev, col=col, line=p.line)
        task = p.name("a task name").text
        p.expect(",")
        addr = p.addr()
        p.expect(")")
        if text == "level":
            return Query("level", task=task, addr=addr, col=col, line=p.line)
        ftok = p.next(f"a {text} field")
        fields = FOLIO_FIELDS if text == "folio" else PAGE_FIELDS
        name = ftok.text[1:] if ftok.text.startswith(".") else ""
        if name not in fields:
            raise p.error(f"unknown {text} field '{ftok.text.lstrip('.')}'", ftok.col)
        return Query(text, task=task, addr=addr, field=name, col=col, line=p.line)
    if text == "errno":
        return Query("global_errno", col=col, line=p.line)
    if text == "warnings":
        return Query("warnings", col=col, line=p.line)
    parts = text.split(".")
    if parts[0] == "vmstat" and len(parts) == 2 and parts[1]:
        from foliosim.kernel.reports import EVENTS, NODE_STATS

        if parts[1] not in NODE_STATS and parts[1] not in EVENTS:
            raise p.error(f"unknown vmstat counter '{parts[1]}'", col + len("vmstat."))
        return Query("vmstat", field=parts[1], col=col, line=p.line)
    if len(parts) == 3 and parts[1] == "rss" and parts[2] in RSS_FIELDS:
        return Query("rss", task=parts[0], field=parts[2], col=col, line=p.line)
    if len(parts) == 2 and parts[1] in ("errno", "signal"):
        return Query(parts[1], task=parts[0], col=col, line=p.line)
    if len(parts) == 2 and parts[0] and parts[1]:
        return Query("var", task=parts[0], field=parts[1], col=col, line=p.line)
    raise p.error(f"unknown query '{text}'", col)


def static_check(path: str, stmts: list[Stmt]) -> None:
    """Names, tasks and order: errors a user would want before anything runs."""
    tasks: dict[str, str] = {}  # name -> "live" | "exited"
    bound: set[str] = set()
    devices: set[str] = set()
    files: set[str] = set()
    pins: set[str] = set()
    started = False
    # Queries may name any task the file creates (none before it exists or after it exits).
    all_tasks = {
        str(s.args.get("child") or s.args.get("name")) for s in stmts if s.kind in ("task", "fork")
    }

    def err(stmt: Stmt, msg: str, col: int | None = None) -> ScenarioError:
        return ScenarioError(path, stmt.line, col or stmt.col, msg)

    for stmt in stmts:
        if stmt.kind == "config":
            if started:
                raise err(stmt, "config must come before anything else")
            continue
        if stmt.kind == "memory" and started:
            raise err(stmt, "memory must come before devices, files and tasks")
        started = started or stmt.kind != "memory"
        if stmt.task is not None:
            state = tasks.get(stmt.task)
            if state is None:
                raise err(stmt, f"unknown task '{stmt.task}'")
            if state == "exited":
                raise err(stmt, f"task '{stmt.task}' has exited")
        for value in stmt.args.values():
            _check_refs(path, stmt, value, bound, all_tasks, devices)
        name = stmt.args.get("name")
        if stmt.kind == "task" or stmt.kind == "fork":
            new = str(stmt.args.get("child") or name)
            if new in tasks:
                raise err(stmt, f"task name '{new}' is already used")
            tasks[new] = "live"
        elif stmt.kind == "exit" and stmt.task is not None:
            tasks[stmt.task] = "exited"
        elif stmt.kind in ("devdax", "fsdax"):
            if name in devices or name in files:
                raise err(stmt, f"'{name}' is already defined")
            devices.add(str(name))
        elif stmt.kind == "file":
            if name in devices or name in files:
                raise err(stmt, f"'{name}' is already defined")
            fs, col = stmt.pair("fs")
            if fs not in ("pagecache", "shmem") and fs not in devices:
                raise err(
                    stmt, f"unknown filesystem '{fs}' (pagecache, shmem or an fsdax name)", col
                )
            files.add(str(name))
        elif stmt.kind in ("truncate", "punch") and stmt.args["file"] not in files:
            raise err(stmt, f"unknown file '{stmt.args['file']}'")
        elif stmt.kind == "mmap" and stmt.args.get("fd") is not None:
            fd, col = stmt.pair("fd")
            if fd not in files and fd not in devices:
                raise err(stmt, f"unknown file or device '{fd}'", col)
        elif stmt.kind == "unpin" and name not in pins:
            raise err(stmt, f"unknown pin '{name}'")
        if stmt.kind == "proc" and stmt.args["of"] not in tasks:
            raise err(stmt, f"unknown task '{stmt.args['of']}'")
        bind = stmt.args.get("bind")
        if isinstance(bind, str):
            bound.add(bind)
            if stmt.kind == "pin":
                pins.add(bind)


def _check_refs(
    path: str,
    stmt: Stmt,
    value: object,
    bound: set[str],
    tasks: set[str],
    devices: set[str],
) -> None:
    if isinstance(value, Addr) and value.name is not None and value.name not in bound:
        raise ScenarioError(path, stmt.line, value.col, f"unknown name '{value.name}'")
    if isinstance(value, Query):
        if value.task is not None and value.task not in tasks:
            raise ScenarioError(path, stmt.line, value.col, f"unknown task '{value.task}'")
        if value.addr is not None:
            _check_refs(path, stmt, value.addr, bound, tasks, devices)
        if value.kind == "var" and value.field not in bound:
            raise ScenarioError(path, stmt.line, value.col, f"unknown name '{value.field}'")
        if value.kind == "free" and value.field not in devices:
            raise ScenarioError(path, stmt.line, value.col, f"unknown device '{value.field}'")


__all__ = ["Num", "ScenarioError", "parse_text"]
