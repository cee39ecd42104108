"""Parser of the scenario language (SCENARIO.md, contract version 1).

Turns text into a list of :class:`Stmt` with positions; every mistake is a
:class:`ScenarioError` carrying FILE:LINE:COL. Names and tasks are checked statically: a name
never bound, a task used before `task`/`fork` or after `exit`, a reused task name, or a size
compared with a page-counted query are input errors (exit status 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from foliosim.kernel.madvise import ADVICES as MADVISE_ADVICES

SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
NUMBER_RE = re.compile(r"^(0[xX][0-9a-fA-F]+|[0-9]+)([KMGT]?)$")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
OPERATORS = ("==", "!=", "<=", ">=", "<", ">")
PROTS = ("r", "rw", "rx", "rwx", "none")
ADVICES = MADVISE_ADVICES
PROC_FILES = ("status", "maps", "smaps", "smaps_rollup", "pagemap", "numa_maps")
FOLIO_FIELDS = (
    "refcount",
    "mapcount",
    "entire_mapcount",
    "large_mapcount",
    "nr_pages_mapped",
    "entirely_mapped",
    "pincount",
    "order",
    "nr_pages",
    "dirty",
    "referenced",
    "anon",
    "zone_device",
    "zero",
    "pfn",
    "maybe_mapped_shared",
    "deferred",
    "partially_mapped",
)
PAGE_FIELDS = ("mapcount", "precise_mapcount", "anon_exclusive", "written")
PAGE_COUNTED_FOLIO = ("nr_pages", "nr_pages_mapped")


class ScenarioError(Exception):
    """Bad input: reported as FILE:LINE:COL: message, exit status 2."""

    def __init__(self, path: str, line: int, col: int, message: str) -> None:
        super().__init__(f"{path}:{line}:{col}: {message}")
        self.path, self.line, self.col, self.message = path, line, col, message


@dataclass
class Tok:
    text: str
    col: int
    quoted: bool = False


@dataclass
class Num:
    """A number as written: its value and whether it carried a size suffix."""

    value: int
    sized: bool
    col: int


@dataclass
class Addr:
    """An address expression: NAME, NAME+SIZE, NAME-SIZE or a number."""

    name: str | None
    offset: int
    col: int


@dataclass
class Query:
    kind: str  # rss, errno, signal, var, level, folio, page, vmstat, free, global_errno, warnings
    task: str | None = None
    addr: Addr | None = None
    field: str = ""
    col: int = 0
    line: int = 0

    def page_counted(self) -> bool:
        return self.kind in ("rss", "free") or (
            self.kind == "folio" and self.field in PAGE_COUNTED_FOLIO
        )

    def text(self) -> str:
        if self.kind == "rss":
            return f"{self.task}.rss.{self.field}"
        if self.kind in ("errno", "signal"):
            return f"{self.task}.{self.kind}"
        if self.kind == "var":
            return f"{self.task}.{self.field}"
        if self.kind == "level":
            return f"level({self.task}, {_addr_text(self.addr)})"
        if self.kind in ("folio", "page"):
            return f"{self.kind}({self.task}, {_addr_text(self.addr)}).{self.field}"
        if self.kind == "vmstat":
            return f"vmstat.{self.field}"
        if self.kind == "free":
            return f"free({self.field})"
        return self.kind if self.kind != "global_errno" else "errno"


def _addr_text(addr: Addr | None) -> str:
    if addr is None:
        return "?"
    if addr.name is None:
        return hex(addr.offset)
    if addr.offset:
        return f"{addr.name}{'+' if addr.offset > 0 else '-'}{abs(addr.offset):#x}"
    return addr.name


Value = Query | Num | str


@dataclass
class Stmt:
    line: int
    col: int
    kind: str
    task: str | None = None
    args: dict[str, object] = field(default_factory=dict)
    source: str = ""

    def num(self, key: str) -> int:
        """An argument that is a number (a Num as written, or a plain int)."""
        value = self.args[key]
        if isinstance(value, Num):
            return value.value
        if isinstance(value, int):
            return value
        raise TypeError(f"{key} is not a number")

    def pair(self, key: str) -> tuple[str, int]:
        """A (text, column) argument such as fs= or fd=."""
        value = self.args[key]
        assert isinstance(value, tuple)
        return str(value[0]), int(value[1])

    def addr(self, key: str) -> Addr | None:
        value = self.args.get(key)
        return value if isinstance(value, Addr) else None


def tokenize(path: str, lineno: int, text: str) -> list[Tok]:
    """Split a line into tokens; `#` starts a comment outside quotes."""
    toks: list[Tok] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in " \t\r":
            i += 1
            continue
        if c == "#":
            break
        if c == '"':
            j = text.find('"', i + 1)
            if j < 0:
                raise ScenarioError(path, lineno, i + 1, "unterminated string")
            toks.append(Tok(text[i + 1 : j], i + 1, quoted=True))
            i = j + 1
            continue
        if c in "(),:":
            toks.append(Tok(c, i + 1))
            i += 1
            continue
        two = text[i : i + 2]
        if two in ("==", "!=", "<=", ">="):
            toks.append(Tok(two, i + 1))
            i += 2
            continue
        if c in "<>":
            toks.append(Tok(c, i + 1))
            i += 1
            continue
        j = i
        while j < n and text[j] not in ' \t\r#"(),:<>' and text[j : j + 2] not in ("==", "!="):
            j += 1
        if j == i:
            raise ScenarioError(path, lineno, i + 1, f"unexpected character {c!r}")
        toks.append(Tok(text[i:j], i + 1))
        i = j
    return toks


class LineParser:
    """Recursive-descent parsing of one statement's tokens."""

    def __init__(self, path: str, line: int, toks: list[Tok], text: str) -> None:
        self.path, self.line, self.toks, self.pos, self.text = path, line, toks, 0, text

    def error(self, msg: str, col: int | None = None) -> ScenarioError:
        if col is None:
            col = (
                self.toks[self.pos].col
                if self.pos < len(self.toks)
                else len(self.text.rstrip()) + 1
            )
        return ScenarioError(self.path, self.line, col, msg)

    def peek(self) -> Tok | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def next(self, what: str) -> Tok:
        tok = self.peek()
        if tok is None:
            raise self.error(f"expected {what}")
        self.pos += 1
        return tok

    def expect(self, text: str) -> Tok:
        tok = self.next(f"'{text}'")
        if tok.text != text or tok.quoted:
            raise self.error(f"expected '{text}', found '{tok.text}'", tok.col)
        return tok

    def done(self) -> None:
        tok = self.peek()
        if tok is not None:
            raise self.error(f"unexpected '{tok.text}'", tok.col)

    def name(self, what: str) -> Tok:
        tok = self.next(what)
        if tok.quoted or not NAME_RE.match(tok.text):
            raise self.error(f"expected {what}, found '{tok.text}'", tok.col)
        return tok

    def number(self, what: str) -> Num:
        tok = self.next(what)
        return parse_number(self, tok.text, tok.col, what)

    def addr(self) -> Addr:
        tok = self.next("an address")
        return parse_addr(self, tok)


def size_value(text: str) -> int | None:
    """A decimal or 0x number with an optional K/M/G/T suffix, or None."""
    m = NUMBER_RE.match(text)
    if not m:
        return None
    digits = m.group(1)
    base = int(digits, 16) if digits[:2].lower() == "0x" else int(digits, 10)
    return base * SUFFIXES.get(m.group(2), 1)


def parse_number(p: LineParser, text: str, col: int, what: str) -> Num:
    m = NUMBER_RE.match(text)
    if not m:
        raise p.error(f"bad number '{text}' for {what}", col)
    digits = m.group(1)
    base = int(digits, 16) if digits[:2].lower() == "0x" else int(digits, 10)
    suffix = m.group(2)
    return Num(base * SUFFIXES.get(suffix, 1), bool(suffix), col)


def parse_addr(p: LineParser, tok: Tok) -> Addr:
    text = tok.text
    if tok.quoted:
        raise p.error("expected an address", tok.col)
    if NUMBER_RE.match(text):
        return Addr(None, parse_number(p, text, tok.col, "an address").value, tok.col)
    m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(?:([+-])(.+))?$", text)
    if not m:
        raise p.error(f"bad address '{text}'", tok.col)
    offset = 0
    if m.group(2):
        off_col = tok.col + len(m.group(1)) + 1
        offset = parse_number(p, m.group(3), off_col, "an offset").value
        if m.group(2) == "-":
            offset = -offset
    return Addr(m.group(1), offset, tok.col)


def parse_kv(p: LineParser, allowed: dict[str, str]) -> dict[str, tuple[str, int]]:
    """KEY=VALUE words; ``allowed`` maps key -> description."""
    out: dict[str, tuple[str, int]] = {}
    while p.peek() is not None:
        tok = p.next("KEY=VALUE")
        if "=" not in tok.text:
            raise p.error(f"expected KEY=VALUE, found '{tok.text}'", tok.col)
        key, _, value = tok.text.partition("=")
        # The tokenizer splits at ':' and ','; a value such as mthp=64K:always,32K:never is
        # glued back from the tokens that follow without whitespace in between.
        end = tok.col + len(tok.text)
        while (nxt := p.peek()) is not None and not nxt.quoted and nxt.col == end:
            p.next("KEY=VALUE")
            value += nxt.text
            end = nxt.col + len(nxt.text)
        if key not in allowed and not key.startswith("CONFIG_"):
            raise p.error(f"unknown key '{key}'", tok.col)
        if key in out:
            raise p.error(f"'{key}' given twice", tok.col)
        out[key] = (value, tok.col + len(key) + 1)
    return out
