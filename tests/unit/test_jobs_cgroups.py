"""ssi.jobs.cgroups without root: mountinfo parsing, detection, and both drivers' file
operations against a fake hierarchy of plain files in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssi.jobs import cgroups as cg
from ssi.jobs.cgroups import CgroupV1, CgroupV2, Mount, detect, mounts, proc_cgroup

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
COMBINED = """\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
37 31 0:34 /docker/abc /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
"""
PURE_V2 = """\
25 1 0:22 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate
30 1 0:40 / /mnt/with\\040space rw - cgroup2 cgroup2 rw
"""


def write(tmp: Path, text: str) -> str:
    path = tmp / "mountinfo"
    path.write_text(text)
    return str(path)


def test_mounts_parses_v1_and_v2(tmp_path: Path) -> None:
    found = mounts(write(tmp_path, HYBRID))
    assert [m.point.name for m in found] == [
        "cpu", "cpuacct", "memory", "freezer", "pids", "systemd", "unified"
    ]  # fmt: skip
    assert found[0].controllers == {"cpu"} and found[0].fstype == "cgroup"
    assert found[5].controllers == {"name=systemd"}  # mount options are not controllers
    assert found[6].fstype == "cgroup2" and found[6].controllers == frozenset()
    v2 = mounts(write(tmp_path, PURE_V2))
    assert v2[1].point == Path("/mnt/with space")


def test_detect_prefers_a_v1_freezer_and_names_paths(tmp_path: Path) -> None:
    c = detect("ssi", write(tmp_path, HYBRID))
    assert isinstance(c, CgroupV1) and c.version == 1
    assert set(c.controllers()) == {"cpu", "cpuacct", "memory", "freezer", "pids"}
    assert c.path("17") == "/ssi/17"
    assert c.freezer_dir("17") == Path("/sys/fs/cgroup/freezer/ssi/17")
    assert len(c.dirs("17")) == 5


def test_detect_pure_v2(tmp_path: Path) -> None:
    c = detect("ssi", write(tmp_path, PURE_V2))
    assert isinstance(c, CgroupV2) and c.version == 2
    assert c.mount.point == Path("/sys/fs/cgroup")
    assert c.dirs("j") == [Path("/sys/fs/cgroup/ssi/j")]
    assert c.controllers() == {"": "/"}


def test_detect_combined_mounts_and_a_container_root(tmp_path: Path) -> None:
    c = detect("ssi", write(tmp_path, COMBINED))
    assert isinstance(c, CgroupV1)
    assert c.hierarchies["cpu"] is c.hierarchies["cpuacct"]
    assert len(c.dirs("j")) == 2  # one directory per mount, not per controller
    assert c.path("j") == "/docker/abc/ssi/j"


def test_detect_without_cgroups(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="no cgroup"):
        detect("ssi", write(tmp_path, "31 23 0:28 / /sys rw - sysfs sysfs rw\n"))


@pytest.mark.parametrize("bad", ["", "../x", ".hidden", "a/b", "-x", "x" * 129])
def test_names_are_one_safe_path_component(bad: str) -> None:
    with pytest.raises(ValueError):
        cg.check_name("job id", bad)
    with pytest.raises(ValueError):
        CgroupV1(
            "ssi", {"freezer": Mount(Path("/x"), "/", "cgroup", frozenset())}
        ).path(bad)


# --- v1 driver on a fake hierarchy ------------------------------------------------


@pytest.fixture
def v1(tmp_path: Path) -> CgroupV1:
    hier = {}
    for ctrl in ("cpuacct", "memory", "freezer"):
        (tmp_path / ctrl).mkdir()
        hier[ctrl] = Mount(tmp_path / ctrl, "/", "cgroup", frozenset({ctrl}))
    return CgroupV1("ssi", hier)


def fill(d: Path, **files: str) -> None:
    for name, text in files.items():
        (d / name.replace("_", ".", 1)).write_text(text)


def test_v1_create_add_pids_and_ids(v1: CgroupV1, tmp_path: Path) -> None:
    v1.create("j1")
    assert all(d.is_dir() for d in v1.dirs("j1")) and v1.exists("j1")
    for d in v1.dirs("j1"):
        fill(d, cgroup_procs="")
    v1.add("j1", 42)
    assert (tmp_path / "memory/ssi/j1/cgroup.procs").read_text() == "42"
    (tmp_path / "freezer/ssi/j1/cgroup.procs").write_text("7\n3\n7\n")
    assert v1.pids("j1") == [3, 7] and v1.contains("j1", 7)
    v1.create("j2")
    assert v1.job_ids() == ["j1", "j2"]
    assert v1.pids("nope") == []


def test_v1_freezer_waits_for_the_state(v1: CgroupV1, tmp_path: Path) -> None:
    v1.create("j")
    state = tmp_path / "freezer/ssi/j/freezer.state"
    state.write_text("THAWED\n")
    assert not v1.frozen("j")
    v1.freeze("j")  # a plain file reads back what was written: FROZEN
    assert state.read_text().strip() == "FROZEN" and v1.frozen("j")
    v1.thaw("j")
    assert not v1.frozen("j")


def test_v1_freezer_times_out_naming_the_file(
    v1: CgroupV1, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1.create("j")
    state = tmp_path / "freezer/ssi/j/freezer.state"
    state.write_text("THAWED")
    monkeypatch.setattr(cg, "_write", lambda path, value: None)  # never freezes
    with pytest.raises(TimeoutError, match="freezer.state still THAWED"):
        v1.freeze("j", timeout=0.05)


def test_v1_usage(v1: CgroupV1, tmp_path: Path) -> None:
    v1.create("j")
    fill(tmp_path / "cpuacct/ssi/j", cpuacct_usage="2500000000\n")
    fill(tmp_path / "memory/ssi/j", memory_usage_in_bytes="4096\n")
    fill(tmp_path / "freezer/ssi/j", cgroup_procs="1\n2\n")
    assert v1.usage("j") == cg.CgroupUsage(2.5, 4096, 2)


def test_v1_remove_retries_busy_then_names_the_dir(
    v1: CgroupV1, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1.create("j")
    v1.remove("j")
    assert not v1.exists("j")
    v1.remove("j")  # gone already: fine
    v1.create("k")
    (tmp_path / "memory/ssi/k/leftover").write_text("")  # a plain dir: ENOTEMPTY
    with pytest.raises(OSError, match="rmdir .*memory/ssi/k"):
        v1.remove("k", timeout=0.05)


# --- v2 driver on a fake hierarchy ------------------------------------------------


@pytest.fixture
def v2(tmp_path: Path) -> CgroupV2:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    return CgroupV2("ssi", Mount(tmp_path, "/", "cgroup2", frozenset()))


def test_v2_create_enables_controllers_for_jobs(
    v2: CgroupV2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[str, str]] = []
    real = cg._write

    def record(path: Path, value: str) -> None:
        writes.append((str(path.relative_to(tmp_path)), value))
        real(path, value)

    monkeypatch.setattr(cg, "_write", record)
    # The kernel fills a new cgroup with its files; the fake base gets them by hand.
    orig_setup = v2._setup_base

    def setup(base: Path) -> None:
        (base / "cgroup.controllers").write_text("cpu memory pids\n")
        (base / "cgroup.subtree_control").write_text("")
        orig_setup(base)

    monkeypatch.setattr(v2, "_setup_base", setup)
    v2.create("j")
    assert (tmp_path / "ssi/j").is_dir()
    assert ("cgroup.subtree_control", "+cpu") in writes
    assert ("ssi/cgroup.subtree_control", "+memory") in writes
    assert ("ssi/cgroup.subtree_control", "+pids") in writes
    assert not any(v == "+io" for _, v in writes)  # only what jobs are accounted by


def test_v2_freeze_waits_for_cgroup_events(v2: CgroupV2, tmp_path: Path) -> None:
    v2.create("j")
    d = tmp_path / "ssi/j"
    (d / "cgroup.freeze").write_text("0")
    (d / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    v2.freeze("j")
    assert (d / "cgroup.freeze").read_text() == "1" and v2.frozen("j")
    with pytest.raises(TimeoutError, match="cgroup.events not frozen 0"):
        v2.thaw("j", timeout=0.05)  # the fake kernel never thaws
    (d / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    v2.thaw("j")
    assert not v2.frozen("j")


def test_v2_usage_and_kill(v2: CgroupV2, tmp_path: Path) -> None:
    v2.create("j")
    d = tmp_path / "ssi/j"
    (d / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\n")
    (d / "memory.current").write_text("8192\n")
    (d / "cgroup.procs").write_text("5\n")
    assert v2.usage("j") == cg.CgroupUsage(1.5, 8192, 1)
    (d / "cgroup.kill").write_text("")
    v2.kill("j")
    assert (d / "cgroup.kill").read_text() == "1"


def test_v2_usage_without_controllers(v2: CgroupV2, tmp_path: Path) -> None:
    v2.create("j")
    assert v2.usage("j") == cg.CgroupUsage(None, None, 0)


def test_proc_cgroup(tmp_path: Path) -> None:
    (tmp_path / "9").mkdir()
    (tmp_path / "9/cgroup").write_text(
        "4:memory:/ssi/7\n2:cpu,cpuacct:/ssi/7\n1:name=systemd:/\n0::/\n"
    )
    got = proc_cgroup(9, proc=str(tmp_path))
    assert got == {
        "memory": "/ssi/7", "cpu": "/ssi/7", "cpuacct": "/ssi/7",
        "name=systemd": "/", "": "/",
    }  # fmt: skip
