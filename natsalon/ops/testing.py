"""Test helpers for the operating features (used by ``tests/test_ops_*``):
the Debian tools the checks need, a systemd notify socket to listen on, and
a scrape of a running daemon's metrics."""

from __future__ import annotations

import os
import shutil
import socket
import time
import urllib.request
from typing import Dict, List, Optional

from prometheus_client.parser import text_string_to_metric_families


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def require_tool(name: str, package: str) -> str:
    """The tool's path; skips the test when it is missing, fails under CI=true
    (``make test`` installs it as root: a missing tool there is a bug)."""
    import pytest

    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        reason = "%s not installed (Debian package %s; make test installs it as root)" % (name, package)
        if in_ci():
            pytest.fail("CI=true: " + reason)
        pytest.skip(reason)
    return path


class NotifyListener:
    """A unix datagram socket standing in for systemd's ``NOTIFY_SOCKET``
    (a path, or an abstract ``@name``)."""

    def __init__(self, path: str) -> None:
        self.name = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + path[1:] if path.startswith("@") else path)
        self.messages: List[str] = []

    def read(self, timeout: float = 0.2) -> List[str]:
        """Messages received so far (waits up to ``timeout`` for more)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                self.messages.append(data.decode())
                self.sock.settimeout(0.01)
        except (socket.timeout, BlockingIOError):
            pass
        return self.messages

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.read():
                if text in m.split("\n"):
                    return m
        raise AssertionError("no %r in %r" % (text, self.messages))

    def close(self) -> None:
        self.sock.close()


def free_tcp_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def scrape(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def wait_scrape(url: str, timeout: float = 60.0, proc=None) -> str:
    deadline = time.monotonic() + timeout
    last: Optional[Exception] = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError("the daemon exited (%s) before serving %s" % (proc.returncode, url))
        try:
            return scrape(url)
        except OSError as e:
            last = e
            time.sleep(0.1)
    raise AssertionError("no metrics at %s: %s" % (url, last))


def samples(text: str) -> Dict[tuple, float]:
    """``{(name, (("label", "value"), ...)): value}`` of an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text_or_samples, name: str, **labels) -> Optional[float]:
    s = samples(text_or_samples) if isinstance(text_or_samples, str) else text_or_samples
    return s.get((name, tuple(sorted(labels.items()))))
