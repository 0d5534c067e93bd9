"""The resource-request language: what parses, what it means, and where errors point."""

from __future__ import annotations

import pytest

from schedulers.request import AvailConstraint, Preference, RequestError, parse_request
from schedulers.units import parse_duration, parse_probability, parse_size
from schedulers.views import NodeView

G = 2**30


def test_the_full_example_parses() -> None:
    r = parse_request(
        "cpus>=2 mem>=4G node in (node1,node2) label=ssd avail(2h)>=0.9 prefer stable"
    )
    assert r.cpus == 2 and r.mem == 4 * G
    assert r.nodes == {"node1", "node2"} and r.labels == {"ssd"}
    assert r.avail == (AvailConstraint(7200.0, 0.9),)
    assert r.prefer == (Preference("stable"),)
    assert r.migratable and r.group is None and r.walltime is None


@pytest.mark.parametrize(
    "text, field, value",
    [
        ("cpus=4", "cpus", 4),
        ("mem=512M", "mem", 512 * 2**20),
        ("mem>=1.5GiB", "mem", int(1.5 * G)),
        ("mem >= 2g", "mem", 2 * G),
        ("time=1h30m", "walltime", 5400.0),
        ("walltime=2d", "walltime", 172800.0),
        ("group=sim42", "group", "sim42"),
        ("migratable=no", "migratable", False),
        ("nomigrate", "migratable", False),
        ("node=n1.example.org", "nodes", frozenset({"n1.example.org"})),
        ("node!=n3", "not_nodes", frozenset({"n3"})),
        ("node not in (a, b)", "not_nodes", frozenset({"a", "b"})),
        ("label in (ssd,nvme)", "any_labels", (frozenset({"ssd", "nvme"}),)),
        ("label!=slow", "not_labels", frozenset({"slow"})),
        ("avail(30m) >= 95%", "avail", (AvailConstraint(1800.0, 0.95),)),
        ("", "cpus", 1),
    ],
)
def test_clauses(text: str, field: str, value: object) -> None:
    assert getattr(parse_request(text), field) == value


def test_separators_and_preferences() -> None:
    r = parse_request("cpus>=2, mem>=1G,group=g prefer same prefer node=n2 prefer idle")
    assert r.cpus == 2 and r.mem == G and r.group == "g"
    assert [p.kind for p in r.prefer] == ["same", "node", "idle"]
    assert r.prefer[1].arg == "n2"
    assert parse_request("group=g prefer any").prefers("spread")


def test_node_clauses_intersect() -> None:
    r = parse_request("node in (a,b,c) node in (b,c,d)")
    assert r.nodes == {"b", "c"}


def test_str_round_trips() -> None:
    for text in (
        "cpus>=2 mem>=4G node in (node1,node2) label=ssd avail(2h)>=0.9 prefer stable",
        "label in (a,b) label not in (c) node not in (x) time=3h group=g prefer spread",
        "migratable=no prefer label=gpu",
    ):
        r = parse_request(text)
        assert parse_request(str(r)) == r


@pytest.mark.parametrize(
    "text, fragment, column",
    [
        ("cpu>=2 mem>=4G", "unknown constraint 'cpu' (did you mean 'cpus'?)", 0),
        ("cpus>=2 mem>=4X", "bad size", 13),
        ("cpus>=0", "cpus is a whole number >= 1", 6),
        ("cpus>=two", "cpus is a whole number >= 1", 6),
        ("cpus<=2", "cpus takes '>=' or '='", 4),
        ("mem>=4G mem>=5G", "'mem' given twice (first at column 1)", 8),
        ("avail(2h)>=1.5", "a probability lies between 0 and 1", 11),
        ("avail(2x)>=0.9", "unknown unit 'x'", 6),
        ("avail 2h>=0.9", "expected '(' after avail", 6),
        ("avail(2h)<=0.9", "avail(T) takes '>='", 9),
        ("node in (a,b", "expected ')' to close the list, found the end", 12),
        ("node in a,b", "expected '(' to open the list", 8),
        ("node ~ a", "node takes '=', '!=', 'in (...)' or 'not in (...)'", 5),
        ("label=ssd label!=ssd", "label ssd both required and excluded", 0),
        ("prefer same", "'prefer same' needs group=NAME", 7),
        ("prefer stabel", "unknown preference 'stabel' (did you mean 'stable'?)", 7),
        ("prefer stable prefer volatile", "contradicts 'prefer stable'", 21),
        ("time=-1h", "bad duration", 5),
        ("node=a node=b", "no node satisfies all the node clauses together", 7),
        ("migratable=maybe", "migratable is yes or no", 11),
        ("cpus>=2 @", "unknown constraint '@'", 8),
        ("mem>=", "expected a size such as 4G, found the end", 5),
    ],
)
def test_errors_point_at_the_offending_part(
    text: str, fragment: str, column: int
) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(text)
    e = info.value
    assert fragment in e.message, e.message
    assert e.column == column, str(e)
    lines = str(e).splitlines()
    assert lines[0].endswith(f"at column {column + 1}")
    assert lines[1] == "  " + text
    caret = lines[2]
    assert caret.index("^") == 2 + column
    assert set(caret.strip()) <= {"^", "~"}


def test_caret_spans_the_token() -> None:
    with pytest.raises(RequestError) as info:
        parse_request("cpus>=2 memory>=4G")
    assert str(info.value).splitlines()[2] == "  " + " " * 8 + "^~~~~~"


def test_units() -> None:
    assert parse_size("4096") == 4096
    assert parse_size("4k") == 4096 and parse_size("1T") == 2**40
    assert parse_duration("250ms") == 0.25 and parse_duration("90") == 90.0
    assert parse_probability("0.5") == 0.5 and parse_probability("50%") == 0.5
    for bad, fn in (
        ("4Q", parse_size),
        ("1h30", parse_duration),
        ("x", parse_probability),
    ):
        with pytest.raises(ValueError):
            fn(bad)  # type: ignore[operator]


def test_check_against_nodes() -> None:
    r = parse_request("cpus>=4 mem>=8G label=ssd node!=bad")
    good = NodeView("a", cpus=8, mem_free=16 * G, labels=frozenset({"ssd"}))
    assert r.check(good) is None
    assert r.check(
        NodeView("bad", cpus=8, mem_free=16 * G, labels=frozenset({"ssd"}))
    ) == (
        "node",
        "excluded by name",
    )
    assert r.check(NodeView("b", cpus=8, mem_free=16 * G))[0] == "label"  # type: ignore[index]
    small = NodeView("c", cpus=2, mem_free=16 * G, labels=frozenset({"ssd"}))
    assert r.check(small) == ("cpus", "2 CPUs < 4 requested")
    rule, reason = r.check(good, mem_free=4 * G)  # type: ignore[misc]
    assert rule == "mem" and reason == "4.0G free < 8.0G requested"
    avail = parse_request("avail(1h)>=0.9")
    assert avail.check(good, p_up=lambda n, h: 0.95) is None
    assert avail.check(good, p_up=lambda n, h: 0.5) == (
        "avail",
        "P(up 1h) = 0.500 < 0.9",
    )
