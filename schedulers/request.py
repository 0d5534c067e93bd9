"""The resource-request language of `ssi submit --require` and DRMAA's native spec.

One request is clauses separated by blanks or commas; hard ones must hold on the node
chosen, `prefer ...` ones weigh among the nodes that pass. Example:

    cpus>=2 mem>=4G node in (node1,node2) label=ssd avail(2h)>=0.9 prefer stable

    cpus>=N | cpus=N               CPUs the job uses (default 1); a node needs that many
    mem>=SIZE | mem=SIZE           memory to reserve: 512M, 4G, 1.5GiB (binary units)
    node=NAME | node!=NAME         a node by name ...
    node in (A,B) | node not in (A,B)
    label=L | label!=L | label in (A,B) | label not in (A,B)
    avail(T)>=P                    P(node stays up for T) >= P: avail(2h)>=0.9, >=90%
    time=T                         expected run time (walltime), used by placement
    group=NAME                     jobs of one group (see prefer same / spread)
    migratable=yes|no              whether balancing may move it (default yes)
    prefer stable | volatile       nodes likely / unlikely to stay up for the job's time
    prefer same | spread           with group=: on one node as the group / apart from it
    prefer idle                    the least loaded among the acceptable nodes
    prefer node=NAME | label=L     soft versions of the hard clauses

A bad request raises RequestError whose str() shows the request with a caret under the
offending part:

    unknown constraint 'cpu' (did you mean 'cpus'?) at column 1
      cpu>=2 mem>=4G
      ^~~
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from schedulers.units import (
    format_duration,
    format_size,
    parse_duration,
    parse_probability,
    parse_size,
)
from schedulers.views import NodeView


class RequestError(ValueError):
    """A request that does not parse or does not make sense, with where."""

    def __init__(self, message: str, text: str, column: int, length: int = 1) -> None:
        self.message = message
        self.text = text
        self.column = column  # 0-based offset into text
        self.length = max(1, length)
        super().__init__(str(self))

    def __str__(self) -> str:
        marker = " " * self.column + "^" + "~" * (self.length - 1)
        return f"{self.message} at column {self.column + 1}\n  {self.text}\n  {marker}"


PREFERENCES = ("stable", "volatile", "same", "spread", "idle", "node", "label")
KEYWORDS = (
    "cpus",
    "mem",
    "node",
    "label",
    "avail",
    "time",
    "group",
    "migratable",
    "prefer",
)


@dataclass(frozen=True, slots=True)
class AvailConstraint:
    horizon: float  # seconds
    p: float

    def __str__(self) -> str:
        return f"avail({format_duration(self.horizon)})>={self.p:g}"


@dataclass(frozen=True, slots=True)
class Preference:
    kind: str  # one of PREFERENCES
    arg: str = ""

    def __str__(self) -> str:
        return f"prefer {self.kind}" + (f"={self.arg}" if self.arg else "")


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request; `Request()` is the empty one (1 CPU, anywhere)."""

    cpus: int = 1
    mem: int = 0
    nodes: frozenset[str] | None = None  # allowed nodes; None: any
    not_nodes: frozenset[str] = frozenset()
    labels: frozenset[str] = frozenset()  # all required
    any_labels: tuple[frozenset[str], ...] = ()  # each: at least one required
    not_labels: frozenset[str] = frozenset()
    avail: tuple[AvailConstraint, ...] = ()
    walltime: float | None = None
    group: str | None = None
    migratable: bool = True
    prefer: tuple[Preference, ...] = ()
    text: str = field(default="", compare=False)

    @property
    def narrows_nodes(self) -> bool:
        """True when names or labels restrict the candidates to an indexable set."""
        return self.nodes is not None or bool(self.labels) or bool(self.any_labels)

    def prefers(self, kind: str) -> bool:
        return any(p.kind == kind for p in self.prefer)

    def check(
        self,
        node: NodeView,
        *,
        mem_free: int | None = None,
        p_up: Callable[[str, float], float] | None = None,
        explain: bool = True,
    ) -> tuple[str, str] | None:
        """(rule, reason) telling why `node` cannot take the job, or None when every
        hard clause holds. Rules: node, label, cpus, mem, avail.

        mem_free: the node's free memory after reservations not yet seen by its
        probe (default node.mem_free); p_up(node, horizon) gives P(up for horizon);
        explain=False leaves the reason empty (cheaper, for counting only).
        """
        if self.nodes is not None and node.name not in self.nodes:
            return "node", "not among the requested nodes"
        if node.name in self.not_nodes:
            return "node", "excluded by name"
        if self.labels and not self.labels <= node.labels:
            if not explain:
                return "label", ""
            missing = ",".join(sorted(self.labels - node.labels))
            return "label", f"lacks label {missing}"
        for group in self.any_labels:
            if not group & node.labels:
                if not explain:
                    return "label", ""
                return "label", f"has none of the labels {','.join(sorted(group))}"
        bad = self.not_labels & node.labels
        if bad:
            if not explain:
                return "label", ""
            return "label", f"has excluded label {','.join(sorted(bad))}"
        if node.cpus < self.cpus:
            if not explain:
                return "cpus", ""
            return "cpus", f"{node.cpus} CPUs < {self.cpus} requested"
        if self.mem:
            free = node.mem_free if mem_free is None else mem_free
            if free < self.mem:
                if not explain:
                    return "mem", ""
                return (
                    "mem",
                    f"{format_size(free)} free < {format_size(self.mem)} requested",
                )
        if self.avail and p_up is not None:
            for a in self.avail:
                p = p_up(node.name, a.horizon)
                if p < a.p:
                    if not explain:
                        return "avail", ""
                    return (
                        "avail",
                        f"P(up {format_duration(a.horizon)}) = {p:.3f} < {a.p:g}",
                    )
        return None

    def __str__(self) -> str:
        parts: list[str] = []
        if self.cpus != 1:
            parts.append(f"cpus>={self.cpus}")
        if self.mem:
            parts.append(f"mem>={format_size(self.mem)}")
        if self.nodes is not None:
            parts.append(f"node in ({','.join(sorted(self.nodes))})")
        if self.not_nodes:
            parts.append(f"node not in ({','.join(sorted(self.not_nodes))})")
        parts += [f"label={lab}" for lab in sorted(self.labels)]
        parts += [f"label in ({','.join(sorted(g))})" for g in self.any_labels]
        if self.not_labels:
            parts.append(f"label not in ({','.join(sorted(self.not_labels))})")
        parts += [str(a) for a in self.avail]
        if self.walltime is not None:
            parts.append(f"time={format_duration(self.walltime)}")
        if self.group:
            parts.append(f"group={self.group}")
        if not self.migratable:
            parts.append("migratable=no")
        parts += [str(p) for p in self.prefer]
        return " ".join(parts)


# --- tokens -----------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<op>>=|<=|!=|==|=|>|<)|(?P<punct>[(),])|(?P<word>[^\s()=<>!,]+)|(?P<bad>\S))"
)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # op | punct | word | bad | end
    text: str
    col: int


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:  # only trailing blanks are left
            break
        kind = m.lastgroup or "bad"
        toks.append(_Tok(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    toks.append(_Tok("end", "", len(text.rstrip())))
    return toks


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0
        self.req = Request(text=text)
        self.seen: dict[str, _Tok] = {}

    # helpers
    def peek(self) -> _Tok:
        return self.toks[self.i]

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def fail(self, message: str, tok: _Tok) -> RequestError:
        return RequestError(message, self.text, tok.col, max(1, len(tok.text)))

    def expect_word(self, what: str) -> _Tok:
        tok = self.next()
        if tok.kind != "word":
            shown = f"'{tok.text}'" if tok.text else "the end"
            raise self.fail(f"expected {what}, found {shown}", tok)
        return tok

    def expect(self, text: str, what: str = "") -> _Tok:
        tok = self.next()
        if tok.text != text:
            shown = f"'{tok.text}'" if tok.text else "the end"
            raise self.fail(f"expected '{text}'{what}, found {shown}", tok)
        return tok

    def value(self, tok: _Tok, conv: Callable[[str], object], what: str) -> object:
        try:
            return conv(tok.text)
        except ValueError as e:
            raise self.fail(f"bad {what}: {e}", tok) from None

    def once(self, key: str, tok: _Tok) -> None:
        if key in self.seen:
            first = self.seen[key]
            raise self.fail(
                f"'{key}' given twice (first at column {first.col + 1})", tok
            )
        self.seen[key] = tok

    def name_list(self) -> frozenset[str]:
        self.expect("(", " to open the list")
        names = [self.expect_word("a name").text]
        while self.peek().text == ",":
            self.next()
            names.append(self.expect_word("a name").text)
        self.expect(")", " to close the list")
        return frozenset(names)

    # grammar
    def parse(self) -> Request:
        while self.peek().kind != "end":
            tok = self.peek()
            if tok.text == ",":
                self.next()
                continue
            if tok.kind != "word":
                raise self.fail(f"expected a constraint, found '{tok.text}'", tok)
            self.clause()
        self.semantics()
        return self.req

    def clause(self) -> None:
        kw = self.next()
        key = kw.text.lower()
        if key == "prefer":
            self.preference(kw)
        elif key == "nomigrate":
            self.once("migratable", kw)
            self.req = replace(self.req, migratable=False)
        elif key in ("cpus", "mem"):
            self.once(key, kw)
            op = self.next()
            if op.text not in ("=", "==", ">="):
                raise self.fail(f"{key} takes '>=' or '=' (a minimum)", op)
            val = self.expect_word(
                "a number of CPUs" if key == "cpus" else "a size such as 4G"
            )
            if key == "cpus":
                if not val.text.isdigit() or int(val.text) < 1:
                    raise self.fail("cpus is a whole number >= 1", val)
                self.req = replace(self.req, cpus=int(val.text))
            else:
                mem = self.value(val, parse_size, "size")
                assert isinstance(mem, int)
                self.req = replace(self.req, mem=mem)
        elif key in ("node", "label"):
            self.membership(kw, key)
        elif key == "avail":
            self.availability(kw)
        elif key in ("time", "walltime"):
            self.once("time", kw)
            self.expect_eq(kw)
            val = self.expect_word("a duration such as 2h")
            t = self.value(val, parse_duration, "duration")
            assert isinstance(t, float)
            if t <= 0:
                raise self.fail("time must be positive", val)
            self.req = replace(self.req, walltime=t)
        elif key == "group":
            self.once("group", kw)
            self.expect_eq(kw)
            self.req = replace(self.req, group=self.expect_word("a group name").text)
        elif key == "migratable":
            self.once("migratable", kw)
            self.expect_eq(kw)
            val = self.expect_word("yes or no")
            if val.text.lower() not in ("yes", "no", "true", "false", "1", "0"):
                raise self.fail("migratable is yes or no", val)
            self.req = replace(
                self.req, migratable=val.text.lower() in ("yes", "true", "1")
            )
        else:
            hint = difflib.get_close_matches(key, KEYWORDS + ("nomigrate",), n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise self.fail(f"unknown constraint '{kw.text}'{extra}", kw)

    def expect_eq(self, kw: _Tok) -> None:
        op = self.next()
        if op.text not in ("=", "=="):
            raise self.fail(f"expected '=' after {kw.text}", op)

    def membership(self, kw: _Tok, key: str) -> None:
        op = self.next()
        r = self.req
        if op.text in ("=", "=="):
            name = self.expect_word(f"a {key} name").text
            if key == "node":
                allowed = frozenset({name}) if r.nodes is None else r.nodes & {name}
                self.check_nonempty(allowed, kw)
                self.req = replace(r, nodes=allowed)
            else:
                self.req = replace(r, labels=r.labels | {name})
        elif op.text == "!=":
            name = self.expect_word(f"a {key} name").text
            if key == "node":
                self.req = replace(r, not_nodes=r.not_nodes | {name})
            else:
                self.req = replace(r, not_labels=r.not_labels | {name})
        elif op.text.lower() == "in":
            names = self.name_list()
            if key == "node":
                allowed = names if r.nodes is None else r.nodes & names
                self.check_nonempty(allowed, kw)
                self.req = replace(r, nodes=allowed)
            else:
                self.req = replace(r, any_labels=r.any_labels + (names,))
        elif op.text.lower() == "not":
            self.expect("in", f" after '{key} not'")
            names = self.name_list()
            if key == "node":
                self.req = replace(r, not_nodes=r.not_nodes | names)
            else:
                self.req = replace(r, not_labels=r.not_labels | names)
        else:
            raise self.fail(f"{key} takes '=', '!=', 'in (...)' or 'not in (...)'", op)

    def check_nonempty(self, allowed: frozenset[str], kw: _Tok) -> None:
        if not allowed:
            raise self.fail("no node satisfies all the node clauses together", kw)

    def availability(self, kw: _Tok) -> None:
        self.expect("(", " after avail, as in avail(2h)>=0.9")
        dtok = self.expect_word("a duration such as 2h")
        horizon = self.value(dtok, parse_duration, "duration")
        assert isinstance(horizon, float)
        if horizon <= 0:
            raise self.fail("the horizon must be positive", dtok)
        self.expect(")", " to close avail(")
        op = self.next()
        if op.text not in (">=", ">"):
            raise self.fail("avail(T) takes '>=' (a minimum probability)", op)
        ptok = self.expect_word("a probability such as 0.9 or 90%")
        p = self.value(ptok, parse_probability, "probability")
        assert isinstance(p, float)
        self.req = replace(
            self.req, avail=self.req.avail + (AvailConstraint(horizon, p),)
        )

    def preference(self, kw: _Tok) -> None:
        tok = self.expect_word("a preference (" + ", ".join(PREFERENCES) + ")")
        kind = tok.text.lower()
        if kind == "any":  # "same vs any node for a group": any is the default
            kind = "spread"
        if kind not in PREFERENCES:
            hint = difflib.get_close_matches(kind, PREFERENCES, n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise self.fail(f"unknown preference '{tok.text}'{extra}", tok)
        arg = ""
        if kind in ("node", "label"):
            self.expect_eq(tok)
            arg = self.expect_word(f"a {kind} name").text
        pref = Preference(kind, arg)
        opposite = {"stable": "volatile", "volatile": "stable", "same": "spread"}
        opposite["spread"] = "same"
        if kind in opposite and self.req.prefers(opposite[kind]):
            raise self.fail(
                f"'prefer {kind}' contradicts 'prefer {opposite[kind]}'", tok
            )
        self.seen.setdefault(f"prefer {kind}", tok)
        self.req = replace(self.req, prefer=self.req.prefer + (pref,))

    def semantics(self) -> None:
        r = self.req
        for kind in ("same", "spread"):
            if r.prefers(kind) and not r.group:
                tok = self.seen[f"prefer {kind}"]
                raise self.fail(f"'prefer {kind}' needs group=NAME", tok)
        if r.nodes is not None and r.nodes <= r.not_nodes:
            raise self.fail(
                "every allowed node is also excluded",
                self.seen.get("node", self.toks[0]),
            )
        clash = r.labels & r.not_labels
        if clash:
            raise RequestError(
                f"label {','.join(sorted(clash))} both required and excluded",
                self.text,
                0,
                len(self.text),
            )


def parse_request(text: str) -> Request:
    """Parses a request; raises RequestError pointing at the offending part."""
    return _Parser(text).parse()
