"""The join-time probe's result kept across processes
(natsalon.client.probecache): where the file goes, what makes it valid,
what is ignored, and NatKnowledge reusing it at start."""

import json
import os

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from natsalon.client.probecache import DEFAULT_TTL, ProbeCache, cache_key, default_path
from natsalon.client.strategy import NatKnowledge
from natsalon.wire.nat import APD, EI, SEQUENTIAL, NatSummary

SALON = ("203.0.113.10", 3478)
CONE = NatSummary(True, EI, APD, "preserving", None, 40000)
SEQ = NatSummary(True, APD, APD, SEQUENTIAL, 1, 20011)
NOW = 1_800_000_000.0


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def _infos(events):
    return [e for e in events if e.get("log_namespace", "").endswith("ProbeCache") and
            e["log_level"].name == "info"]


def test_default_path():
    assert default_path({"STATE_DIRECTORY": "/var/lib/natsalon", "XDG_STATE_HOME": "/x"}) == \
        "/var/lib/natsalon/probe.json"
    assert default_path({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}) == "/var/lib/a/probe.json"
    assert default_path({"XDG_STATE_HOME": "/home/u/.st", "HOME": "/home/u"}) == "/home/u/.st/natsalon/probe.json"
    assert default_path({"HOME": "/home/u"}) == "/home/u/.local/state/natsalon/probe.json"
    assert default_path({}) is None


def test_key_is_salon_and_addresses_in_any_order():
    assert cache_key(SALON, ["10.0.0.2", "192.0.2.5"]) == cache_key(SALON, ["192.0.2.5", "10.0.0.2"])
    assert cache_key(SALON, ["10.0.0.2"]) != cache_key(SALON, ["10.0.0.3"])
    assert cache_key(SALON, ["10.0.0.2"]) != cache_key(("203.0.113.10", 3479), ["10.0.0.2"])


def test_round_trip_and_ttl(tmp_path, logged):
    cache = ProbeCache(str(tmp_path / "state" / "probe.json"))
    key = cache_key(SALON, ["10.0.0.2"])
    assert cache.load(key, NOW) is None  # no file: silently nothing
    cache.store(key, CONE, NOW)
    assert oct(os.stat(tmp_path / "state").st_mode & 0o777) == "0o700"
    assert cache.load(key, NOW + 5) == (CONE, 5)
    assert cache.load(key, NOW + DEFAULT_TTL + 1) is None  # stale
    assert cache.load(key, NOW - 10) is None  # from the future (clock stepped back)
    assert cache.load(cache_key(SALON, ["10.0.0.3"]), NOW) is None  # other addresses
    assert _infos(logged) == []
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["probe.json"]  # no temporary left


def test_unknown_is_not_kept(tmp_path):
    cache = ProbeCache(str(tmp_path / "probe.json"))
    cache.store("k", NatSummary(), NOW)
    assert not (tmp_path / "probe.json").exists()


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"version": 1, "key": "k", "at": "x", "summary": {}}',
                                     b'{"version": 1, "key": "k", "at": 1, "summary": {"mapping": "sideways",'
                                     b' "filtering": "unknown", "allocation": "random"}}',
                                     b'{"version": 1, "key": "k", "at": 1, "summary": {"mapping": "unknown",'
                                     b' "filtering": "unknown", "allocation": "random", "last_port": 70000}}'])
def test_corrupt_is_ignored_with_one_line(tmp_path, logged, content):
    path = tmp_path / "probe.json"
    path.write_bytes(content)
    assert ProbeCache(str(path)).load("k", 2.0) is None
    assert len(_infos(logged)) == 1 and "corrupt" in _infos(logged)[0]["log_format"]


def test_other_version_is_ignored_silently(tmp_path, logged):
    path = tmp_path / "probe.json"
    path.write_text(json.dumps({"version": 2, "key": "k", "at": 1, "summary": {}}))
    assert ProbeCache(str(path)).load("k", 2.0) is None
    assert _infos(logged) == []


def test_unwritable_is_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ProbeCache(str(blocker / "probe.json")).store("k", CONE, NOW)  # its directory is a file: nothing raised


class FakeProbe:
    def __init__(self):
        self.calls = []

    def __call__(self, on_early):
        d = defer.Deferred()
        self.calls.append((on_early, d))
        return d


class Report:
    def __init__(self, summary):
        self.summary = summary


def _clock(t):
    clock = Clock()
    clock.advance(t)
    return clock


def test_knowledge_reuses_the_file_of_an_earlier_process(tmp_path):
    path = str(tmp_path / "probe.json")
    key = cache_key(SALON, ["10.0.0.2"])
    first = NatKnowledge(_clock(NOW), FakeProbe(), ttl=DEFAULT_TTL, cache=ProbeCache(path), key=key)
    first.summary()
    first.probe.calls[0][1].callback(Report(CONE))  # the complete result: written
    # the next process, a minute later: its first JOIN can carry the result, no probe
    later = NatKnowledge(_clock(NOW + 60), FakeProbe(), ttl=DEFAULT_TTL, cache=ProbeCache(path), key=key)
    got = []
    later.summary().addCallback(got.append)
    assert got == [CONE] and later.probe.calls == [] and later.reused == 1
    # another address, or too late: it probes
    other = NatKnowledge(_clock(NOW + 60), FakeProbe(), cache=ProbeCache(path), key=cache_key(SALON, ["10.9.9.9"]))
    other.summary()
    stale = NatKnowledge(_clock(NOW + DEFAULT_TTL + 1), FakeProbe(), ttl=DEFAULT_TTL, cache=ProbeCache(path), key=key)
    stale.summary()
    assert len(other.probe.calls) == len(stale.probe.calls) == 1


def test_knowledge_behind_a_sequential_nat_still_probes(tmp_path):
    path = str(tmp_path / "probe.json")
    ProbeCache(path).store("k", SEQ, NOW)
    k = NatKnowledge(_clock(NOW + 1), FakeProbe(), ttl=DEFAULT_TTL, cache=ProbeCache(path), key="k")
    k.summary()
    assert len(k.probe.calls) == 1  # the last mapped port must be fresh
    assert k.final == SEQ  # but the kept result fills in what an early summary lacks
