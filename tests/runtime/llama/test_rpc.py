"""Checking an RPC worker before llama.cpp is told about it: ggml-rpc aborts the
whole process on an address it cannot use, so `probe` must say what is wrong first,
in one line, against real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from llamapack.runtime.llama.rpc import Endpoint, RpcError, parse_endpoints, probe


def test_endpoints_parse_in_order_once_each():
    assert parse_endpoints("10.0.0.2:50052, 10.0.0.3:50053,10.0.0.2:50052") == [
        Endpoint("10.0.0.2", 50052),
        Endpoint("10.0.0.3", 50053),
    ]
    assert parse_endpoints("[::1]:50052") == [Endpoint("::1", 50052)]
    assert str(Endpoint("::1", 50052)) == "[::1]:50052"


@pytest.mark.parametrize(
    "value", ["10.0.0.2", "10.0.0.2:", ":50052", "host:0", "host:70000", "host:port", ","]
)
def test_a_bad_endpoint_is_named(value):
    with pytest.raises(RpcError, match="HOST:PORT"):
        parse_endpoints(value)


def serve_once(answer: Callable[[socket.socket], object]) -> Iterator[Endpoint]:
    """A listener on 127.0.0.1 that answers one connection with `answer`."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def run() -> None:
        connection, _ = listener.accept()
        with connection:
            answer(connection)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield Endpoint("127.0.0.1", port)
    finally:
        listener.close()
        thread.join(5)


def hello_reply(major: int) -> Callable[[socket.socket], None]:
    def answer(connection: socket.socket) -> None:
        request = connection.recv(1 + 8 + 24, socket.MSG_WAITALL)
        assert request[0] == 14 and struct.unpack_from("<Q", request, 1)[0] == 24
        connection.sendall(struct.pack("<Q", 28) + bytes([major, 1, 0, 0]) + bytes(24))

    return answer


def test_a_worker_that_shakes_hands_passes():
    for endpoint in serve_once(hello_reply(7)):
        probe(endpoint)


def test_a_worker_of_another_protocol_version_is_named():
    for endpoint in serve_once(hello_reply(3)):
        with pytest.raises(RpcError, match=r"speaks protocol 3\.1\.0, this file 7\.x"):
            probe(endpoint)


def test_a_port_where_nothing_listens_is_named():
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    with pytest.raises(
        RpcError, match=rf"cannot reach the RPC worker 127\.0\.0\.1:{port}: Connection refused"
    ):
        probe(Endpoint("127.0.0.1", port))


def test_a_port_that_speaks_another_protocol_is_named():
    def http(connection: socket.socket) -> None:
        connection.recv(64)
        connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    for endpoint in serve_once(http):
        with pytest.raises(RpcError, match="is not a llama.cpp RPC worker"):
            probe(endpoint)


def test_a_port_that_hangs_up_is_named():
    for endpoint in serve_once(lambda connection: None):
        with pytest.raises(RpcError, match="is not a llama.cpp RPC worker"):
            probe(endpoint)


def test_a_port_that_never_answers_times_out():
    silent = threading.Event()
    for endpoint in serve_once(lambda connection: silent.wait(5)):
        with pytest.raises(RpcError, match="no answer in 1 s"):
            probe(endpoint, timeout=1)
        silent.set()
