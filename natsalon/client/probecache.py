"""The last join-time probe result, kept across processes.

One small JSON file holds the latest complete NAT summary, keyed by the
salon (host, port) and the local interface addresses it was measured
from, with the wall-clock time it was measured.  A client that starts
within :data:`DEFAULT_TTL` (10 minutes) on the same addresses against the
same salon reuses it (:class:`~natsalon.client.strategy.NatKnowledge`):
its first JOIN can carry a known summary.  A file that is stale, made for
another salon or other addresses, or of another version is ignored
silently; one that cannot be read or parsed is ignored with one log line.
Writes go to a temporary file renamed over the old one, so a reader never
sees half a file.

Where (:func:`default_path`): ``$STATE_DIRECTORY/probe.json`` under
systemd's ``StateDirectory=`` (``/var/lib/natsalon`` for
``StateDirectory=natsalon``), else ``$XDG_STATE_HOME/natsalon/probe.json``
(``~/.local/state/natsalon/probe.json`` by default).  The file is small
and local: it is read and written on the reactor thread.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Mapping, Optional, Sequence, Tuple

from twisted.logger import Logger

from natsalon.wire.nat import ALLOCATIONS, BEHAVIOURS, NatSummary

DEFAULT_TTL = 600.0  #: seconds a probe result is reused
VERSION = 1
FILENAME = "probe.json"


def default_path(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The cache file's path (see the module docstring); None when no
    state directory can be named (no HOME either)."""
    state = environ.get("STATE_DIRECTORY")
    if state:
        return os.path.join(state.split(":")[0], FILENAME)
    xdg = environ.get("XDG_STATE_HOME")
    if xdg:
        return os.path.join(xdg, "natsalon", FILENAME)
    home = environ.get("HOME")
    return os.path.join(home, ".local", "state", "natsalon", FILENAME) if home else None


def cache_key(salon: Tuple[str, int], addresses: Sequence[str]) -> str:
    """What a result is valid for: the salon and our interface addresses
    (in any order)."""
    text = "%s|%d|%s" % (salon[0], salon[1], ",".join(sorted(set(addresses))))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _summary(d: dict) -> NatSummary:
    s = NatSummary(True, d["mapping"], d["filtering"], d["allocation"], d.get("step"), d.get("last_port"))
    if s.mapping not in BEHAVIOURS or s.filtering not in BEHAVIOURS or s.allocation not in ALLOCATIONS:
        raise ValueError("unknown NAT behaviour in %r" % (d,))
    for v in (s.step, s.last_port):
        if v is not None and (not isinstance(v, int) or not 0 <= v <= 0xFFFF):
            raise ValueError("bad number %r" % (v,))
    return s


class ProbeCache:
    """The file at ``path``; ``ttl`` seconds of validity."""

    log = Logger()

    def __init__(self, path: str, ttl: float = DEFAULT_TTL) -> None:
        self.path = path
        self.ttl = ttl

    def load(self, key: str, now: float) -> Optional[Tuple[NatSummary, float]]:
        """``(summary, age in seconds)`` if the file holds a result for
        ``key`` measured less than ``ttl`` before ``now`` (wall clock)."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(4096)
        except FileNotFoundError:
            return None
        except OSError as e:
            self.log.info("probe cache {path} unreadable ({error}): ignored", path=self.path, error=e)
            return None
        try:
            d = json.loads(raw)
            if d.get("version") != VERSION or d.get("key") != key:
                return None
            age = now - float(d["at"])
            summary = _summary(d["summary"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self.log.info("probe cache {path} is corrupt ({error}): ignored", path=self.path, error=e)
            return None
        if not 0 <= age <= self.ttl:
            return None
        return summary, age

    def store(self, key: str, summary: NatSummary, now: float) -> None:
        """Keep ``summary`` (a known one) measured at ``now``; a failure to
        write is logged at debug level and otherwise ignored."""
        if not summary.known:
            return
        d = {"version": VERSION, "key": key, "at": now,
             "summary": {k: v for k, v in summary.to_json().items() if k != "known"}}
        tmp = "%s.%d.tmp" % (self.path, os.getpid())
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(d, f)
            os.replace(tmp, self.path)
        except OSError as e:
            self.log.debug("probe cache {path} not written: {error}", path=self.path, error=e)
            try:
                os.unlink(tmp)
            except OSError:
                pass
