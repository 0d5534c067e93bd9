"""ssi's scheduler: probes measure, filters smooth, policies decide. Sans-IO but probes.

    agent (every node)                      coordinator (one node)
    ------------------                      ----------------------
    probes/  cpu_load memory io network     ClusterView (cluster.py): nodes, jobs,
             boot job            --report-> availability history, change log
    filters/ ewma rate_limit threshold          |
             remote_cache                       v
                                            Scheduler (scheduler.py)
    request.py: `cpus>=2 mem>=4G ...`  ---->  policy = loader.load("ssi.policies", name)
                                               place(JobRequest) -> Placement
                                               rebalance(now)    -> RebalancePlan
                                               node_event(ev)    -> [MigrationDecision]
                                               why(job)          -> text
    sim/: the same Scheduler and policies on a synthetic cluster of thousands of nodes

api.py holds the plugin protocols (Probe, JobProbe, Filter, Policy) and API_VERSION;
base.py the shared half of a policy; policies/ one file per built-in policy;
availability.py the up/down history and the Kondo-style correlated predictor.
"""

from schedulers.api import API_VERSION
from schedulers.availability import AvailabilityModel, NodeHistory
from schedulers.cluster import ClusterView
from schedulers.decisions import (
    JobNote,
    MigrationDecision,
    NodeVerdict,
    Placement,
    RebalancePlan,
)
from schedulers.loader import PluginError, PluginVersionError
from schedulers.params import ParamError
from schedulers.request import Request, RequestError, parse_request
from schedulers.scheduler import Scheduler
from schedulers.views import (
    JobRequest,
    JobView,
    NodeEvent,
    NodeEventKind,
    NodeState,
    NodeView,
)

__all__ = [
    "API_VERSION",
    "AvailabilityModel",
    "ClusterView",
    "JobNote",
    "JobRequest",
    "JobView",
    "MigrationDecision",
    "NodeEvent",
    "NodeEventKind",
    "NodeHistory",
    "NodeState",
    "NodeVerdict",
    "NodeView",
    "ParamError",
    "Placement",
    "PluginError",
    "PluginVersionError",
    "RebalancePlan",
    "Request",
    "RequestError",
    "Scheduler",
    "parse_request",
]
