"""The scheduler package as the coordinator uses it: its cluster view fed from node
reports, job figures and node events; placement of new and restarted jobs; the
policy an admin chose, kept in the store so a coordinator restart keeps it.

    heartbeat(report, jobs) ─▶ ClusterView ◀─ node events (availability history)
    JobManager.place(job) ─▶ Scheduler.place ─▶ Placement (node | wait, explanation)
    rebalance loop ─▶ Scheduler.rebalance ─▶ migrations (JobManager runs them)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from schedulers import (
    JobRequest,
    JobView,
    MigrationDecision,
    NodeEvent,
    NodeEventKind,
    NodeHistory,
    NodeState,
    ParamError,
    Placement,
    PluginError,
    RequestError,
    Scheduler,
    parse_request,
)
from schedulers.probes.sampler import view_from_report
from ssi.cluster.events import NodeEvent as ClusterEvent
from ssi.cluster.store import JobRecord, NodeRecord, StateStore
from ssi.config import Config
from ssi.proto.errors import BadRequest, NotFound

log = logging.getLogger(__name__)


def request_text(require: str, node: str = "") -> str:
    """The job's resource request, with a node it was pinned to."""
    return " ".join(p for p in (require, f"node={node}" if node else "") if p)


def check_request(text: str) -> None:
    """BadRequest pointing at the offending part of a resource request."""
    try:
        parse_request(text)
    except RequestError as e:
        raise BadRequest(f"bad resource request:\n{e}") from None


class Scheduling:
    def __init__(self, cfg: Config, store: StateStore) -> None:
        self.store = store
        self.expelled: list[MigrationDecision] = []
        self._reports: dict[str, dict[str, Any]] = {}  # node -> its last probe report
        self.shared_host = cfg.scheduler.shared_host
        policy = store.meta("policy") or cfg.scheduler.policy
        params = json.loads(store.meta("policy_params") or "{}")
        try:
            self.scheduler = Scheduler(policy=policy, params=params, now=time.time())
        except (PluginError, ParamError) as e:
            log.error("policy %s unusable (%s): using least_loaded", policy, e)
            self.scheduler = Scheduler(policy="least_loaded", now=time.time())
        saved = json.loads(store.meta("availability") or "[]")
        if saved:
            self.scheduler.cluster.availability.load(
                [NodeHistory.from_dict(d) for d in saved]
            )

    @property
    def cluster(self) -> Any:
        return self.scheduler.cluster

    # --- what the coordinator hears ---------------------------------------------------

    def node_seen(
        self, rec: NodeRecord, report: Mapping[str, Any] | None = None
    ) -> None:
        """A node's state or figures changed; without a new report, its last one
        stands."""
        if report:
            self._reports[rec.name] = dict(report)
        base = {
            "cpus": rec.resources.get("cpus", 1),
            "mem_total": rec.resources.get("memory", 0),
            "mem_free": rec.resources.get("memory", 0),
        }
        view = view_from_report(
            rec.name,
            {**base, **self._reports.get(rec.name, {})},
            state=NodeState(rec.state.value),
            labels=rec.resources.get("labels", ()),
            background_load=0.0 if self.shared_host else None,
        )
        self.cluster.upsert_node(view)

    def jobs_seen(self, node: str, jobs: Mapping[str, Mapping[str, Any]]) -> None:
        for job_id, figures in jobs.items():
            probe = figures.get("probe") or {}
            record = self.store.job(int(job_id))
            request = None
            if record is not None:  # --node chose where it started, not where it stays
                request = parse_request(request_text(record.require))
            self.cluster.upsert_job(
                JobView(
                    id=str(job_id),
                    node=node,
                    cpu_demand=float(probe.get("cpu_demand", 1.0)),
                    cpu_usage=float(probe.get("cpu_usage", 0.0)),
                    rss=int(figures.get("rss_bytes", 0)),
                    dirty_rate=float(probe.get("dirty_rate", 0.0)),
                    io_bps=float(probe.get("io_bps", 0.0)),
                    started_at=float(figures.get("started", 0.0)),
                    last_migrated_at=figures.get("last_migrated_at"),
                    request=request,
                )
            )

    def node_event(self, event: ClusterEvent) -> None:
        """Availability history and node states; an eviction's moves are decided
        by the evacuation itself (`expel`)."""
        kind = NodeEventKind(event.kind.value)
        self.expelled = self.scheduler.node_event(
            NodeEvent(kind, event.node, time.time(), event.cause)
        )
        if kind is NodeEventKind.EVICTED:
            self.cluster.remove_node(event.node)
        self._save_history()

    def _save_history(self) -> None:
        histories = [self.cluster.history(n.name).to_dict() for n in self.store.nodes()]
        self.store.set_meta("availability", json.dumps(histories))

    def job_done(self, job_id: int) -> None:
        self.scheduler.job_finished(str(job_id))

    # --- decisions --------------------------------------------------------------------

    def place(
        self,
        job: JobRecord,
        *,
        exclude: tuple[str, ...] = (),
        restart: bool = False,
        node: str = "",
        keep_pin: bool = True,
    ) -> Placement:
        """keep_pin=False: the node the job was submitted to no longer binds it (its
        node was lost or evicted); its other constraints still do."""
        pin = node or (job.spec.get("node", "") if keep_pin else "")
        text = request_text(job.require, pin)
        request = JobRequest(
            str(job.id),
            parse_request(text),
            submitted_at=job.submitted_at,
            exclude=frozenset(exclude),
            restart=restart,
        )
        return self.scheduler.place(request, time.time())

    def why(self, job_id: int) -> str:
        return self.scheduler.why(str(job_id))

    # --- ssi policy ---

    def policies(self) -> list[dict[str, Any]]:
        current = self.scheduler.policy_name
        return [
            {
                "name": i.name,
                "summary": i.summary,
                "dist": i.dist,
                "error": i.error,
                "api_version": i.api_version,
                "active": i.name == current,
            }
            for i in Scheduler.policies()
        ]

    def show(self) -> dict[str, Any]:
        return dict(self.scheduler.show().to_dict())

    def set_policy(self, name: str, params: Mapping[str, str]) -> dict[str, Any]:
        if name not in {i.name for i in Scheduler.policies()}:
            raise NotFound(f"no policy named {name!r} (see `ssi policy list`)")
        try:
            described = self.scheduler.set_policy(name, dict(params), time.time())
        except (PluginError, ParamError) as e:
            raise BadRequest(str(e)) from None
        params_now: list[dict[str, Any]] = described.to_dict()["params"]  # type: ignore[assignment]
        values = {p["name"]: p.get("value") for p in params_now}
        self.store.set_meta("policy", name)
        self.store.set_meta("policy_params", json.dumps(values, default=str))
        log.info("policy now %s %s", name, values)
        return dict(described.to_dict())
