"""A stand-alone bulk server and client, for tests, benchmarks and admins' checks.

    python -m ssi.transfer serve --listen tcp://0.0.0.0:7072 --key-dir D \\
        --allow=PUBKEY [--allow=...] [--incoming DIR] [--outgoing DIR ...]
    python -m ssi.transfer send ENDPOINT SRC NAME --server-key=KEY --key-dir D
    python -m ssi.transfer fetch ENDPOINT NAME DEST --server-key=KEY --key-dir D

Keys are Z85 and may start with "-": always give them as --allow=KEY, --server-key=KEY.

`serve` prints one JSON line {"endpoint", "key", "pid"} once it listens, and runs
until SIGTERM or SIGINT. `send` and `fetch` print the TransferStats as JSON; on
failure, {"error": code, "message": ...} and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from ssi.proto.errors import SsiError
from ssi.rpc.keys import load_or_create_keypair
from ssi.transfer.client import fetch_dir, send_dir
from ssi.transfer.engine import TransferStats
from ssi.transfer.protocol import Options
from ssi.transfer.server import BulkServer, RootDirs


def _options(args: argparse.Namespace) -> Options:
    return Options(chunk_size=args.chunk, window=args.window)


async def _serve(args: argparse.Namespace) -> int:
    keypair = load_or_create_keypair(args.key_dir)
    allowed = {k.encode() for k in args.allow}
    policy = RootDirs(
        Path(args.incoming) if args.incoming else None,
        [Path(d) for d in args.outgoing],
    )
    server = BulkServer(
        None,
        args.listen,
        keypair,
        allowed.__contains__,
        policy,
        options=_options(args),
    )
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    line = {"endpoint": server.endpoint, "key": keypair.public.decode()}
    print(json.dumps({**line, "pid": os.getpid()}), flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()
    return 0


def _report(stats: TransferStats) -> None:
    out = {
        "bytes": stats.bytes,
        "files": stats.files,
        "seconds": stats.seconds,
        "mb_per_s": stats.mb_per_s,
    }
    print(json.dumps(out), flush=True)


async def _client(args: argparse.Namespace) -> int:
    keypair = load_or_create_keypair(args.key_dir)
    try:
        if args.cmd == "send":
            stats = await send_dir(
                args.endpoint,
                args.server_key,
                keypair,
                Path(args.src),
                args.name,
                options=_options(args),
            )
        else:
            stats = await fetch_dir(
                args.endpoint,
                args.server_key,
                keypair,
                args.name,
                Path(args.dest),
                options=_options(args),
            )
    except SsiError as e:
        print(json.dumps({"error": e.code, "message": str(e)}), flush=True)
        return 1
    _report(stats)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ssi.transfer", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--key-dir", required=True, help="this side's CURVE keys")
        sp.add_argument("--chunk", type=int, default=Options().chunk_size)
        sp.add_argument("--window", type=int, default=Options().window)

    sp = sub.add_parser("serve")
    common(sp)
    sp.add_argument("--listen", required=True)
    sp.add_argument("--allow", action="append", default=[], help="a client's key")
    sp.add_argument("--incoming", help="where pushed directories land")
    sp.add_argument("--outgoing", action="append", default=[], help="served dirs")
    sp = sub.add_parser("send")
    common(sp)
    sp.add_argument("endpoint")
    sp.add_argument("--server-key", required=True)
    sp.add_argument("src")
    sp.add_argument("name")
    sp = sub.add_parser("fetch")
    common(sp)
    sp.add_argument("endpoint")
    sp.add_argument("--server-key", required=True)
    sp.add_argument("name")
    sp.add_argument("dest")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if args.cmd == "serve":
        return asyncio.run(_serve(args))
    return asyncio.run(_client(args))


if __name__ == "__main__":
    sys.exit(main())
