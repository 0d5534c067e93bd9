"""ssi.transfer: bulk data (checkpoint images, dumps) between nodes, on its own
CURVE socket, never through the control channel.

    node A                                             node B (ssid)
    send_dir(src, name) ──PUT/DATA…/END──▶ BulkServer ─▶ policy.incoming(name) → path
    send_stream(items)  ──(files as produced)──▶        Staging: .path.partial-x/
    send_following(dir) ──(a dir while it is written)──▶
    fetch_dir(name, dest) ◀──DATA…/END── BulkServer ◀─ policy.outgoing(name)
                         ◀── CREDIT (receiver → sender: one per chunk written) ──

Chunks of `Options.chunk_size` (1 MiB), at most `Options.window` (8) in flight: the
memory of both sides is bounded whatever the size. Every file's digest (SHA-256 tree
hash, ssi.digest, as in checkpoint manifests) is checked on arrival; the
receiver renames the directory into place only when all files are verified and
fsync'ed, so a failed or interrupted transfer leaves nothing that looks complete.
protocol.py has the frames; engine.py the sender and receiver halves;
files.py the disk side; link.py the sockets; server.py and client.py the two ends;
stream.py sources for send_stream (pipes, FIFOs).
"""

from ssi.transfer.client import fetch_dir, send_dir, send_following, send_stream
from ssi.transfer.engine import Progress, TransferStats
from ssi.transfer.errors import ChecksumMismatch, NoSpace, PeerGone, TransferError
from ssi.transfer.files import sweep_partials
from ssi.transfer.follow import Finished
from ssi.transfer.protocol import Options
from ssi.transfer.server import BulkPolicy, BulkServer, RootDirs
from ssi.transfer.stream import chain, merge, pipe_pieces

__all__ = [
    "BulkPolicy",
    "BulkServer",
    "ChecksumMismatch",
    "Finished",
    "NoSpace",
    "Options",
    "PeerGone",
    "Progress",
    "RootDirs",
    "TransferError",
    "TransferStats",
    "chain",
    "fetch_dir",
    "merge",
    "pipe_pieces",
    "send_dir",
    "send_following",
    "send_stream",
    "sweep_partials",
]
