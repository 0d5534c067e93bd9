"""What an agent remembers of its cluster across restarts (membership.json)."""

from __future__ import annotations

import enum
import os
from pathlib import Path

import msgspec


class Role(enum.StrEnum):
    COORDINATOR = "coordinator"
    MEMBER = "member"


class MembershipFile(msgspec.Struct, frozen=True):
    cluster: str
    role: Role
    coordinator: str  # node name
    coordinator_address: str
    coordinator_port: int  # the cluster (not join) port
    coordinator_key: str  # z85

    @staticmethod
    def path(state_dir: str | Path) -> Path:
        return Path(state_dir) / "membership.json"

    @classmethod
    def load(cls, state_dir: str | Path) -> MembershipFile | None:
        try:
            return msgspec.json.decode(cls.path(state_dir).read_bytes(), type=cls)
        except FileNotFoundError:
            return None

    def save(self, state_dir: str | Path) -> None:
        path = self.path(state_dir)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(self))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def remove(cls, state_dir: str | Path) -> None:
        cls.path(state_dir).unlink(missing_ok=True)
