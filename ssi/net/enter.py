"""Work inside a job's network namespace without forking the daemon: a thread of
its own enters the namespace (setns acts on the calling thread only), does one
thing, such as making a socket (sockets stay in the namespace they were made in),
and ends. The daemon's other threads never change namespace.

pyroute2 enters namespaces by os.fork(), which a threaded daemon must not do.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import TypeVar

import kernel_shim
from kernel_shim import NsType

T = TypeVar("T")

NETLINK_ROUTE = 0


def run_in(netns_path: str, fn: Callable[[], T]) -> T:
    """fn() run in the namespace at `netns_path`; its result, or its exception."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            kernel_shim.setns(netns_path, NsType.NET)
            result.append(fn())
        except BaseException as e:
            failure.append(e)

    t = threading.Thread(target=run, name="in-netns", daemon=True)
    t.start()
    t.join()
    if failure:
        raise failure[0]
    return result[0]


def rtnl_socket(netns_path: str) -> socket.socket:
    """A route netlink socket of the namespace (for pyroute2's IPRoute(fileno=))."""
    return run_in(
        netns_path,
        lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE),
    )
