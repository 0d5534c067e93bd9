"""IpcService: cluster IPC inside ssid, as a node service (ssi/node/service.py).

    Python client ─ local socket ─ IpcCall ──┐
    interposed job ─ @ssi-ipc ─ PreloadServer ┴─▶ Router ─▶ the object's home
                                                  (origin side)   (any node)
    peers ─ ipc.apply/cancel_at/exit_at/wake/replicate/... ─▶ HomeShard (home side)
    coordinator only ─ ipc.get/where/gone/move/hello/objects ─▶ Directory

Every node is an origin (its processes' ops enter here), a home (objects live in
its HomeShard) and a replica (copies of others' objects). The coordinator's node
also keeps the directory. Calls to this node itself skip the network.

Jobs submitted with cluster_ipc get LD_PRELOAD=<interposer> and
SSI_IPC_SOCKET=@ssi-ipc: the abstract socket of the node's network namespace, so
a job restored on another node reaches that node's server under the same name.
A job's processes are named after the job (job<id>:<pid in the job>.<token>), so
their SEM_UNDO and attachments survive a migration.

Checkpoints: before_dump(job) makes the preload server close the job's sockets and
refuse them (their parked ops stay parked at the homes); CRIU then dumps the
half-closed sockets; after_dump(job) ends that, and the process, wherever it runs,
reconnects and re-sends its pending call, which its home re-attaches.

Limits: Linux's defaults, or a `[limits]` table (msgmnb = 65536, ...) in ipc.toml
next to ssi.toml ($SSI_CONFIG's directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ssi import config
from ssi.cluster.events import NodeEvent
from ssi.cluster.peers import Peers
from ssi.cluster.store import NodeRecord, NodeState
from ssi.ipc import interposer
from ssi.ipc.constants import CancelReason, Kind
from ssi.ipc.directory import Directory
from ssi.ipc.home import HomeShard
from ssi.ipc.model import Caller, Limits
from ssi.ipc.ops import op_from_args
from ssi.ipc.preload_server import PreloadServer
from ssi.ipc.remote import (
    Result,
    decode_bundle,
    decode_caller,
    decode_items,
    decode_op,
    decode_results,
    encode,
    result_error,
)
from ssi.ipc.router import ClusterTransport, Pending, Router
from ssi.node.service import Handler
from ssi.proto import messages as m
from ssi.proto.errors import (
    BadRequest,
    Denied,
    NoReply,
    NotFound,
    SsiError,
    Unavailable,
)

if TYPE_CHECKING:
    from ssi.node.agent import Agent

__all__ = ["IpcService", "SOCKET_NAME", "load_limits"]

log = logging.getLogger(__name__)

SOCKET_NAME = "@ssi-ipc"
RETRY_MS = "600000"  # the interposer's patience with an unreachable server
LINGER = 2.0  # seconds a client's state outlives its last connection
WAKE_TIMEOUT = 3.0


def load_limits(path: Path | None = None) -> Limits:
    """Limits from ipc.toml's [limits] table (next to the configuration file)."""
    if path is None:
        cfg = Path(os.environ.get("SSI_CONFIG", config.DEFAULT_PATH))
        path = cfg.parent / "ipc.toml"
    try:
        data = tomllib.loads(path.read_text()).get("limits", {})
    except FileNotFoundError:
        return Limits()
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise config.ConfigError(f"{path}: {e}") from None
    try:
        return dataclasses.replace(Limits(), **data)
    except (TypeError, ValueError) as e:
        raise config.ConfigError(f"{path}: [limits]: {e}") from None


def _status_field(pid: int, name: str) -> list[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


def _pidns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


class IpcService:
    name = "ipc"

    def __init__(self, agent: Agent, limits: Limits | None = None) -> None:
        self.agent = agent
        self.node = agent.name
        self.limits = limits or load_limits()
        self.peers = Peers(agent.ctx, agent.keypair, sender=agent.name)
        self.shard = HomeShard(
            self.node, self.limits, self.call_node, self._gone, self._wake
        )
        self.router = Router(
            self.node,
            self.shard,
            self.call_node,
            self._call_coordinator,
            self._node_names,
            self.limits,
        )
        self.preload: PreloadServer | None = None
        self._library: Path | None = None
        self.socket = SOCKET_NAME
        self._directory: Directory | None = None
        self._records: dict[str, NodeRecord] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._holds: dict[str, object] = {}
        self._jobs_by_ns: dict[int, str] = {}
        self._watched: dict[str, int] = {}  # python clients: id -> pidfd
        self._peer_ops: dict[type[m.Request[Any]], Any] = {
            m.IpcApply: self._on_apply,
            m.IpcCancelAt: self._on_cancel_at,
            m.IpcExitAt: self._on_exit_at,
            m.IpcWake: self._on_wake,
            m.IpcReplicate: self._on_replicate,
            m.IpcHomeList: self._on_home_list,
            m.IpcRelease: self._on_release,
            m.IpcAdopt: self._on_adopt,
            m.IpcPromote: self._on_promote,
            m.IpcSetReplica: self._on_set_replica,
            m.IpcDrop: self._on_drop,
        }
        self._coordinator_ops: dict[type[m.Request[Any]], Any] = {
            m.IpcGet: self._on_get,
            m.IpcWhere: self._on_where,
            m.IpcGone: self._on_gone,
            m.IpcMove: self._on_move,
            m.IpcHello: self._on_hello,
            m.IpcObjects: self._on_directory,
        }

    # ---- Service --------------------------------------------------------------------

    def local_handlers(self) -> Mapping[str, Handler]:
        return {
            m.IpcCall.op: self._on_call,
            m.IpcCancel.op: self._on_cancel,
            m.IpcObjects.op: self._on_objects,
            m.IpcObject.op: self._on_object,
            m.IpcMove.op: self._on_local_move,
        }

    def peer_handlers(self) -> Mapping[str, Handler]:
        def wrap(fn: Any) -> Handler:
            async def handler(env: m.Envelope, peer: Any) -> Any:
                return await fn(env.body, env.sender)

            return handler

        return {cls.op: wrap(fn) for cls, fn in self._peer_ops.items()}

    def coordinator_handlers(self) -> Mapping[str, Handler]:
        def wrap(fn: Any) -> Handler:
            async def handler(env: m.Envelope, peer: Any) -> Any:
                return await fn(env.body, env.sender)

            return handler

        return {cls.op: wrap(fn) for cls, fn in self._coordinator_ops.items()}

    def job_env(self, spec: Mapping[str, Any]) -> dict[str, str]:
        if not spec.get("cluster_ipc"):
            return {}
        lib = self.library()
        if lib is None:
            raise Unavailable(
                "cluster IPC interposer not built: reinstall ssi (setup.py compiles "
                "ssi/ipc/interposer/ssi_ipc_preload.c) or run `bash scripts/setup.sh`"
            )
        env = {
            "LD_PRELOAD": str(lib),
            "SSI_IPC_SOCKET": self.socket,
            "SSI_IPC_RETRY_MS": RETRY_MS,
        }
        if "SSI_SOCKET" not in spec.get("env", {}):  # for ssi.ipc.client
            env["SSI_SOCKET"] = str(self.agent.cfg.socket_path)
        return env

    def library(self) -> Path | None:
        return self._library

    def _find_library(self) -> Path | None:
        """The installed interposer, or one built into the run directory when it is
        missing or older than its source (an in-place tree after an edit)."""
        lib = interposer.library_path()
        try:
            fresh = lib is not None and (
                lib.stat().st_mtime >= interposer.SOURCE.stat().st_mtime
            )
        except OSError:
            fresh = lib is not None
        if fresh:
            return lib
        out = Path(self.agent.cfg.node.run_dir) / "ipc"
        try:
            out.mkdir(parents=True, exist_ok=True)
            out.chmod(0o755)
            built = interposer.build_interposer(out)
        except (OSError, subprocess.CalledProcessError) as e:
            log.error("cannot build the ipc interposer into %s: %s", out, e)
            return lib
        built.chmod(0o755)
        log.info("ipc interposer built: %s", built)
        return built

    async def start(self) -> None:
        self._library = await asyncio.to_thread(self._find_library)
        await self.shard.start()
        self.agent.events.subscribe("ipc", self._on_event)
        self.preload = PreloadServer(
            self.socket,
            lambda caller: ClusterTransport(self.router, caller),
            linger=LINGER,
            identify=self._identify,
            request_ids=True,
        )
        try:
            await self.preload.start()
        except OSError as e:  # another ssid in this network namespace
            log.error("ipc preload server on %s: %s", self.socket, e)
            self.preload = None
        self._spawn(self._hello())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.preload is not None:
            await self.preload.close()
        for p in list(self.router.pending.values()):
            self.router.finish(p)
        await self.shard.close()
        for fd in self._watched.values():
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
        self._watched.clear()
        self.peers.close()

    # ---- checkpoints ---------------------------------------------------------------

    def before_dump(self, job_id: str) -> None:
        """The job is about to be dumped: no socket of it stays connected here."""
        if self.preload is None or job_id in self._holds:
            return
        ns = self._job_ns(job_id)
        if ns is None:
            return
        self._holds[job_id] = self.preload.hold(lambda pid: _pidns(pid) == ns)
        log.info("op=ipc.hold job=%s: its connections closed for a dump", job_id)

    def after_dump(self, job_id: str, *, stopped: bool) -> None:
        handle = self._holds.pop(job_id, None)
        if handle is not None and self.preload is not None:
            self.preload.release(handle, forget=stopped)

    def _job_ns(self, job_id: str) -> int | None:
        try:
            job = self.agent.executor.runtime.job(job_id)
        except SsiError:
            return None
        return _pidns(job.init_pid)

    def _job_of(self, pid: int) -> str | None:
        """The job a process belongs to: from its cgroup (<base>/<job id>), which a
        restore sets before the process runs again; else by its PID namespace."""
        base = self.agent.cfg.node.cgroup_base.strip("/")
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                for line in f:
                    path = line.rstrip("\n").split(":", 2)[-1]
                    head, _, name = path.rpartition("/")
                    if name.isdigit() and head.endswith("/" + base):
                        return name
        except OSError:
            pass
        ns = _pidns(pid)
        if ns is None:
            return None
        if ns not in self._jobs_by_ns:
            self._jobs_by_ns = {}
            for job in self.agent.executor.runtime.jobs():
                if job.running:
                    jns = _pidns(job.init_pid)
                    if jns is not None:
                        self._jobs_by_ns[jns] = job.job_id
        return self._jobs_by_ns.get(ns)

    def _identify(self, pid: int, token: int) -> tuple[str, int]:
        """A job's process is named after the job and its pid inside the job, which
        a migration keeps; others after this node and their pid."""
        job = self._job_of(pid)
        nspid = (_status_field(pid, "NSpid") or [pid])[-1]
        if job is not None:
            cid, cpid = f"job{job}:{nspid}.{token:016x}", nspid
        else:
            cid, cpid = f"{self.node}:{pid}.{token:016x}", pid
        log.debug("op=ipc.connect pid=%d is client %s", pid, cid)
        return cid, cpid

    # ---- plumbing ------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def directory(self) -> Directory:
        coordinator = self.agent.coordinator
        if coordinator is None:
            raise Unavailable(f"node {self.node} is not the coordinator")
        if self._directory is None or self._directory.store is not coordinator.store:
            self._directory = Directory(coordinator.store, self.call_node)
        return self._directory

    async def _call_coordinator(self, body: m.Request[Any], timeout: float) -> Any:
        if self.agent.coordinator is not None:
            handler = self._coordinator_ops[type(body)]
            return await handler(body, self.node)
        return await self.agent.call_coordinator(body, timeout)

    async def _record(self, name: str, fresh: bool = False) -> NodeRecord:
        coordinator = self.agent.coordinator
        if coordinator is not None:
            rec = coordinator.store.node(name)
            if rec is not None:
                self._records[name] = rec
                return rec
            # an evicted node is out of the store before its objects are moved
            # off it: it still answers the coordinator, which knew it
            rec = self._records.get(name)
            if rec is None:
                raise NotFound(f"no node {name!r}")
            return rec
        if fresh or name not in self._records:
            await self._refresh_records()
        rec = self._records.get(name)
        if rec is None:
            raise NotFound(f"no node {name!r}")
        return rec

    async def _refresh_records(self) -> None:
        nodes = await self.agent.call_coordinator(m.NodeList(), 10.0)
        self._records = {
            n["name"]: NodeRecord(
                n["name"],
                n["public_key"],
                n["address"],
                int(n["port"]),
                NodeState(n["state"]),
            )
            for n in nodes
        }

    async def _node_names(self) -> list[str]:
        coordinator = self.agent.coordinator
        if coordinator is not None:
            recs = coordinator.store.nodes()
        else:
            await self._refresh_records()
            recs = list(self._records.values())
        live = (NodeState.ONLINE, NodeState.DRAINING)
        return sorted(r.name for r in recs if r.state in live)

    async def call_node(self, name: str, body: m.Request[Any], timeout: float) -> Any:
        """A peer op at node `name` (this node: directly)."""
        if name == self.node:
            return await self._peer_ops[type(body)](body, self.node)
        rec = await self._record(name)
        try:
            return await self.peers.call(rec, body, timeout=timeout)
        except NoReply:
            # A peer that refused our key (it had not heard of us yet) never
            # completes that socket's handshake: the next call makes a new one.
            self.peers.drop(name)
            self._records.pop(name, None)
            raise
        except Unavailable:
            self.peers.drop(name)
            rec = await self._record(name, fresh=True)
            return await self.peers.call(rec, body, timeout=timeout)

    def _wake(self, origin: str, results: list[tuple[str, Result]]) -> None:
        if origin == self.node:
            self.router.on_wake(results)
            return
        self._spawn(self._send_wake(origin, results))

    async def _send_wake(self, origin: str, results: list[tuple[str, Result]]) -> None:
        try:
            body = m.IpcWake(results=encode(results))
            await self.call_node(origin, body, WAKE_TIMEOUT)
        except SsiError as e:  # its probe finds the results here
            log.info("op=ipc.wake to %s (%d results): %s", origin, len(results), e)

    async def _gone(self, kind: Kind, id: int) -> None:
        await self._call_coordinator(m.IpcGone(kind=kind.value, id=id), 10.0)

    async def _hello(self) -> None:
        """Until the coordinator has reconciled what this node holds."""
        delay = 0.2
        while True:
            try:
                await self._call_coordinator(m.IpcHello(node=self.node), 30.0)
                return
            except SsiError as e:
                log.debug("op=ipc.hello: %s", e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _on_event(self, event: NodeEvent) -> None:
        if self.agent.coordinator is None:
            return
        directory = self.directory
        self._spawn(directory.on_event(event))

    # ---- local clients (ssi.ipc.client) ---------------------------------------------

    def _local_caller(self, env: m.Envelope, peer: Any, token: str) -> Caller:
        pid = int(peer.pid)
        groups = tuple(_status_field(pid, "Groups"))
        nspid = (_status_field(pid, "NSpid") or [pid])[-1]
        assert env.uid is not None and env.gid is not None
        client = f"{self.node}:{pid}.{token}"
        self._watch_client(client, pid, env.uid, env.gid)
        return Caller(uid=env.uid, gid=env.gid, groups=groups, pid=nspid, client=client)

    def _watch_client(self, client: str, pid: int, uid: int, gid: int) -> None:
        """End a Python client (SEM_UNDO, attachments) when its process ends."""
        if client in self._watched:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return
        self._watched[client] = fd
        caller = Caller(uid=uid, gid=gid, pid=pid, client=client)

        def ended() -> None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(fd)
            os.close(fd)
            self._watched.pop(client, None)
            self._spawn(self.router.exit(caller))

        asyncio.get_running_loop().add_reader(fd, ended)

    async def _on_call(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.IpcCall)
        if not body.client or len(body.client) > 64:
            raise BadRequest("ipc.call needs a client token")
        caller = self._local_caller(env, peer, body.client)
        request = f"{caller.client}#{body.request}"
        held = self.router.pending.get(request)
        if held is not None:
            return await self._poll(held, body.wait)
        try:
            op = op_from_args(body.name, dict(body.args))
        except ValueError as e:
            return _done(result_error(errno.EINVAL), str(e))
        try:
            hold = min(body.wait, self.router.t.hold)
            started = await self.router.start(caller, op, request, hold)
        except OSError as e:
            return _done(result_error(e.errno or errno.EIO))
        if isinstance(started, Result):
            return _done(started)
        return await self._poll(started, body.wait)

    async def _poll(self, p: Pending, wait: float) -> dict[str, Any]:
        result = await self.router.wait(p, max(0.0, min(wait, 30.0)))
        if result is None:
            return {"state": "pending"}
        self.router.finish(p)
        return _done(result)

    async def _on_cancel(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.IpcCancel)
        client = f"{self.node}:{int(peer.pid)}.{body.client}"
        p = self.router.pending.get(f"{client}#{body.request}")
        reason = CancelReason(body.reason)
        if p is None:
            err = errno.EAGAIN if reason is CancelReason.TIMEOUT else errno.EINTR
            return _done(result_error(err, reason))
        return _done(await self.router.cancel(p, reason))

    async def _on_objects(self, env: m.Envelope, peer: Any) -> list[dict[str, Any]]:
        body = env.body
        assert isinstance(body, m.IpcObjects)
        entries = await self._call_coordinator(m.IpcObjects(kind=body.kind), 10.0)
        infos = {(i.kind.value, i.id): i for i in await self.router.list_objects()}
        out = []
        for e in entries:
            if body.kind and e["kind"] != body.kind:
                continue
            info = infos.get((e["kind"], e["id"]))
            row = dict(e)
            row["info"] = msgspec.to_builtins(info) if info is not None else None
            out.append(row)
        return sorted(out, key=lambda r: (r["kind"], r["id"]))

    async def _on_object(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.IpcObject)
        rows = await self._on_objects(
            msgspec.structs.replace(env, body=m.IpcObjects(kind=body.kind)), peer
        )
        for row in rows:
            if row["id"] == body.id:
                return row
        raise NotFound(f"no {body.kind} object with id {body.id} (see `ssi ipc list`)")

    async def _on_local_move(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.IpcMove)
        if env.uid != 0:
            raise Denied("moving an IPC object is an admin verb: only root may")
        result: dict[str, Any] = await self._call_coordinator(body, 30.0)
        return result

    # ---- peers ---------------------------------------------------------------------

    async def _on_apply(self, body: m.IpcApply, sender: str) -> bytes:
        answer = await self.shard.apply(
            decode_op(body.operation),
            decode_caller(body.caller),
            body.request,
            body.origin,
            reserve=body.reserve,
            replica=body.replica,
            wait=min(body.wait, 5.0),
        )
        return encode(answer)

    async def _on_cancel_at(self, body: m.IpcCancelAt, sender: str) -> bytes:
        answer = await self.shard.cancel(
            Kind(body.kind), body.id, body.request, CancelReason(body.reason)
        )
        return encode(answer)

    async def _on_exit_at(self, body: m.IpcExitAt, sender: str) -> dict[str, Any]:
        await self.shard.exit(decode_caller(body.caller))
        return {}

    async def _on_wake(self, body: m.IpcWake, sender: str) -> dict[str, Any]:
        self.router.on_wake(decode_results(body.results))
        return {}

    async def _on_replicate(self, body: m.IpcReplicate, sender: str) -> dict[str, Any]:
        self.shard.on_replicate(decode_items(body.items))
        return {}

    async def _on_home_list(self, body: m.IpcHomeList, sender: str) -> dict[str, Any]:
        held: dict[str, Any] = dict(self.shard.held())
        held["objects"] = self.shard.objects()
        return held

    async def _on_release(self, body: m.IpcRelease, sender: str) -> bytes:
        return encode(self.shard.release(Kind(body.kind), body.id))

    async def _on_adopt(self, body: m.IpcAdopt, sender: str) -> dict[str, Any]:
        await self.shard.adopt(decode_bundle(body.bundle), body.replica)
        return {}

    async def _on_promote(self, body: m.IpcPromote, sender: str) -> dict[str, Any]:
        await self.shard.promote(Kind(body.kind), body.id, body.replica)
        return {}

    async def _on_set_replica(self, body: m.IpcSetReplica, sender: str) -> Any:
        await self.shard.set_replica(Kind(body.kind), body.id, body.replica)
        return {}

    async def _on_drop(self, body: m.IpcDrop, sender: str) -> dict[str, Any]:
        self.shard.drop(Kind(body.kind), body.id, home=body.home, replica=body.replica)
        return {}

    # ---- coordinator ---------------------------------------------------------------

    async def _on_get(self, body: m.IpcGet, sender: str) -> bytes:
        return await self.directory.get(body)

    async def _on_where(self, body: m.IpcWhere, sender: str) -> dict[str, Any] | None:
        entry = self.directory.where(Kind(body.kind), body.id)
        return None if entry is None else {"home": entry.home}

    async def _on_gone(self, body: m.IpcGone, sender: str) -> dict[str, Any]:
        await self.directory.gone(Kind(body.kind), body.id, sender or self.node)
        return {}

    async def _on_move(self, body: m.IpcMove, sender: str) -> dict[str, Any]:
        entry = await self.directory.move(Kind(body.kind), body.id, body.to)
        out: dict[str, Any] = msgspec.to_builtins(entry)
        return out

    async def _on_hello(self, body: m.IpcHello, sender: str) -> dict[str, Any]:
        self._spawn(self.directory.reconcile(body.node))
        return {}

    async def _on_directory(
        self, body: m.IpcObjects, sender: str
    ) -> list[dict[str, Any]]:
        return self.directory.listing()


def _done(result: Result, message: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"state": "done", "result": encode(result)}
    if message:
        out["message"] = message
    return out
