"""The network lock of a job's namespace while CRIU restores its TCP connections.

A restored connection must not see a packet before its socket exists: the kernel
would answer with a reset. CRIU locks a namespace it restores itself, but not one
it joins (an external one, ours): so the target builds the lock before CRIU starts,
as the very table CRIU's dump made and CRIU's restore deletes once the sockets are
back ("inet CRIU-<run id of the dump>", cut as CRIU cuts it: 31 characters with
the family). Only CRIU's own repair-mode packets (SOCCR_MARK) pass.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pycriu

import kernel_shim

SOCCR_MARK = 0xC114  # soccr/soccr.h: the mark of CRIU's repair-mode packets
_TABLE_NAME_MAX = 31 - len("inet ")  # CRIU's char table[32], with the family
_SEARCH = "/usr/sbin:/sbin:/usr/bin:/bin"


class LockError(OSError):
    pass


def criu_table(images_dir: Path) -> str:
    """The name of the lock table CRIU lifts when it restores `images_dir`."""
    try:
        with open(images_dir / "inventory.img", "rb") as f:
            entry = pycriu.images.load(f)["entries"][0]
    except (OSError, KeyError, IndexError, ValueError) as e:
        raise LockError(f"cannot read {images_dir}/inventory.img: {e}") from None
    run_id = entry.get("dump_criu_run_id", "")
    if not run_id:
        raise LockError(f"{images_dir}: no dump run id (a CRIU older than 3.19?)")
    return f"CRIU-{run_id}"[:_TABLE_NAME_MAX]


def ruleset(table: str) -> str:
    drop = f"policy drop; meta mark {SOCCR_MARK:#x} accept;"
    return (
        f"table inet {table} {{\n"
        f"  chain output {{ type filter hook output priority 0; {drop} }}\n"
        f"  chain input {{ type filter hook input priority 0; {drop} }}\n"
        "}\n"
    )


def lock(netns_path: str, table: str) -> None:
    """Drop every packet in and out of the namespace but CRIU's (LockError)."""
    _nft(netns_path, ruleset(table))


def clear(netns_path: str) -> list[str]:
    """Delete every CRIU lock table of the namespace (a dump cut short may leave
    its own): the job is to run on here. Returns the tables deleted."""
    tables = [
        line.split()[2]
        for line in _nft(netns_path, "list tables\n").splitlines()
        if line.startswith("table inet CRIU-")
    ]
    if tables:
        _nft(netns_path, "".join(f"delete table inet {t}\n" for t in tables))
    return tables


def _nft(netns_path: str, script: str) -> str:
    """Run an nft script in the namespace; its output (LockError on failure)."""
    nft = shutil.which("nft", path=_SEARCH + os.pathsep + os.environ.get("PATH", ""))
    if nft is None:
        raise LockError("nft is missing (Debian package nftables): run make setup")
    data = script.encode()
    r, w = os.pipe2(os.O_CLOEXEC)
    er, ew = os.pipe2(os.O_CLOEXEC)
    try:
        os.write(w, data)  # a few hundred bytes: the pipe holds them
        os.close(w)
        w = -1
        pid = kernel_shim.spawn(
            [nft, "-f", "-"],
            netns=netns_path,
            stdin=r,
            stdout=ew,
            stderr=ew,
            new_session=False,
        )
        os.close(ew)
        ew = -1
        err = b""
        while chunk := os.read(er, 4096):
            err += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        for fd in (r, w, er, ew):
            if fd >= 0:
                os.close(fd)
    if os.waitstatus_to_exitcode(status) != 0:
        why = err.decode(errors="replace").strip().splitlines()
        raise LockError(f"nft in {netns_path}: {why[-1] if why else status}")
    return err.decode(errors="replace")
