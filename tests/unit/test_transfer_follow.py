"""send_following over real sockets: a directory copied while a writer still fills
it (as CRIU writes a dump) arrives whole, its growing files sent before the writer
is done; a writer's failure or a wrong digest leaves nothing on the receiver."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_transfer_roundtrip import (
    CLIENT,
    SMALL,
    Env,
    run,
    serving,
    tree,
    wait_idle,
)

from ssi.digest import TreeHash
from ssi.proto.errors import BadRequest
from ssi.transfer import ChecksumMismatch, Finished, TransferStats, send_following

MiB = 1 << 20
PAGES = re.compile(r"^pages-\d+\.img$")


def grows(name: str) -> bool:
    return PAGES.match(name) is not None


def write_slowly(staging: Path, pieces: int, stop: threading.Event) -> None:
    """Append random pieces to two page images, as CRIU would, until told."""
    with (
        open(staging / "pages-1.img", "wb") as a,
        open(staging / "pages-2.img", "wb") as b,
    ):
        for i in range(pieces):
            (a if i % 3 else b).write(os.urandom(97 * 1024 + i))
            a.flush()
            b.flush()
            time.sleep(0.01)
            if stop.is_set():
                raise RuntimeError("writer told to stop")
    (staging / "core-1.img").write_bytes(os.urandom(5000))
    (staging / "pagemap-1.img").write_bytes(b"")


def digests(root: Path) -> dict[str, str]:
    return {p.name: TreeHash(p.read_bytes()).hexdigest() for p in root.iterdir()}


def following(
    env: Env, staging: Path, name: str, **kw: Any
) -> tuple[asyncio.Future[Finished], asyncio.Task[TransferStats]]:
    """A send_following of `staging` under way, and the future that ends it."""
    done: asyncio.Future[Finished] = asyncio.get_running_loop().create_future()
    send = asyncio.create_task(
        send_following(
            env.endpoint, env.key, CLIENT, staging, grows, done, name,
            options=SMALL, **kw,
        )
    )  # fmt: skip
    return done, send


def test_a_growing_directory_arrives_whole(tmp_path: Path) -> None:
    staging, final = tmp_path / ".dump.partial", tmp_path / "dump"
    staging.mkdir()
    seen_before_done: list[int] = []

    async def main() -> None:
        env = await serving(tmp_path)
        finished = False

        def progress(n: int, _total: int | None) -> None:
            if not finished:
                seen_before_done.append(n)

        try:
            done, send = following(env, staging, "ckpt-1", progress=progress)
            await asyncio.to_thread(write_slowly, staging, 60, threading.Event())
            os.rename(staging, final)  # the writer renames when whole, as ours does
            finished = True
            done.set_result(Finished(final, digests(final)))
            stats = await send
            assert stats.files == 4
        finally:
            await env.server.close()

    run(main())
    assert tree(tmp_path / "in" / "ckpt-1") == tree(final)
    # The copy overlapped the writing: most bytes were taken before it ended.
    assert seen_before_done and max(seen_before_done) > 3 * MiB


def test_a_failed_writer_leaves_nothing(tmp_path: Path) -> None:
    staging = tmp_path / ".dump.partial"
    staging.mkdir()

    async def main() -> None:
        env = await serving(tmp_path)
        try:
            done, send = following(env, staging, "ckpt-2")
            stop = threading.Event()
            stop.set()
            with pytest.raises(RuntimeError, match="told to stop"):
                await asyncio.to_thread(write_slowly, staging, 10, stop)
            done.set_exception(RuntimeError("CRIU failed: no space"))
            with pytest.raises(RuntimeError, match="no space"):
                await send
            await wait_idle(env.server)
        finally:
            await env.server.close()

    run(main())
    assert os.listdir(tmp_path / "in") == []


@pytest.mark.parametrize("lie", ["wrong", "missing"])
def test_digests_are_checked_end_to_end(tmp_path: Path, lie: str) -> None:
    """The last frame of a followed file carries the writer's digest: if it does not
    match what was read while the file grew, the receiver refuses the lot."""
    staging = tmp_path / ".dump.partial"
    staging.mkdir()

    async def main() -> None:
        env = await serving(tmp_path)
        try:
            done, send = following(env, staging, "ckpt-3")
            await asyncio.to_thread(write_slowly, staging, 10, threading.Event())
            sums = digests(staging)
            if lie == "wrong":
                sums["pages-1.img"] = TreeHash(b"other").hexdigest()
            else:
                del sums["pages-2.img"]
            done.set_result(Finished(staging, sums))
            expected = ChecksumMismatch if lie == "wrong" else BadRequest
            with pytest.raises(expected):
                await send
            await wait_idle(env.server)
        finally:
            await env.server.close()

    run(main())
    assert os.listdir(tmp_path / "in") == []
