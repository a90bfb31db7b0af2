"""Connections of a real ``lost-reg serve`` (its HTTP protocol, service/protocol.py) over loopback sockets: no
connection state is left without a timer, and running out of file descriptors is quiet and passes."""

from __future__ import annotations

import os
import resource
import socket
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from .conftest import free_port, running
from .rawhttp import closed_within, connect, read_answer, wait_for
from .test_service_server import serve_command

KEY = "connections-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``lost-reg serve`` with a 2 s request-head deadline and an API key; its URL, log and process id."""
    port = free_port()
    log = tmp_path_factory.mktemp("connections") / "serve.log"
    env = {"HF_HUB_OFFLINE": "1", "LOST_REG_HEADER_TIMEOUT_S": "2", "LOST_REG_API_KEY": KEY}
    with running(serve_command(port), port, log, env) as base:
        yield base, log, _pid_listening(port)


def _pid_listening(port: int) -> int:
    """The process whose command line names ``--port port`` (the server just started)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in args and str(port).encode() in args:
                return int(entry.name)
    raise LookupError(port)


def early_answer(sock: socket.socket, request: str) -> int:
    """Send ``request`` (a head declaring 100 body bytes) and 1 body byte, read the answer the server sends
    before reading the body, then send one more byte; the answer's status."""
    sock.sendall(request.encode() + b"Content-Length: 100\r\n\r\nx")
    answer = read_answer(sock, timeout=10)
    assert answer is not None, request
    sock.sendall(b"y")
    return answer.status


EARLY = {
    "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n": 200,
    "POST /v1/boxes HTTP/1.1\r\nHost: 127.0.0.1\r\n": 401,
    f"POST /labelstudio/setup HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
    "Content-Type: application/json\r\n": 200,
}


def test_a_connection_answered_before_its_body_is_closed_in_time(server):
    base, _, _ = server
    with ExitStack() as stack:
        socks = [stack.enter_context(connect(base)) for _ in EARLY]
        for sock, (request, status) in zip(socks, EARLY.items()):
            assert early_answer(sock, request) == status
        start = time.monotonic()
        assert all(closed_within(sock, timeout=8) for sock in socks)
        assert time.monotonic() - start < 8
    with connect(base) as kept:  # a body that does end in time keeps the connection alive
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\n")
        assert read_answer(kept).status == 200
        kept.sendall(b"abc")
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_answer(kept).status == 200


def test_content_length_with_transfer_encoding_is_answered_then_closed(server):
    base, _, _ = server
    body = b'{"format": "jsonl", "images": [{"file_name": "a.jpg", "width": 10, "height": 10, "objects": []}]}'
    with connect(base) as sock:
        sock.sendall(b"POST /v1/export HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 5\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        answer = read_answer(sock)
        assert answer is not None and answer.status == 200 and b'"a.jpg"' in answer.body  # read as chunked
        assert answer.headers["connection"] == "close"
        assert closed_within(sock, timeout=2)  # RFC 9112 §6.3


def test_out_of_file_descriptors_is_one_quiet_log_line_and_passes(server):
    """With a few descriptors to spare, 20 early-answer connections at once: the extra ones wait (asyncio
    retries accept each second), are logged as a count, not a traceback each, and all are served."""
    base, log, pid = server
    spare = 8
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")) + spare, hard))
    try:
        with ExitStack() as stack:
            socks = [stack.enter_context(connect(base, timeout=30)) for _ in range(20)]
            for sock in socks:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nx")
            deadline = time.monotonic() + 30
            answered = [read_answer(sock, timeout=max(0.1, deadline - time.monotonic())) for sock in socks]
            assert all(a is not None and a.status == 200 for a in answered)
        assert wait_for(lambda: httpx.get(f"{base}/healthz", timeout=2).status_code == 200, 20)
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    text = log.read_text()
    assert 1 <= text.count("out of file descriptors") <= 3
    assert "socket.accept() out of system resource" not in text and "Traceback" not in text
