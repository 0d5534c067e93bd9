"""The coordinator's half of `--net private`: each such job gets an address of the
cluster's [net] pool when it is submitted, kept on its record (spec["net"]) so that
it moves with the job, and free again once the job has ended.

    submit(net="private") ─▶ check: the pool is set and sound
                          ─▶ take: lowest address no live job and no node holds
"""

from __future__ import annotations

from collections.abc import Sequence

from ssi.cluster.store import StateStore
from ssi.config import Config
from ssi.net.addresses import AddressPool, PoolError
from ssi.proto import messages as m
from ssi.proto.errors import BadRequest, Conflict

NET_MODES = ("", "host", "private")


class JobAddresses:
    def __init__(self, cfg: Config, store: StateStore) -> None:
        self.pool_text = cfg.net.pool
        self.store = store

    def check(self, body: m.JobSubmit) -> None:
        """BadRequest for a mode we do not know or a pool we cannot use."""
        if body.net not in NET_MODES:
            raise BadRequest(
                f"--net {body.net!r}: use host (the node's network) or private"
            )
        if body.net == "private":
            if body.cluster_ipc:  # its interposer talks to @ssi-ipc of the node's netns
                raise BadRequest(
                    "--cluster-ipc and --net private do not go together yet: cluster "
                    "IPC is served on the node's network namespace"
                )
            self._pool()

    def _pool(self) -> AddressPool:
        try:
            return AddressPool.parse(self.pool_text)
        except PoolError as e:
            raise BadRequest(f"--net private is not available: {e}") from None

    def assign(self, bodies: Sequence[m.JobSubmit]) -> list[str]:
        """An address for each body asking for a private network ("" for the
        others), all or none: Conflict when the pool runs out."""
        wanted = [b.net == "private" for b in bodies]
        if not any(wanted):
            return ["" for _ in bodies]
        pool = self._pool()
        taken = {n.address for n in self.store.nodes()}
        taken |= {held for job in self.store.jobs() if (held := address_of(job.spec))}
        out = []
        for want in wanted:
            if not want:
                out.append("")
                continue
            try:
                address = pool.take(taken)
            except PoolError as e:
                raise Conflict(f"--net private: {e}") from None
            taken.add(address)
            out.append(address)
        return out


def address_of(spec: dict[str, object]) -> str:
    """The job's own address, "" for a job on its node's network."""
    net = spec.get("net")
    return str(net.get("address", "")) if isinstance(net, dict) else ""
