"""Plugin discovery through entry points: the built-ins, a third party's tiny package
installed in a temp dir (found by a fresh interpreter), and API version refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import ClassVar

import pytest

from schedulers.api import API_VERSION, GROUP_FILTERS, GROUP_POLICIES, GROUP_PROBES
from schedulers.base import PolicyBase
from schedulers.loader import (
    PluginError,
    PluginVersionError,
    check_plugin,
    discover,
    instantiate,
    load,
)
from schedulers.params import ParamError

BUILTIN = {
    GROUP_PROBES: {"cpu_load", "memory", "io", "network", "boot", "job"},
    GROUP_FILTERS: {"ewma", "rate_limit", "threshold", "remote_cache"},
    GROUP_POLICIES: {
        "round_robin",
        "least_loaded",
        "memory_aware",
        "mosix",
        "io_aware",
        "availability_aware",
    },
}


@pytest.mark.parametrize("group", sorted(BUILTIN))
def test_builtins_are_entry_points_like_any_other(group: str) -> None:
    found = discover(group)
    assert BUILTIN[group] <= set(found)
    for name in BUILTIN[group]:
        info = found[name]
        assert info.ok, info.error
        assert info.api_version == API_VERSION
        assert info.dist.startswith("ssi ") and info.target.startswith("schedulers.")
        assert info.summary  # the first line of its docstring
        assert load(group, name).name == name  # type: ignore[attr-defined]


def test_instantiate_configures_and_validates() -> None:
    mx = instantiate(GROUP_POLICIES, "mosix", stab_factor="1.5", interval="500ms")
    assert mx.params()["stab_factor"] == 1.5  # type: ignore[attr-defined]
    assert mx.params()["interval"] == 0.5  # type: ignore[attr-defined]
    with pytest.raises(ParamError, match="is not one of jobs, node"):
        instantiate(GROUP_POLICIES, "least_loaded", load_source="cpu")
    ewma = instantiate(GROUP_FILTERS, "ewma", tau="10s")
    assert ewma.feed(0.0, 0.0) == 0.0  # type: ignore[attr-defined]
    with pytest.raises(PluginError, match="no ssi.policies plugin named 'nope'"):
        load(GROUP_POLICIES, "nope")


def _write_dist(
    site: Path, dist: str, version: str, module: str, code: str, eps: str
) -> None:
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(textwrap.dedent(code))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
    )
    (info / "entry_points.txt").write_text(textwrap.dedent(eps))
    (info / "RECORD").write_text("")


TINY = """
    '''A third party's policy: the node whose name sorts last.'''
    from typing import ClassVar

    from schedulers.base import PolicyBase


    class Tiny(PolicyBase):
        '''The node whose name sorts last.

        Example: nodes a, b, c -> c, always (if it fits).
        '''

        name: ClassVar[str] = "tiny"

        def index_key(self, cluster, node):
            return -float(sorted(cluster.nodes).index(node))
"""

FANCY = """
    from typing import ClassVar

    from schedulers.base import PolicyBase


    class Fancy(PolicyBase):
        '''Built for a future scheduler API.'''

        name: ClassVar[str] = "fancy"
        api_version: ClassVar[int] = 2
"""

BROKEN = """
    raise RuntimeError("this plugin cannot even import")
"""

PROBE = """
    from dataclasses import dataclass
    from typing import ClassVar


    @dataclass(frozen=True)
    class GpuSample:
        gpus: int
        busy: float


    class GpuProbe:
        '''GPUs of this node (a fake one).'''

        name: ClassVar[str] = "gpu"
        api_version: ClassVar[int] = 1

        def sample(self, now):
            return GpuSample(gpus=2, busy=0.25)
"""

CHILD = """
import json
from schedulers.loader import discover, load, PluginVersionError
from schedulers.probes.sampler import NodeSampler, view_from_report
from schedulers.request import parse_request
from schedulers.scheduler import Scheduler
from schedulers.views import JobRequest, NodeView

out = {}
found = discover("ssi.policies")
out["policies"] = {n: [i.ok, i.dist, i.error, i.summary] for n, i in found.items()}
s = Scheduler(policy="tiny")
for n in ("a", "b", "c"):
    s.cluster.upsert_node(NodeView(n, cpus=2))
out["placed"] = s.place(JobRequest("1", parse_request("")), 0.0).node
out["placed_fit"] = s.place(JobRequest("2", parse_request("node in (a,b)")), 0.0).node
try:
    load("ssi.policies", "fancy")
except PluginVersionError as e:
    out["refused"] = str(e)
try:
    s.set_policy("fancy")
except PluginVersionError as e:
    out["set_refused"] = str(e)
out["still"] = s.policy_name
sampler = NodeSampler([load("ssi.probes", "gpu")()])
report = sampler.sample(1.0)
out["extra"] = view_from_report("a", report).extra
print(json.dumps(out))
"""


def test_third_party_package_is_discovered_and_mismatch_refused(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _write_dist(
        site,
        "tiny-policy",
        "0.1",
        "tiny_policy",
        TINY,
        "[ssi.policies]\ntiny = tiny_policy:Tiny\n",
    )
    _write_dist(
        site,
        "fancy-policy",
        "0.3",
        "fancy_policy",
        FANCY,
        "[ssi.policies]\nfancy = fancy_policy:Fancy\n",
    )
    _write_dist(
        site,
        "broken-policy",
        "1.0",
        "broken_policy",
        BROKEN,
        "[ssi.policies]\nbroken = broken_policy:X\n",
    )
    _write_dist(
        site,
        "gpu-probe",
        "0.1",
        "gpu_probe",
        PROBE,
        "[ssi.probes]\ngpu = gpu_probe:GpuProbe\n",
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    pol = out["policies"]
    assert pol["tiny"] == [
        True,
        "tiny-policy 0.1",
        "",
        "The node whose name sorts last.",
    ]
    assert {"mosix", "least_loaded"} <= set(pol)  # the built-ins are still there
    ok, dist, error, _ = pol["fancy"]
    assert not ok and dist == "fancy-policy 0.3" and "API 2" in error
    ok, _, error, _ = pol["broken"]
    assert not ok and "RuntimeError: this plugin cannot even import" in error
    assert out["placed"] == "c" and out["placed_fit"] == "b"
    refused = out["refused"]
    assert refused == (
        "ssi.policies plugin 'fancy' (fancy_policy:Fancy, from fancy-policy 0.3) was"
        " built for scheduler API 2, but this ssi provides API 1: refusing to load"
        " it. Install a release of fancy-policy built for API 1, or an ssi that"
        " provides API 2."
    )
    assert out["set_refused"] == refused and out["still"] == "tiny"
    assert out["extra"] == {"gpu.gpus": 2.0, "gpu.busy": 0.25}


def test_check_plugin_refuses_misfits() -> None:
    class NoVersion:
        name = "x"

    class WrongName(PolicyBase):
        name: ClassVar[str] = "other"

    class NotAPolicy:
        name: ClassVar[str] = "x"
        api_version: ClassVar[int] = API_VERSION

    with pytest.raises(PluginVersionError, match="does not state api_version"):
        check_plugin(NoVersion, GROUP_POLICIES, "x")
    with pytest.raises(PluginError, match="declares name 'other'"):
        check_plugin(WrongName, GROUP_POLICIES, "x")
    with pytest.raises(PluginError, match="lacks place, rebalance"):
        check_plugin(NotAPolicy, GROUP_POLICIES, "x")
    with pytest.raises(PluginError, match="lacks sample or sample_job"):
        check_plugin(NotAPolicy, GROUP_PROBES, "x")
    with pytest.raises(PluginError, match="is not a class"):
        check_plugin(object(), GROUP_POLICIES, "x")
