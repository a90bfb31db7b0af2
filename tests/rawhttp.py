"""HTTP by hand over a socket, for what a client library will not do: send half a body, drip bytes, stall."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

BOUNDARY = "lostregboundary"


def file_part(filename: str, data: bytes, content_type: str = "image/png", field: str = "images") -> bytes:
    """One multipart part: its boundary line, headers, data and CRLF."""
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + b"\r\n"


def field_part(name: str, value: str) -> bytes:
    return f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode()


END = f"--{BOUNDARY}--\r\n".encode()


def head(path: str, length: int, content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
         method: str = "POST", extra: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


def connect(base: str, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", urlsplit(base).port), timeout=timeout)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def read_answer(sock: socket.socket, timeout: float = 10) -> Answer | None:
    """The response on ``sock`` within ``timeout`` s, or None when none came (or the connection closed first)."""
    sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b"\r\n\r\n" in data:
            top, rest = data.split(b"\r\n\r\n", 1)
            lines = top.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            if len(rest) >= int(headers.get("content-length", 0)):
                return Answer(int(lines[0].split()[1]), headers, rest[: int(headers.get("content-length", 0))])
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return None


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` s (what it sends meanwhile is discarded)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


def metrics(base: str, **headers: str) -> dict[str, float]:
    """``/metrics`` as {sample with labels: value}."""
    text = httpx.get(f"{base}/metrics", headers=headers, timeout=10).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}


def wait_for(condition, timeout: float, step: float = 0.1) -> bool:
    """Poll ``condition()`` until it holds or ``timeout`` s pass; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()
