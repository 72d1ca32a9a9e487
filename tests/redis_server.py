"""A throwaway ``redis-server`` for the tests: started on a unix socket in
a temporary folder (or a loopback port), nothing saved (``--save ''
--appendonly no``), stopped after.  Tests that need one skip when the
Debian package is not installed (``make test`` installs it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import pytest

from natsalon.server.introducer.redislink import RedisAddress

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class RedisServer:
    """``start()``/``stop()`` as often as a test likes: a restarted server
    is empty, like a Redis that lost its memory.  ``tcp``: on a loopback
    port (else a unix socket); ``unix``: on a unix socket too (with
    ``tcp``); ``password``: clients must AUTH (``requirepass``)."""

    def __init__(self, tcp: bool = False, unix: Optional[bool] = None, password: Optional[str] = None,
                 extra: Sequence[str] = ()) -> None:
        if not Path(REDIS_SERVER).exists():
            pytest.skip("redis-server is not installed (Debian package redis-server; make test installs it)")
        self.dir = Path(tempfile.mkdtemp(prefix="natsalon-redis-"))
        self.port = free_port() if tcp else 0
        self.path = str(self.dir / "redis.sock") if (unix if unix is not None else not tcp) else None
        self.password = password
        self.extra = list(extra)  #: more redis-server arguments (``--replicaof H P``)
        self.proc: Optional[subprocess.Popen] = None

    @property
    def address(self) -> RedisAddress:
        if self.path is not None and not self.port:
            return RedisAddress(path=self.path)
        return RedisAddress(host="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return "unix:" + self.path if self.path and not self.port else "redis://127.0.0.1:%d" % self.port

    def start(self) -> "RedisServer":
        args = [REDIS_SERVER, "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                "--port", str(self.port), "--bind", "127.0.0.1"]
        if self.path is not None:
            args += ["--unixsocket", self.path, "--unixsocketperm", "700"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        args += self.extra
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ping():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited with %s" % self.proc.returncode)
            time.sleep(0.02)
        self.cleanup()  # not left running behind the failed test
        raise RuntimeError("redis-server did not answer within 10 s")

    def ping(self) -> bool:
        try:
            link = BlockingLink(self)
        except (OSError, RuntimeError):
            return False
        try:
            return link.call("PING") == b"PONG"
        except (OSError, RuntimeError):
            return False
        finally:
            link.close()

    def connect(self) -> socket.socket:
        if self.path is not None and not self.port:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            s.connect(self.path)
        else:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return s

    def command(self, *words: str) -> bytes:
        """One command, its raw answer (a tiny client for checks; no AUTH:
        use :class:`BlockingLink` with a password)."""
        s = self.connect()
        try:
            s.sendall(("*%d\r\n" % len(words) + "".join("$%d\r\n%s\r\n" % (len(w), w) for w in words)).encode())
            return s.recv(65536)
        finally:
            s.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class BlockingLink:
    """A :class:`natsalon.server.introducer.redislink.RedisLink` stand-in
    that runs each script over a blocking socket and returns an already
    fired Deferred: the registry's scripts and parsing run against a real
    Redis inside a synchronous test (the contract suite's)."""

    def __init__(self, server: RedisServer, db: int = 0) -> None:
        self.sock = server.connect()
        self.buf = b""
        if server.password is not None:
            self.call("AUTH", server.password)
        if db:
            self.call("SELECT", db)

    def close(self) -> None:
        self.sock.close()

    def script(self, source: str):
        from twisted.internet import defer

        def run(keys, args):
            try:
                return defer.succeed(self.call(b"EVAL", source.encode(), len(keys), *keys, *args))
            except Exception as e:
                return defer.fail(e)
        return run

    def call(self, *args):
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        self.sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        return self._reply()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise OSError("redis-server closed the connection")
        self.buf += chunk

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._more()
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if kind == b"*":
            return [self._reply() for _ in range(int(rest))]
        raise RuntimeError("bad reply %r" % line)
