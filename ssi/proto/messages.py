"""The wire messages: the one place where requests and their replies are defined.

Adding an op is adding a class here; the registry and the tagged union that decodes
requests pick it up by themselves:

    class NodeShow(Request[NodeInfo], tag="node.show"):   # op name `area.verb`
        name: str

`Request[R]` names the reply payload type R; clients convert the reply's value to R
(`Request[Any]` leaves it as msgpack builtins). Every request is frozen, keyword-only
and refuses unknown fields; its op travels in the `op` key of the body map and is
readable as `NodeShow.op`.

    Envelope(v, id, body=<Request>, cause, sender, uid, gid, deadline)  ──▶
    ◀──  Reply(v, id, ok, value | error=WireError(code, message, details))
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, Union, get_args

import msgspec

from ssi.proto.errors import WireError

__all__ = [
    "PROTOCOL_VERSION",
    "Request",
    "Envelope",
    "Reply",
    "WireError",
    "registry",
    "request_union",
    "result_type",
    "Pong",
    "Ping",
    "NodeJoin",
    "NodeHello",
    "Heartbeat",
    "NodeList",
    "NodeShow",
    "NodeToken",
    "NodeDrain",
    "NodeResume",
    "NodeEvict",
    "ClusterInit",
    "ClusterStatus",
    "ClusterJoin",
]

PROTOCOL_VERSION = 1

if TYPE_CHECKING:
    # A bare `Request` in an annotation means `Request[Any]` (PEP 696 default).
    from typing_extensions import TypeVar as _TypeVar

    R = _TypeVar("R", covariant=True, default=Any)
else:
    R = TypeVar("R", covariant=True)

_OP_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_registry: dict[str, type[Request[Any]]] = {}
_lock = threading.Lock()
_generation = 0  # bumped on every registration, so the union is rebuilt lazily


class _RequestMeta(msgspec.StructMeta):
    """Makes every Request subclass keyword-only and registers it under its op."""

    def __new__(
        mcls,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        **kwargs: Any,
    ) -> _RequestMeta:
        is_subclass = any(isinstance(b, _RequestMeta) for b in bases)
        if is_subclass:
            kwargs.setdefault("kw_only", True)
            tag = kwargs.get("tag")
            if not isinstance(tag, str) or not _OP_NAME.match(tag):
                raise TypeError(
                    f"{name}: a request needs its op name as tag, "
                    f'e.g. class {name}(Request[...], tag="area.verb")'
                )
        cls = super().__new__(mcls, name, bases, namespace, **kwargs)
        if is_subclass:
            global _generation
            op = kwargs["tag"]
            with _lock:
                if op in _registry:
                    raise TypeError(f"{name}: op {op!r} is already {_registry[op]!r}")
                cls.op = op  # type: ignore[attr-defined]
                _registry[op] = cls  # type: ignore[assignment]
                _generation += 1
        return cls


if TYPE_CHECKING:
    # Type checkers see a plain Struct base (kw_only and frozen as at run time).
    from typing import dataclass_transform

    @dataclass_transform(
        kw_only_default=True, frozen_default=True, field_specifiers=(msgspec.field,)
    )
    class _RequestBase(msgspec.Struct, frozen=True, kw_only=True):
        pass
else:
    _RequestBase = msgspec.Struct


class Request(
    _RequestBase,
    Generic[R],
    metaclass=_RequestMeta,
    frozen=True,
    tag_field="op",
    forbid_unknown_fields=True,
    kw_only=True,
):
    """Base of every request; R is the type of the reply's value."""

    op: ClassVar[str]


def registry() -> dict[str, type[Request[Any]]]:
    """A copy of op name → request class."""
    with _lock:
        return dict(_registry)


_union_cache: tuple[int, Any] = (-1, None)


def request_union() -> Any:
    """The tagged union of all request classes (rebuilt when a class was added)."""
    global _union_cache
    with _lock:
        generation, union = _union_cache
        if generation != _generation:
            union = Union[tuple(_registry.values())]  # noqa: UP007
            _union_cache = (_generation, union)
        return union


def result_type(cls: type[Request[Any]]) -> Any:
    """The R of a `Request[R]` subclass (Any when not stated)."""
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            if getattr(base, "__origin__", None) is Request:
                args = get_args(base)
                if args and not isinstance(args[0], TypeVar):
                    return args[0]
                return Any
    return Any


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """A request with its header.

    `id` matches the reply; `cause` follows one stimulus across nodes; `sender` names
    the sending node; `uid`/`gid` are the end user a node acts for (set by a trusted
    node; the local socket overwrites them with the caller's peer credentials);
    `deadline` is advisory, wall-clock seconds since the epoch.
    """

    v: int
    id: str
    body: Request[Any]
    cause: str = ""
    sender: str = ""
    uid: int | None = None
    gid: int | None = None
    deadline: float | None = None


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    v: int
    id: str
    ok: bool
    value: Any = None
    error: WireError | None = None


# --- sys ----------------------------------------------------------------------------


class Pong(msgspec.Struct, frozen=True, kw_only=True):
    node: str
    version: str
    time: float  # wall clock of the answering node, seconds since the epoch
    # False while ssid is still starting (adopting jobs, joining its cluster): its
    # socket answers before then
    ready: bool = True


class Ping(Request[Pong], tag="sys.ping"):
    pass


# --- node ---------------------------------------------------------------------------


class NodeJoin(Request[Any], tag="node.join"):
    """A new node presents its join token to the coordinator."""

    token: str
    name: str
    address: str
    port: int
    resources: dict[str, Any]


class NodeHello(Request[Any], tag="node.hello"):
    """A known node (re)announces itself, e.g. after a restart."""

    name: str
    address: str
    port: int
    resources: dict[str, Any]
    boot: str = ""  # one per ssid run: a new one says requests to the last were lost


class Heartbeat(Request[Any], tag="node.heartbeat"):
    name: str
    seq: int
    load: dict[str, float]
    jobs: dict[str, dict[str, Any]] = {}  # job id -> live stats (cpu, rss, ...)
    report: dict[str, Any] = {}  # the node's probes (schedulers.probes.sampler)


class NodeList(Request[Any], tag="node.list"):
    pass


class NodeShow(Request[Any], tag="node.show"):
    name: str


class NodeToken(Request[Any], tag="node.token"):
    ttl: float | None = None  # seconds; None: the configured default


class NodeDrain(Request[Any], tag="node.drain"):
    name: str
    reason: str = ""


class NodeResume(Request[Any], tag="node.resume"):
    name: str


class NodeEvict(Request[Any], tag="node.evict"):
    name: str
    force: bool = False
    wait: bool = False


# --- cluster ------------------------------------------------------------------------


class ClusterInit(Request[Any], tag="cluster.init"):
    name: str


class ClusterStatus(Request[Any], tag="cluster.status"):
    pass


class ClusterJoin(Request[Any], tag="cluster.join"):
    """Asks the local ssid to join the cluster the token belongs to."""

    token: str


# --- jobs: what users ask (through their node's ssid) -------------------------------


class JobSubmit(Request[Any], tag="job.submit"):
    """A job as its submitter describes it; uid and gid come from the socket's peer
    credentials, never from the message."""

    argv: list[str]
    name: str = ""
    cwd: str = ""
    env: dict[str, str] = {}
    stdin: str = "/dev/null"
    stdout: str = ""  # "": <cwd>/ssi-<id>.out
    stderr: str = ""  # "": <cwd>/ssi-<id>.err
    node: str = ""  # "": the placement policy chooses
    require: str = ""  # resource request language
    hold: bool = False
    ckpt_every: float = 0.0  # seconds between periodic checkpoints; 0: none
    wall_limit: float = 0.0  # seconds of wall-clock time before it is killed; 0: none
    cluster_ipc: bool = False  # its System V IPC goes to cluster objects (ssi.ipc)
    session: str = ""  # a DRMAA session (contact) the job belongs to
    net: str = ""  # "private": a network namespace and cluster address of its own


class JobSubmitBatch(Request[Any], tag="job.submit_batch"):
    """Many jobs in one request and one store transaction (DRMAA bulk jobs)."""

    jobs: list[JobSubmit]


class JobList(Request[Any], tag="job.list"):
    all: bool = False  # include ended jobs (history)
    user: int | None = None  # only this uid's jobs
    session: str = ""  # only this session's jobs
    ids: list[int] = []  # only these jobs


class JobWaitAny(Request[Any], tag="job.wait_any"):
    """Waits until one of `jobs` has ended; returns it (None if `jobs` is empty)."""

    jobs: list[int]
    timeout: float | None = None


class JobShow(Request[Any], tag="job.show"):
    job: int


class JobWait(Request[Any], tag="job.wait"):
    job: int
    timeout: float | None = None  # seconds; None: until it ends


class JobKill(Request[Any], tag="job.kill"):
    job: int
    signal: int = 15


class JobSuspend(Request[Any], tag="job.suspend"):
    job: int


class JobResume(Request[Any], tag="job.resume"):
    job: int


class JobHold(Request[Any], tag="job.hold"):
    job: int


class JobRelease(Request[Any], tag="job.release"):
    job: int


class JobCheckpoint(Request[Any], tag="job.checkpoint"):
    job: int
    stop: bool = False  # leave the job stopped (restartable) instead of running


class JobCheckpoints(Request[Any], tag="job.checkpoints"):
    job: int


class JobRestart(Request[Any], tag="job.restart"):
    job: int
    checkpoint: str = ""  # "": the latest
    node: str = ""  # "": the placement policy chooses


class JobWhy(Request[Any], tag="job.why"):
    job: int


class JobMigrate(Request[Any], tag="job.migrate"):
    """Move a running job to another node ("auto": the policy chooses)."""

    job: int
    node: str = "auto"
    live: bool = False


# --- jobs: between the coordinator and the agents -------------------------------------


class AgentStart(Request[Any], tag="agent.start"):
    job: int
    spec: dict[str, Any]  # ssi.jobs.JobSpec as a mapping


class AgentSignal(Request[Any], tag="agent.signal"):
    job: int
    signal: int


class AgentFreeze(Request[Any], tag="agent.freeze"):
    job: int
    frozen: bool


class AgentDump(Request[Any], tag="agent.dump"):
    """Checkpoint a job into the node's spool, copied to the first of `replicas`
    (candidates in order) that takes it."""

    job: int
    checkpoint: str
    stop: bool
    replicas: list[dict[str, Any]] = []  # [{name, address, port, key}]


class AgentRestore(Request[Any], tag="agent.restore"):
    """Restore a job from a checkpoint, fetching it from a holder if not here."""

    job: int
    checkpoint: str
    spec: dict[str, Any]
    holders: list[dict[str, Any]] = []  # [{name, address, port, key}]
    cleanup: bool = False  # remove the images once restored (a migration's)
    # A move's: the digests of the images sent on its channel (name → tree hash)
    channel_sums: dict[str, str] | None = None
    live: bool = False  # a move's, post-copy: the pages follow on the channel


class AgentMigrateOut(Request[Any], tag="agent.migrate_out"):
    """A migration's source: dump the job, keep it frozen, send the images to the
    target on the connection it invited (`channel`, agent.move_prepare's answer)
    under the name `migration`."""

    job: int
    migration: str
    channel: dict[str, Any]  # {address, port, token}
    live: bool = False  # post-copy: only non-memory images move now, pages later


class AgentMovePrepare(Request[Any], tag="agent.move_prepare"):
    """A migration's target, before the source freezes the job: listen for the
    source's connection from `source` (its cluster address); answers the
    invitation {address, port, token} for agent.migrate_out. Live: the images
    come on it, then CRIU's page traffic; cold: CRIU's pages (a page server here),
    then the other images."""

    job: int
    migration: str
    source: str
    live: bool = False


class AgentSettle(Request[Any], tag="agent.settle"):
    """A migration's end on its source: the job moved (kill the frozen copy) or not
    (thaw it)."""

    job: int
    moved: bool


class AgentKeep(Request[Any], tag="agent.keep"):
    """A migration's end on its target: the store says the job lives here now, so
    its restored copy no longer freezes if this node's ssid dies."""

    job: int


class MigrationPhase(Request[Any], tag="job.migration_phase"):
    """An agent taking part in a migration reports the phase it reached (sending,
    fetching-pages); the coordinator adds it to the job's history."""

    job: int
    migration: str
    node: str
    phase: str


class AgentForget(Request[Any], tag="agent.forget"):
    """Drop what the node keeps of a job (it ended, or runs elsewhere now)."""

    job: int
    kill: bool = False  # kill it first if it still runs here
    checkpoints: list[str] = []  # checkpoint ids whose local copies to delete


class JobEnded(Request[Any], tag="job.ended"):
    """An agent reports a job's end (also for jobs that ended while it was down)."""

    job: int
    node: str
    status: dict[str, Any]


class JobsHere(Request[Any], tag="job.here"):
    """An agent's account of its jobs after a (re)start: the coordinator answers with
    the jobs this node must no longer run (kill) and those it runs for the cluster
    (resume: thawed if found frozen by a migration cut short)."""

    node: str
    running: list[int]


# --- scheduler ----------------------------------------------------------------------


class PolicyList(Request[Any], tag="policy.list"):
    pass


class PolicyShow(Request[Any], tag="policy.show"):
    pass


class PolicySet(Request[Any], tag="policy.set"):
    """Switch the cluster's placement and balancing policy at run time (admin)."""

    name: str
    params: dict[str, str] = {}


# --- ipc: cluster-wide System V objects (ssi.ipc; payloads are ssi.ipc.remote bytes) --


class IpcCall(Request[Any], tag="ipc.call"):
    """A local client's System V op (`name` an ssi.ipc op name, `args` its fields).
    `client` names the calling process (with its pid, from the socket), `request`
    numbers its call: a re-sent call with the same number is the same call. A
    blocking op answers {"state": "pending"} after `wait` seconds; asking again
    waits on."""

    name: str
    args: dict[str, Any] = {}
    client: str = ""
    request: int = 0
    wait: float = 0.0


class IpcCancel(Request[Any], tag="ipc.cancel"):
    """Stop a local client's pending call (reason "timeout": EAGAIN, else EINTR);
    answers its result if it completed first."""

    client: str
    request: int
    reason: str = "interrupt"


class IpcObjects(Request[Any], tag="ipc.objects"):
    """Every cluster IPC object with its home and replica (`ssi ipc list`)."""

    kind: str = ""


class IpcObject(Request[Any], tag="ipc.object"):
    """One object's directory entry and state (`ssi ipc show`)."""

    kind: str
    id: int


class IpcApply(Request[Any], tag="ipc.apply"):
    """Origin node -> home: run an op (idempotent per `request`). For a get that
    may create, `reserve` is the id a new object takes and `replica` its replica.
    An op that parks is answered when it completes within `wait` seconds."""

    operation: bytes
    caller: bytes
    request: str
    origin: str
    reserve: int | None = None
    replica: str | None = None
    wait: float = 0.0


class IpcCancelAt(Request[Any], tag="ipc.cancel_at"):
    kind: str
    id: int
    request: str
    reason: str = "interrupt"


class IpcExitAt(Request[Any], tag="ipc.exit_at"):
    """A client (process) is gone: every home applies its SEM_UNDO, detaches it."""

    caller: bytes


class IpcWake(Request[Any], tag="ipc.wake"):
    """Home -> origin: parked requests that completed (encoded [request, Result])."""

    results: bytes


class IpcReplicate(Request[Any], tag="ipc.replicate"):
    """Home -> replica: encoded ReplicaItems, in order."""

    items: bytes


class IpcHomeList(Request[Any], tag="ipc.home_list"):
    """The objects this node homes and the copies it holds for others."""


class IpcRelease(Request[Any], tag="ipc.release"):
    """Coordinator -> home: hand over an object (its encoded Bundle); it is no longer
    served here."""

    kind: str
    id: int


class IpcAdopt(Request[Any], tag="ipc.adopt"):
    """Coordinator -> new home: serve this Bundle from now on, replicated to
    `replica`."""

    bundle: bytes
    replica: str | None = None


class IpcPromote(Request[Any], tag="ipc.promote"):
    """Coordinator -> replica node: its home is lost; serve the copy from now on."""

    kind: str
    id: int
    replica: str | None = None


class IpcSetReplica(Request[Any], tag="ipc.set_replica"):
    kind: str
    id: int
    replica: str | None = None


class IpcDrop(Request[Any], tag="ipc.drop"):
    """Forget an object or a copy of it held here (the directory says otherwise)."""

    kind: str
    id: int
    home: bool = True
    replica: bool = True


class IpcGet(Request[Any], tag="ipc.get"):
    """Origin -> coordinator: msgget/semget/shmget by key, routed to the key's home
    or creating the object (home: the origin's node, when it may take objects)."""

    operation: bytes
    caller: bytes
    request: str
    origin: str


class IpcWhere(Request[Any], tag="ipc.where"):
    kind: str
    id: int


class IpcGone(Request[Any], tag="ipc.gone"):
    """Home -> coordinator: an object was removed."""

    kind: str
    id: int


class IpcMove(Request[Any], tag="ipc.move"):
    """Move an object to another home (admin); `to` "" lets the coordinator choose."""

    kind: str
    id: int
    to: str = ""


class IpcHello(Request[Any], tag="ipc.hello"):
    """A node's IPC service (re)started: the coordinator reconciles what it holds
    (recovers what it lost from replicas, tells it what to forget)."""

    node: str
