"""Bulk transfer between two network namespaces: ssi.transfer against bare TCP and
bare zmq, measured in the same run, as ratios.

    node1 (sender) ──veth─bridge─veth──▶ node2 (receiver), image dirs in /dev/shm
    tcp          socket.sendfile() per file ─▶ recv_into + write        (the floor)
    zmq plain    PAIR, chunks copy=False, HWM = window ─▶ write           (no crypto)
    zmq curve    the same with CURVE                                      (crypto cost)
    ssi push     send_dir: CURVE + credit + digest both sides + fsync + rename
                 (digest: SHA-256 tree hash, ssi.digest, as in manifests)
    ssi push*    the same with the manifest's checksums given (no hashing on the sender)
    ssi fetch    fetch_dir from node2's BulkServer into node1

Every receiver writes the files to /dev/shm and acknowledges the end; time is taken
by the sender from connect to that acknowledgement. CPU is the user+system seconds of
both processes. Before each run the memory it will write is touched once (--no-warm
to skip): on this VM a tmpfs page first touched costs ~3 µs (≈300 MB/s), which
otherwise drowns the differences between methods.

Run: .venv/bin/python benchmarks/bench_transfer.py [--sizes 100,1000] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import select
import shutil
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MiB = 1 << 20
PORT = 7702
HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def say(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def files_of(src: Path) -> list[Path]:
    return sorted(p for p in src.iterdir() if p.is_file())


# --- roles: bare TCP ------------------------------------------------------------------


def tcp_recv(port: int, dest: Path, chunk: int) -> None:
    lsock = socket.create_server(("0.0.0.0", port), reuse_port=True)
    say({"ready": True})
    cpu0 = cpu_self()
    conn, _ = lsock.accept()
    dest.mkdir(parents=True)
    buf = bytearray(chunk)
    view = memoryview(buf)
    f = conn.makefile("rb", buffering=0)
    total = 0
    while True:
        (nlen,) = struct.unpack("!H", f.read(2))
        if nlen == 0:
            break
        name = f.read(nlen).decode()
        (size,) = struct.unpack("!Q", f.read(8))
        fd = os.open(dest / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        left = size
        while left:
            n = conn.recv_into(view[: min(chunk, left)])
            if not n:
                raise EOFError("sender vanished")
            os.write(fd, view[:n])
            left -= n
        os.fsync(fd)
        os.close(fd)
        total += size
    conn.sendall(b"k")
    conn.close()
    say({"bytes": total, "cpu": cpu_self() - cpu0})


def tcp_send(host: str, port: int, src: Path) -> None:
    cpu0 = cpu_self()
    t = time.perf_counter()
    sock = socket.create_connection((host, port))
    total = 0
    for p in files_of(src):
        name = p.name.encode()
        size = p.stat().st_size
        sock.sendall(struct.pack("!H", len(name)) + name + struct.pack("!Q", size))
        with open(p, "rb") as f:
            if size:
                sock.sendfile(f)
        total += size
    sock.sendall(struct.pack("!H", 0))
    assert sock.recv(1) == b"k"
    seconds = time.perf_counter() - t
    say({"bytes": total, "seconds": seconds, "cpu": cpu_self() - cpu0})


# --- roles: bare zmq (PAIR), plain or CURVE -------------------------------------------


def zmq_socket(ctx: zmq.Context[Any], window: int) -> zmq.Socket[Any]:
    s = ctx.socket(zmq.PAIR)
    s.setsockopt(zmq.LINGER, 1000)
    s.setsockopt(zmq.SNDHWM, window)
    s.setsockopt(zmq.RCVHWM, window)
    return s


def zmq_recv(port: int, dest: Path, window: int, secret: str) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    s = zmq_socket(ctx, window)
    if secret:
        s.curve_server = True
        s.curve_secretkey = secret.encode()
    s.bind(f"tcp://0.0.0.0:{port}")
    say({"ready": True})
    cpu0 = cpu_self()
    dest.mkdir(parents=True)
    fds: dict[bytes, int] = {}
    total = 0
    while True:
        name, flag, data = s.recv_multipart(copy=False)
        if flag.bytes == b"E":
            break
        key = name.bytes
        fd = fds.get(key)
        if fd is None:
            fd = fds[key] = os.open(
                dest / key.decode(), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
            )
        os.write(fd, data.buffer)
        total += len(data.buffer)
        if flag.bytes == b"L":
            os.fsync(fd)
            os.close(fds.pop(key))
    s.send(b"k")
    s.close()
    ctx.term()
    say({"bytes": total, "cpu": cpu_self() - cpu0})


def zmq_send(
    host: str, port: int, src: Path, chunk: int, window: int, key: str
) -> None:
    cpu0 = cpu_self()
    ctx: zmq.Context[Any] = zmq.Context()
    t = time.perf_counter()
    s = zmq_socket(ctx, window)
    if key:
        pub, sec = zmq.curve_keypair()
        s.curve_serverkey = key.encode()
        s.curve_publickey, s.curve_secretkey = pub, sec
    s.connect(f"tcp://{host}:{port}")
    total = 0
    for p in files_of(src):
        name = p.name.encode()
        fd = os.open(p, os.O_RDONLY)
        data = os.read(fd, chunk)
        while True:
            nxt = os.read(fd, chunk) if len(data) == chunk else b""
            s.send_multipart([name, b"L" if not nxt else b"M", data], copy=False)
            total += len(data)
            if not nxt:
                break
            data = nxt
        os.close(fd)
    s.send_multipart([b"", b"E", b""])
    assert s.recv() == b"k"
    seconds = time.perf_counter() - t
    s.close()
    ctx.term()
    say({"bytes": total, "seconds": seconds, "cpu": cpu_self() - cpu0})


# --- roles: ssi.transfer client -------------------------------------------------------


def ssi_client(args: argparse.Namespace) -> None:
    from ssi.rpc.keys import load_or_create_keypair
    from ssi.transfer import Options, fetch_dir, send_dir
    from ssi.transfer.files import list_files

    keypair = load_or_create_keypair(args.key_dir)
    options = Options(chunk_size=args.chunk, window=args.window)
    known = json.loads(args.known) if args.known else None

    async def go() -> Any:
        if args.role == "ssi-fetch":
            return await fetch_dir(
                args.endpoint,
                args.server_key,
                keypair,
                args.name,
                Path(args.dest),
                options=options,
            )
        return await send_dir(
            args.endpoint,
            args.server_key,
            keypair,
            Path(args.src),
            args.name,
            checksums=known,
            options=options,
        )

    list_files  # noqa: B018  (imported before timing starts)
    cpu0 = cpu_self()
    stats = asyncio.run(go())
    say({"bytes": stats.bytes, "seconds": stats.seconds, "cpu": cpu_self() - cpu0})


# --- the conductor --------------------------------------------------------------------


def read_json(fd: int, timeout: float, what: str) -> dict[str, Any]:
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, left))
        if not ready:
            raise TimeoutError(f"timed out waiting for {what}")
        more = os.read(fd, 65536)
        if not more:
            raise RuntimeError(f"{what}: process ended without output")
        buf += more
    line: dict[str, Any] = json.loads(buf.decode().splitlines()[-1])
    return line


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from ssi.local.testing import make_cluster
        from ssi.rpc.keys import load_or_create_keypair

        self.args = args
        self.work = Path(f"/dev/shm/ssi-bench-transfer-{os.getpid()}")
        self.work.mkdir()
        self.cluster = make_cluster(2)
        self.dest_host = self.cluster.node("node2").address
        self.client_keys = self.work / "client-keys"
        self.client = load_or_create_keypair(self.client_keys)
        self.ssi_server: int | None = None
        self.ssi_key = ""
        self.ssi_cpu = 0.0
        self.curve_pub, self.curve_sec = (k.decode() for k in zmq.curve_keypair())

    def spawn(self, node: str, argv: list[str]) -> tuple[int, int]:
        r, w = os.pipe()
        try:
            pid = self.cluster.spawn(node, argv, cwd=str(REPO), stdout=w)
        finally:
            os.close(w)
        return pid, r

    def role(self, node: str, *args: str) -> tuple[int, int]:
        return self.spawn(node, [sys.executable, str(HERE), "--role", *args])

    def make_images(self, size_mb: int) -> Path:
        """A CRIU-like image dir: one big pages file and the usual small ones."""
        from ssi.digest import digest_file

        src = self.work / f"src-{size_mb}"
        src.mkdir()
        small = {
            "core-1.img": 4096,
            "mm-1.img": 2048,
            "pagemap-1.img": 64 * 1024,
            "pstree.img": 64,
            "fdinfo-2.img": 512,
            "files.img": 3000,
            "inventory.img": 50,
        }
        for name, n in small.items():
            (src / name).write_bytes(os.urandom(n))
        block = os.urandom(4 * MiB)
        left = size_mb * 10**6 - sum(small.values())
        with open(src / "pages-1.img", "wb") as f:
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= len(block)
        self.known = json.dumps(
            {p.name: digest_file(p) for p in files_of(src)}, separators=(",", ":")
        )
        return src

    def warm(self, nbytes: int) -> None:
        if self.args.no_warm:
            return
        path = self.work / "warm"
        block = bytes(4 * MiB)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            for _ in range(int(nbytes * 1.1) // len(block) + 1):
                os.write(fd, block)
        finally:
            os.close(fd)
            path.unlink()

    def start_ssi_server(self) -> None:
        pid, fd = self.spawn(
            "node2",
            [
                sys.executable,
                "-m",
                "ssi.transfer",
                "serve",
                "--listen",
                f"tcp://0.0.0.0:{PORT + 1}",
                "--key-dir",
                str(self.work / "server-keys"),
                f"--allow={self.client.public.decode()}",
                "--incoming",
                str(self.work / "in"),
                "--outgoing",
                str(self.work),
                "--chunk",
                str(self.args.chunk),
                "--window",
                str(self.args.window),
            ],
        )
        info = read_json(fd, 30, "ssi bulk server")
        os.close(fd)
        self.ssi_server = pid
        self.ssi_key = info["key"]

    def one(self, method: str, src: Path, size: int) -> dict[str, float]:
        a = self.args
        dest = self.work / "dst"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.rmtree(self.work / "in", ignore_errors=True)
        self.warm(size)
        host = self.dest_host
        recv: tuple[int, int] | None = None
        before = 0.0
        if method == "tcp":
            recv = self.role("node2", "tcp-recv", str(PORT), str(dest), str(a.chunk))
            read_json(recv[1], 30, "tcp receiver")
            send = self.role("node1", "tcp-send", host, str(PORT), str(src))
        elif method.startswith("zmq"):
            sec = self.curve_sec if method == "zmq curve" else ""
            pub = self.curve_pub if method == "zmq curve" else ""
            recv = self.role(
                "node2", "zmq-recv", str(PORT), str(dest), str(a.window), sec
            )
            read_json(recv[1], 30, "zmq receiver")
            send = self.role(
                "node1",
                "zmq-send",
                host,
                str(PORT),
                str(src),
                str(a.chunk),
                str(a.window),
                pub,
            )
        else:
            assert self.ssi_server is not None
            before = proc_cpu(self.ssi_server)
            common = [
                f"tcp://{host}:{PORT + 1}",
                f"--server-key={self.ssi_key}",
                f"--key-dir={self.client_keys}",
                f"--chunk={a.chunk}",
                f"--window={a.window}",
            ]
            if method == "ssi fetch":
                send = self.role(
                    "node1",
                    "ssi-fetch",
                    *common,
                    f"--name={src.name}",
                    f"--dest={dest}",
                )
            else:
                known = [f"--known={self.known}"] if method == "ssi push*" else []
                send = self.role(
                    "node1",
                    "ssi-send",
                    *common,
                    f"--src={src}",
                    f"--name={method.split()[1].strip('*')}",
                    *known,
                )
        result = read_json(send[1], 600, f"{method} sender")
        os.close(send[1])
        assert self.cluster.wait(send[0], 30) == 0
        if recv is not None:
            rres = read_json(recv[1], 60, f"{method} receiver")
            os.close(recv[1])
            assert self.cluster.wait(recv[0], 30) == 0
            other = float(rres["cpu"])
            assert rres["bytes"] == result["bytes"]
        else:
            assert self.ssi_server is not None
            other = proc_cpu(self.ssi_server) - before
        return {
            "mb_per_s": result["bytes"] / 1e6 / result["seconds"],
            "seconds": result["seconds"],
            "cpu_s": float(result["cpu"]) + other,
        }

    def close(self) -> None:
        if self.ssi_server is not None:
            self.cluster.kill(self.ssi_server)
            self.cluster.wait(self.ssi_server, 10)
        self.cluster.down()
        shutil.rmtree(self.work, ignore_errors=True)


METHODS = ["tcp", "zmq plain", "zmq curve", "ssi push", "ssi push*", "ssi fetch"]


def conduct(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = [m for m in METHODS if not args.only or m in args.only.split(",")]
    bench = Bench(args)
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        bench.start_ssi_server()
        for size in sizes:
            src = bench.make_images(size)
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
            for _ in range(args.repeat):  # interleaved: a busy moment hits all alike
                for method in methods:
                    runs[method].append(bench.one(method, src, size * 10**6))
            row = {m: max(r, key=lambda x: x["mb_per_s"]) for m, r in runs.items()}
            results[f"{size} MB"] = row
            shutil.rmtree(src)
    finally:
        bench.close()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"chunk {args.chunk // 1024} KiB, window {args.window}, best of {args.repeat}, "
        f"node1 → node2 over veth, files in /dev/shm, 2 CPUs shared by both ends"
    )
    for size, row in results.items():
        print(f"\n{size}")
        print(
            f"  {'method':<10} {'MB/s':>7} {'seconds':>8} {'CPU s':>6} {'MB/CPU s':>9}"
        )
        for method, r in row.items():
            per_cpu = float(size.split()[0]) / r["cpu_s"]
            print(
                f"  {method:<10} {r['mb_per_s']:7.0f} {r['seconds']:8.2f} "
                f"{r['cpu_s']:6.2f} {per_cpu:9.0f}"
            )

        def ratio(a: str, b: str, row: dict[str, dict[str, float]] = row) -> str:
            if a in row and b in row:
                return f"{row[a]['mb_per_s'] / row[b]['mb_per_s']:.2f}"
            return "-"

        print(
            f"  ratios: ssi push / tcp {ratio('ssi push', 'tcp')}, "
            f"ssi push / zmq curve {ratio('ssi push', 'zmq curve')}, "
            f"zmq curve / zmq plain {ratio('zmq curve', 'zmq plain')}, "
            f"zmq plain / tcp {ratio('zmq plain', 'tcp')}, "
            f"ssi push* / ssi push {ratio('ssi push*', 'ssi push')}"
        )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="100,1000", help="MB per image set")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=1 * MiB)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--only", default="", help=f"comma-separated of {METHODS}")
    ap.add_argument("--no-warm", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--server-key", help=argparse.SUPPRESS)
    ap.add_argument("--key-dir", help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--dest", help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    ap.add_argument("--known", help=argparse.SUPPRESS)
    args = ap.parse_args()
    r = args.rest
    if args.role == "tcp-recv":
        tcp_recv(int(r[0]), Path(r[1]), int(r[2]))
    elif args.role == "tcp-send":
        tcp_send(r[0], int(r[1]), Path(r[2]))
    elif args.role == "zmq-recv":
        zmq_recv(int(r[0]), Path(r[1]), int(r[2]), r[3] if len(r) > 3 else "")
    elif args.role == "zmq-send":
        zmq_send(
            r[0],
            int(r[1]),
            Path(r[2]),
            int(r[3]),
            int(r[4]),
            r[5] if len(r) > 5 else "",
        )
    elif args.role in ("ssi-send", "ssi-fetch"):
        args.endpoint = r[0]
        ssi_client(args)
    elif args.role:
        raise SystemExit(f"unknown role {args.role}")
    else:
        return conduct(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
