"""ssi.checkpoint.swrk.named_fds: which fds go along with a request to a spare
`criu swrk`, in the order CRIU (patch 0006) takes them."""

from __future__ import annotations

from pycriu import rpc_pb2 as rpc

from ssi.checkpoint.swrk import named_fds


def request(*, ps_fd: int | None = None, inherit: tuple[int, ...] = ()) -> rpc.criu_req:
    req = rpc.criu_req()
    req.type = rpc.RESTORE
    if ps_fd is not None:
        req.opts.ps.port = 0
        req.opts.ps.fd = ps_fd
    for i, fd in enumerate(inherit):
        inh = req.opts.inherit_fd.add()
        inh.key = f"k{i}"
        inh.fd = fd
    return req


def test_none() -> None:
    assert named_fds(request()) == ()


def test_page_server_socket_first_then_inherited_in_order() -> None:
    assert named_fds(request(ps_fd=9, inherit=(7, 3))) == (9, 7, 3)


def test_a_page_server_without_a_socket_names_none() -> None:
    req = request(inherit=(5,))
    req.opts.ps.address = "10.0.0.1"
    req.opts.ps.port = 1234
    assert named_fds(req) == (5,)


def test_a_lazy_dump_does_not_read_the_page_server_socket() -> None:
    req = request(ps_fd=9)
    req.opts.lazy_pages = True
    assert named_fds(req) == ()
