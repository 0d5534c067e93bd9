"""NodeSampler: the agent's side of the probes; view_from_report: the coordinator's.

The agent calls sample(now) every period; each field goes through its filter chain
(default: none) and the report holds the latest published value of every field, keyed
by NodeView field names, plus `extra` for third-party probes ("probe.field": float).
The coordinator turns a report into a NodeView with view_from_report.

Example: report = NodeSampler.default().sample(time.time()) ->
{"cpus": 2, "cpu_speed": 1.3, "load": 0.4, "mem_total": ..., ..., "extra": {}};
view_from_report("node1", report, job_demand=0.0) -> NodeView(name="node1", ...).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence

from schedulers.api import GROUP_PROBES, Filter, Probe
from schedulers.filters import run_chain
from schedulers.loader import load
from schedulers.probes.boot import BootSample
from schedulers.probes.cpu import CpuSample
from schedulers.probes.io import IoSample
from schedulers.probes.memory import MemorySample
from schedulers.probes.network import NetSample
from schedulers.views import NodeState, NodeView

log = logging.getLogger(__name__)

NODE_PROBES = ("cpu_load", "memory", "io", "network", "boot")
Report = dict[str, object]


def _fields_of(sample: object) -> dict[str, float]:
    """Report fields from one sample: built-in samples map to NodeView fields."""
    if isinstance(sample, CpuSample):
        return {"cpus": sample.cpus, "cpu_speed": sample.speed, "load": sample.load}
    if isinstance(sample, MemorySample):
        return {
            "mem_total": sample.total,
            "mem_free": sample.available,
            "mem_pressure": sample.pressure_some,
        }
    if isinstance(sample, IoSample):
        return {
            "io_read_bps": sample.read_bps,
            "io_write_bps": sample.write_bps,
            "io_busy": sample.busy,
            "io_pressure": sample.pressure_some,
        }
    if isinstance(sample, NetSample):
        return {
            "net_rx_bps": sample.rx_bps,
            "net_tx_bps": sample.tx_bps,
            "net_capacity_bps": sample.capacity_bps,
        }
    if isinstance(sample, BootSample):
        return {"up_since": sample.boot_time}
    return {}


class NodeSampler:
    def __init__(
        self,
        probes: Iterable[Probe[object]],
        filters: Mapping[str, Sequence[Filter[float]]] | None = None,
    ) -> None:
        self.probes = list(probes)
        self.filters = dict(filters or {})
        self._published: dict[str, float] = {}
        self._extra: dict[str, float] = {}

    @classmethod
    def default(cls, names: Sequence[str] = NODE_PROBES) -> NodeSampler:
        """The named probes, found through the `ssi.probes` entry points."""
        return cls(load(GROUP_PROBES, n)() for n in names)

    def sample(self, now: float) -> Report:
        for probe in self.probes:
            try:
                s = probe.sample(now)
            except Exception:  # one failing probe must not silence the node
                log.exception("probe %s failed", probe.name)
                continue
            fields = _fields_of(s)
            if not fields and dataclasses.is_dataclass(s) and not isinstance(s, type):
                for k, v in dataclasses.asdict(s).items():
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        self._extra[f"{probe.name}.{k}"] = float(v)
                continue
            for key, value in fields.items():
                out = run_chain(self.filters.get(key, ()), float(value), now)
                if out is not None:
                    self._published[key] = out
        report: Report = dict(self._published)
        for key in ("cpus", "mem_total", "mem_free"):
            if key in report:
                report[key] = int(report[key])  # type: ignore[call-overload]
        report["sampled_at"] = now
        report["extra"] = dict(self._extra)
        return report


_VIEW_FIELDS = {f.name for f in dataclasses.fields(NodeView)}


def view_from_report(
    name: str,
    report: Mapping[str, object],
    *,
    state: NodeState = NodeState.ONLINE,
    labels: Iterable[str] = (),
    job_demand: float = 0.0,
    background_load: float | None = None,
) -> NodeView:
    """A NodeView from an agent's report. Unknown keys are ignored (a newer agent);
    background_load defaults to the probe load minus the demand of the node's ssi
    jobs (pass 0.0 for nodes sharing one machine, as in `ssi cluster up --local`)."""
    kwargs: dict[str, object] = {
        k: v
        for k, v in report.items()
        if k in _VIEW_FIELDS and k not in ("name", "state")
    }
    extra = report.get("extra")
    kwargs["extra"] = dict(extra) if isinstance(extra, Mapping) else {}
    load = report.get("load", 0.0)
    load_f = float(load) if isinstance(load, int | float) else 0.0
    if background_load is None:
        background_load = max(0.0, load_f - job_demand)
    kwargs["background_load"] = background_load
    return NodeView(name=name, state=state, labels=frozenset(labels), **kwargs)  # type: ignore[arg-type]
