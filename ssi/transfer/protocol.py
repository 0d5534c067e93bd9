"""The bulk wire protocol: frame kinds, their headers, tunables. No I/O.

Every message is a zmq multipart message `[kind, header]` or, for DATA,
`[kind, header, payload]` (the server's ROUTER socket prefixes the peer's routing
id). `kind` is a short ASCII tag; `header` a msgpack map; `payload` raw bytes.

Push (client sends a directory; the server decides where it lands):

    client (sender)                                server (receiver)
    PUT {v, name, stream, files?, bytes?, chunk} ─▶  policy.incoming(name, key)
                                               ◀─  ACCEPT {window, chunk}  | ERR
    DATA {p, o, last, digest?, mode?} + payload ─▶  (at most `window` unacknowledged)
                                               ◀─  CREDIT {n, acked}   one per chunk
    ...                                              written (+ fsync on last)
    END {files, bytes}                         ─▶  verify counts, rename into place
                                               ◀─  DONE {files, bytes} | ERR

Pull (client fetches a directory the server names):

    GET {v, name, window, chunk}               ─▶  policy.outgoing(name, key)
                                               ◀─  MANIFEST {files, bytes} | ERR
                                               ◀─  DATA ... (within the credit)
    CREDIT {n, acked}                          ─▶
                                               ◀─  END {files, bytes}
    DONE {files, bytes} | ERR                  ─▶

Either side may send ERR {code, message, details} at any time: the transfer is over
and the receiver removes its partial data. PING (empty header) is the server's
liveness probe after `probe_interval` of silence; the client answers with PING.
A file's DATA frames come in order of offset (`o`, starting at 0); its last frame
(`last`, possibly with an empty payload) carries the digest of the whole file
(`digest`, hex SHA-256 tree hash: ssi.digest) and its permission bits
(`mode`). Files may interleave (streaming); a path is never reopened once its last
frame was sent.
"""

from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass
from typing import Any

import msgspec

from ssi.proto.errors import MalformedMessage, VersionMismatch

__all__ = [
    "VERSION",
    "Options",
    "Put",
    "Get",
    "Accept",
    "Manifest",
    "Data",
    "Credit",
    "End",
    "Done",
    "Err",
    "Ping",
    "Header",
    "KINDS",
    "encode",
    "decode",
    "check_relpath",
    "check_name",
]

VERSION = 2  # 1: plain sha256 digests

MiB = 1024 * 1024
MAX_CHUNK = 16 * MiB
MAX_WINDOW = 256
MAX_HEADER = 64 * 1024
MAX_PATH = 4096


@dataclass(frozen=True, slots=True)
class Options:
    """Tunables of a transfer (each side uses its own).

    chunk_size: bytes per DATA frame (the receiver may lower it).
    window: DATA frames in flight; the receiver's memory holds at most
        window × chunk_size of payload, whatever the transfer's size.
    connect_timeout: seconds to reach the peer and finish the CURVE handshake.
    idle_timeout: seconds without any message from the peer before it counts as gone.
    probe_interval: seconds of silence after which the server probes a client.
    """

    chunk_size: int = 1 * MiB
    window: int = 8
    connect_timeout: float = 10.0
    idle_timeout: float = 30.0
    probe_interval: float = 1.0

    def __post_init__(self) -> None:
        if not 4096 <= self.chunk_size <= MAX_CHUNK:
            raise ValueError(f"chunk_size {self.chunk_size}: 4 KiB .. 16 MiB")
        if not 1 <= self.window <= MAX_WINDOW:
            raise ValueError(f"window {self.window}: 1 .. {MAX_WINDOW}")
        if self.connect_timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.probe_interval <= 0:
            raise ValueError("probe_interval must be positive")

    def replace(self, **changes: Any) -> Options:
        return dataclasses.replace(self, **changes)


class Put(msgspec.Struct, frozen=True, tag="PUT"):
    v: int
    name: str
    stream: bool
    chunk: int
    files: int | None = None  # None: not known in advance (streaming)
    bytes: int | None = None


class Get(msgspec.Struct, frozen=True, tag="GET"):
    v: int
    name: str
    window: int
    chunk: int


class Accept(msgspec.Struct, frozen=True, tag="ACCEPT"):
    window: int
    chunk: int


class Manifest(msgspec.Struct, frozen=True, tag="MANIFEST"):
    files: int
    bytes: int


class Data(msgspec.Struct, frozen=True, tag="DATA"):
    p: str
    o: int
    last: bool = False
    digest: str | None = None
    mode: int | None = None


class Credit(msgspec.Struct, frozen=True, tag="CREDIT"):
    n: int
    acked: int  # payload bytes the receiver has written so far


class End(msgspec.Struct, frozen=True, tag="END"):
    files: int
    bytes: int


class Done(msgspec.Struct, frozen=True, tag="DONE"):
    files: int
    bytes: int


class Err(msgspec.Struct, frozen=True, tag="ERR"):
    code: str
    message: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class Ping(msgspec.Struct, frozen=True, tag="PING"):
    pass


Header = Put | Get | Accept | Manifest | Data | Credit | End | Done | Err | Ping
KINDS: dict[bytes, type[Header]] = {
    cls.__struct_config__.tag.encode(): cls  # type: ignore[union-attr]
    for cls in (Put, Get, Accept, Manifest, Data, Credit, End, Done, Err, Ping)
}
_KIND_OF: dict[type[Header], bytes] = {cls: kind for kind, cls in KINDS.items()}
_decoders = {kind: msgspec.msgpack.Decoder(cls) for kind, cls in KINDS.items()}
_encoder = msgspec.msgpack.Encoder()

Buffer = bytes | bytearray | memoryview


def encode(header: Header) -> list[bytes]:
    """The `[kind, header]` frames of a message (append the payload for DATA)."""
    # Structs are encoded as maps without their tag: the kind frame carries it.
    fields = msgspec.structs.asdict(header)
    return [_KIND_OF[type(header)], _encoder.encode(fields)]


def decode(kind: Buffer, header: Buffer) -> Header:
    """The typed header of a message; MalformedMessage for anything unexpected."""
    k = bytes(kind)
    dec = _decoders.get(k)
    if dec is None:
        raise MalformedMessage(f"unknown bulk frame kind {k[:16]!r}")
    if len(header) > MAX_HEADER:
        raise MalformedMessage(f"bulk {k.decode()} header of {len(header)} bytes")
    try:
        msg = dec.decode(header)
    except msgspec.DecodeError as e:
        raise MalformedMessage(f"bad bulk {k.decode()} header: {e}") from None
    if isinstance(msg, Put | Get) and msg.v != VERSION:
        raise VersionMismatch(
            f"bulk protocol {msg.v} (this side speaks {VERSION})",
            details={"theirs": msg.v, "ours": VERSION},
        )
    return msg


def check_relpath(path: str) -> str:
    """`path` if it is a clean relative POSIX path inside the transfer's directory
    ("a/b.img", never "/x", "../x", "a//b", "./a"); else MalformedMessage."""
    if (
        not path
        or len(path) > MAX_PATH
        or "\0" in path
        or path.startswith("/")
        or posixpath.normpath(path) != path
        or path == "."
        or any(part in ("..", ".") for part in path.split("/"))
    ):
        raise MalformedMessage(f"bad file path in transfer: {path[:200]!r}")
    return path


def check_name(name: str) -> str:
    """A transfer name is a relative path too ("job-7/ckpt-3"); MalformedMessage
    otherwise. Names starting with a dot are refused (they are our staging dirs)."""
    check_relpath(name)
    if any(part.startswith(".") for part in name.split("/")):
        raise MalformedMessage(f"bad transfer name: {name[:200]!r}")
    return name
