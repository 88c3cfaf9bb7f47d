import socket
import threading
import time

from pneumodet import network
from pneumodet.network import can_reach


def test_open_and_closed_ports():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert can_reach("127.0.0.1", server.getsockname()[1], timeout_s=2.0) is True
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
    assert can_reach("127.0.0.1", port, timeout_s=2.0) is False


def test_a_hanging_lookup_is_cut_off(monkeypatch):
    release = threading.Event()

    def hang(*args, **kwargs):  # a resolver that never answers (getaddrinfo has no timeout of its own)
        release.wait(10)
        raise OSError("released")

    monkeypatch.setattr(network.socket, "create_connection", hang)
    start = time.perf_counter()
    try:
        assert can_reach("example.invalid", 443, timeout_s=0.2) is False
        assert time.perf_counter() - start < 5  # bounded by the timeout, not by the 10 s hang
    finally:
        release.set()
