"""Probes measured for real on this machine (no mocked /proc): plausible values, and
values that move when we make them move. Filters on plain numbers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from schedulers.filters import run_chain
from schedulers.filters.ewma import Ewma
from schedulers.filters.rate_limit import RateLimit
from schedulers.filters.remote_cache import RemoteCache
from schedulers.filters.threshold import Threshold
from schedulers.probes._proc import read_psi
from schedulers.probes.boot import BootProbe
from schedulers.probes.cpu import CpuLoadProbe
from schedulers.probes.io import IoProbe
from schedulers.probes.job import JobProbe, pids_of_cgroup
from schedulers.probes.memory import MemoryProbe
from schedulers.probes.network import NetworkProbe
from schedulers.probes.sampler import NodeSampler, view_from_report
from schedulers.views import NodeState

BURN = "import time\nend = time.time() + {secs}\nwhile time.time() < end: pass\n"
EAT = (
    "import time\n"
    "chunks = []\n"
    "end = time.time() + {secs}\n"
    "while time.time() < end:\n"
    "    chunks.append(bytearray(4 << 20))  # 4 MiB, zero-filled: touched\n"
    "    t = time.time() + 0.05\n"
    "    while time.time() < t: pass\n"
    "time.sleep(30)\n"
)


def test_cpu_load_probe_sees_a_busy_process() -> None:
    probe = CpuLoadProbe()
    probe.configure(tau="1s")
    first = probe.sample(time.monotonic())
    assert first.cpus == len(os.sched_getaffinity(0)) and first.speed > 0
    assert first.load == pytest.approx(first.loadavg1)  # the decayed load starts there
    child = subprocess.Popen([sys.executable, "-c", BURN.format(secs=2.0)])
    try:
        samples = []
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            time.sleep(0.1)
            samples.append(probe.sample(time.monotonic()))
    finally:
        child.wait()
    last = samples[-1]
    assert 0.0 <= last.utilization <= 1.0
    # One of the two CPUs burning for 1.5 s: at least ~a third of the machine busy,
    # and the run queue seen non-empty at some samples.
    assert max(s.utilization for s in samples) > 0.3
    assert max(s.runnable for s in samples) >= 1
    assert last.norm_load == pytest.approx(last.load / (last.cpus * last.speed))


def test_memory_probe_matches_the_kernel() -> None:
    s = MemoryProbe().sample(time.monotonic())
    vm = psutil.virtual_memory()
    assert s.total == vm.total
    assert 0 < s.available <= s.total
    assert abs(s.available - vm.available) < 256 * 2**20
    assert 0.0 <= s.pressure_some <= 100.0 and 0.0 <= s.pressure_full <= 100.0
    assert s.psi == Path("/proc/pressure/memory").exists()


def test_psi_reader() -> None:
    if not Path("/proc/pressure/io").exists():
        pytest.skip("no PSI in this kernel")
    psi = read_psi("io")
    assert psi is not None and psi.some_total_us >= 0 and 0 <= psi.some10 <= 100
    assert read_psi("nonexistent") is None


def test_io_probe_sees_writes(tmp_path: Path) -> None:
    probe = IoProbe()
    t0 = time.monotonic()
    first = probe.sample(t0)
    assert first.read_bps == 0.0 and first.write_bps == 0.0  # primes
    assert first.disks >= 1
    data = os.urandom(1 << 20)
    with open(tmp_path / "blob", "wb") as f:
        for _ in range(32):
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    time.sleep(0.2)
    s = probe.sample(time.monotonic())
    assert s.write_bps > 1e6  # 32 MiB hit the disk within well under 30 s
    assert 0.0 <= s.busy <= 1.0 and s.read_bps >= 0


def test_network_probe_is_plausible() -> None:
    probe = NetworkProbe()
    probe.sample(time.monotonic())
    time.sleep(0.1)
    s = probe.sample(time.monotonic())
    assert s.rx_bps >= 0 and s.tx_bps >= 0 and s.capacity_bps >= 0
    assert s.interfaces == len(
        [n for n in psutil.net_io_counters(pernic=True) if n != "lo"]
    )


def test_boot_probe_agrees_with_psutil() -> None:
    s = BootProbe().sample(time.time())
    assert s.boot_time == pytest.approx(psutil.boot_time(), abs=2.0)
    assert s.uptime > 0


def test_job_probe_measures_cpu_rss_and_dirty_rate() -> None:
    child = subprocess.Popen([sys.executable, "-c", EAT.format(secs=1.5)])
    try:
        probe = JobProbe(tau=0.5)
        time.sleep(0.2)
        t0 = time.monotonic()
        first = probe.sample_job("j1", [child.pid], t0)
        assert first.pids == 1 and first.threads >= 1
        assert first.cpu_usage == 0.0 and first.dirty_rate == 0.0  # primes
        time.sleep(1.0)
        s = probe.sample_job("j1", [child.pid], time.monotonic())
        # ~95% of its time spinning: most of a core (the machine has 2, shared)
        assert 0.3 < s.cpu_usage < 1.3
        assert 0.0 < s.cpu_demand <= 1.0
        # ~80 MiB/s of fresh pages for a second
        assert s.rss > s.dirty_bytes > 32 * 2**20
        assert s.dirty_rate > 20 * 2**20
        gone = probe.sample_job("j1", [child.pid, 999_999_999], time.monotonic())
        assert gone.pids == 1  # a vanished pid is skipped
    finally:
        child.kill()
        child.wait()
    probe.forget("j1")


def test_pids_of_cgroup_finds_us() -> None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        root = Path("/sys/fs/cgroup")
        if hid == "0":
            where = root / "unified" if (root / "unified").is_dir() else root
        elif "memory" in controllers.split(","):
            where = root / "memory"
        else:
            continue
        cg = where / path.lstrip("/")
        if (cg / "cgroup.procs").exists():
            pids = pids_of_cgroup(cg)
            if os.getpid() in pids:
                return
    pytest.skip("no readable cgroup holding this process")


def test_node_sampler_report_makes_a_node_view() -> None:
    sampler = NodeSampler.default()
    t = time.time()
    sampler.sample(t)
    time.sleep(0.2)
    report = sampler.sample(t + 0.2)
    for key in ("cpus", "cpu_speed", "load", "mem_total", "mem_free", "io_busy"):
        assert key in report
    assert report["cpus"] == len(os.sched_getaffinity(0))
    view = view_from_report(
        "me", report, labels=["ssd"], job_demand=100.0, state=NodeState.DRAINING
    )
    assert view.name == "me" and view.labels == {"ssd"} and not view.accepts_jobs
    assert view.background_load == 0.0  # never negative
    assert view.mem_total == psutil.virtual_memory().total
    assert view.up_since == pytest.approx(psutil.boot_time(), abs=2.0)
    assert view_from_report("me", {**report, "from_the_future": 1}).name == "me"


def test_filters() -> None:
    e = Ewma()
    e.configure(tau="10s")
    assert e.feed(0.0, 0.0) == 0.0
    assert e.feed(4.0, 10.0) == pytest.approx(4 * (1 - 2.718281828**-1), rel=1e-6)
    r = RateLimit()
    r.configure(period=2)
    assert [r.feed(1.0, t) for t in (0, 0.5, 1.9, 2.1, 3)] == [
        1.0,
        None,
        None,
        1.0,
        None,
    ]
    th = Threshold()
    th.configure(delta=0.1, max_silence=30)
    got = [
        th.feed(v, t)
        for v, t in ((1.0, 0), (1.05, 1), (1.12, 2), (1.15, 3), (1.15, 33))
    ]
    assert got == [1.0, None, 1.12, None, 1.15]
    c = RemoteCache()
    c.configure(ttl=5)
    c.feed(0.7, 10.0)
    assert c.get(12.0) == 0.7 and c.get(16.0) is None
    th2 = Threshold()
    assert run_chain([Ewma(), th2], 5.0, 0.0) == 5.0
    assert run_chain([Ewma(), th2], 5.01, 1.0) is None
