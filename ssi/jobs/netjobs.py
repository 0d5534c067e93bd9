"""The job runtime's network half: what a `--net private` job (JobSpec.net) needs
at each step of its life on a node. Jobs without one pass through untouched.

    start:      networks.create ──▶ the init spawned into the namespace (setns NET)
    dump:       CRIU --external net[ino]:key, --tcp-established, nftables lock
    a move out: cut (link down) before the dump ── settle: moved ▶ forget removes the
                namespace; not moved ▶ reconnect (link up, gratuitous ARP)
    restore:    create(locked as CRIU's dump was) ──▶ CRIU joins it (inherit_fd) and
                lifts the lock once the sockets are back ──▶ announce
    forget, failed start or restore: the namespace is removed
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssi.checkpoint import NetworkLock
from ssi.jobs.local import LocalJob
from ssi.net.jobnet import EXTERNAL_KEY, JobNetworks, NetUnavailable
from ssi.net.lock import LockError, criu_table
from ssi.proto.errors import Internal

if TYPE_CHECKING:
    from ssi.jobs.runtime import JobRuntime

log = logging.getLogger(__name__)


def networks(rt: JobRuntime) -> JobNetworks:
    """The node's job networks, or NetUnavailable saying why there are none."""
    if rt.networks is None:
        raise NetUnavailable(f"node {rt.node} cannot give jobs a network of their own")
    return rt.networks


def create(rt: JobRuntime, job: LocalJob) -> str | None:
    """A new job's namespace (its path), None for a job on the node's network."""
    net = job.spec.net
    if net is None:
        return None
    try:
        return networks(rt).create(job.job_id, net.address)
    except OSError as e:
        raise Internal(f"cannot give job {job.job_id} its network: {e}") from None


def dump_extras(job: LocalJob) -> dict[str, Any]:
    """DumpOptions fields: CRIU leaves the job's namespace (and its interfaces) to
    us, dumps its TCP connections, and locks it with nftables while it does."""
    if job.spec.net is None:
        return {}
    return {
        "external": (JobNetworks.external(job.init_pid),),
        "tcp_established": True,
        "network_lock": NetworkLock.NFTABLES,
    }


def cut(rt: JobRuntime, job: LocalJob) -> bool:
    """Before a dump the job does not outlive here (a move, a stopping checkpoint):
    no packet may reach the copy that stays behind, nor leave it. True if cut."""
    if job.spec.net is None:
        return False
    networks(rt).cut(job.job_id)
    return True


def reconnect(rt: JobRuntime, job: LocalJob) -> None:
    """The job runs on here after all: its network back (never raises: logged)."""
    net = job.spec.net
    if net is None or rt.networks is None:
        return
    try:
        rt.networks.reconnect(job.job_id, net.address)
    except (OSError, NetUnavailable) as e:
        log.error("op=net.reconnect job=%s failed: %s", job.job_id, e)


def prepare_restore(rt: JobRuntime, job: LocalJob, images: Path) -> dict[str, Any]:
    """RestoreOptions fields: the namespace the restore joins, built and locked
    here, handed to CRIU as an fd (held until restored() or remove()). {} for a
    job on the node's network."""
    net = job.spec.net
    if net is None:
        return {}
    nets = networks(rt)
    try:
        table = criu_table(images)
    except LockError as e:
        raise NetUnavailable(
            f"cannot restore the network of job {job.job_id}: {e}"
        ) from None
    try:
        nets.create(job.job_id, net.address, lock_table=table)
        fd = nets.hold(job.job_id)
    except OSError as e:
        nets.remove(job.job_id)
        raise Internal(f"cannot give job {job.job_id} its network: {e}") from None
    return {"inherit_fd": ((EXTERNAL_KEY, fd),), "tcp_established": True}


def restored(rt: JobRuntime, job: LocalJob) -> None:
    """After CRIU: the fd let go; the cluster told where the address lives now."""
    net = job.spec.net
    if net is None or rt.networks is None:
        return
    rt.networks.release(job.job_id)
    try:
        rt.networks.announce(job.job_id, net.address)
    except OSError as e:  # peers learn it from the job's next packet instead
        log.warning("op=net.announce job=%s failed: %s", job.job_id, e)


def remove(rt: JobRuntime, job_id: str) -> None:
    """Whatever namespace the job has here goes (never raises: logged)."""
    if rt.networks is None:
        return
    try:
        rt.networks.remove(job_id)
    except OSError as e:
        log.error("op=net.remove job=%s failed: %s", job_id, e)
