"""Controller side of natlab/udpprobe.py: drive UDP sockets inside a namespace."""
from __future__ import annotations

import json
import select
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from .lab import Host

Addr = Tuple[str, int]


class ProbeError(RuntimeError):
    pass


class Probe:
    """A udpprobe agent process in ``host``'s namespace (ended by the lab at close)."""

    def __init__(self, host: "Host") -> None:
        from .lab import PROBE_SCRIPT
        self.host = host
        self.proc = host.spawn([sys.executable, "-u", PROBE_SCRIPT], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, bufsize=1)
        first = self._readline(15)
        if not json.loads(first).get("ready"):
            raise ProbeError("probe in %s did not start: %r" % (host.ns, first))

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise ProbeError("probe in %s did not answer within %ss" % (self.host.ns, timeout))
        line = self.proc.stdout.readline()
        if not line:
            raise ProbeError("probe in %s exited (rc=%s)" % (self.host.ns, self.proc.poll()))
        return line

    def call(self, timeout: float = 30, **cmd: Any) -> Dict[str, Any]:
        """Send one command (keyword arguments; ``timeout`` is the controller's wait)."""
        return self._call_raw(cmd, timeout)

    def _call_raw(self, cmd: Dict[str, Any], timeout: float) -> Dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        res = json.loads(self._readline(timeout))
        if not res.get("ok"):
            raise ProbeError("probe %s: %s" % (cmd.get("op"), res.get("error")))
        return res

    def bind(self, ip: str = "0.0.0.0", port: int = 0) -> "PSock":
        res = self.call(op="bind", ip=ip, port=port)
        return PSock(self, res["sock"], (res["addr"][0], res["addr"][1]))

    def close(self) -> None:
        try:
            self.call(op="quit", timeout=5)
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()


class PSock:
    """A UDP socket held by a probe agent."""

    def __init__(self, probe: Probe, idx: int, addr: Addr) -> None:
        self.probe = probe
        self.idx = idx
        self.addr = addr

    @property
    def port(self) -> int:
        return self.addr[1]

    def send(self, to: Addr, data: str = "x", count: int = 1, interval: float = 0.0) -> int:
        timeout = 30 + count * interval
        return self.probe._call_raw({"op": "send", "sock": self.idx, "to": list(to), "data": data,
                                     "count": count, "interval": interval}, timeout)["sent"]

    def recv(self, timeout: float = 1.0, max: int = 1) -> List[Dict[str, Any]]:
        """Messages as dicts: from (ip, port), data, t (monotonic arrival time)."""
        res = self.probe._call_raw({"op": "recv", "sock": self.idx, "timeout": timeout, "max": max},
                                   timeout + 30)
        out = []
        for m in res["msgs"]:
            out.append({"from": (m["from"][0], m["from"][1]), "data": m["data"], "t": m["t"]})
        return out

    def recv_one(self, timeout: float = 1.0) -> Optional[Dict[str, Any]]:
        msgs = self.recv(timeout, 1)
        return msgs[0] if msgs else None

    def echo(self, on: bool = True) -> None:
        self.probe.call(op="echo", sock=self.idx, on=on)

    def count(self) -> int:
        return self.probe.call(op="count", sock=self.idx)["count"]

    def ping(self, to: Addr, count: int = 5, interval: float = 0.0,
             timeout: float = 1.0) -> List[Optional[float]]:
        res = self.probe._call_raw({"op": "ping", "sock": self.idx, "to": list(to), "count": count,
                                    "interval": interval, "timeout": timeout},
                                   30 + count * (interval + timeout))
        return res["rtts"]

    def mapped(self, echo_server: Addr, timeout: float = 2.0) -> Optional[Addr]:
        """Send to an echoing socket and return the source address it saw (or None)."""
        self.send(echo_server, "map?")
        deadline_msgs = self.recv(timeout, 1)
        if not deadline_msgs:
            return None
        seen = json.loads(deadline_msgs[0]["data"])["seen"]
        return (seen[0], seen[1])
