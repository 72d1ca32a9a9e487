"""A running daemon's status from its metrics page, sans-IO:
:func:`report` turns the exposition text into a dict (salon or client),
:func:`format_table` into a few human lines.  ``natsalon status`` does the
HTTP."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from prometheus_client.parser import text_string_to_metric_families

Samples = Dict[str, List[Tuple[Dict[str, str], float]]]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def _one(s: Samples, name: str, default: Optional[float] = None, **labels) -> Optional[float]:
    for got, v in s.get(name, []):
        if all(got.get(k) == want for k, want in labels.items()):
            return v
    return default


def _by(s: Samples, name: str, label: str) -> Dict[str, float]:
    return {got[label]: v for got, v in s.get(name, []) if label in got}


def _int(v: Optional[float]) -> Optional[int]:
    return None if v is None else int(v)


def _current(s: Samples, name: str, label: str) -> Optional[str]:
    for got, v in s.get(name, []):
        if v == 1:
            return got.get(label)
    return None


def report(text: str) -> dict:
    """The status of the daemon whose metrics ``text`` is; ValueError when
    it is neither a salon's nor a client's."""
    s = parse(text)
    common = {"memory_bytes": _int(_one(s, "process_resident_memory_bytes")),
              "cpu_seconds": _one(s, "process_cpu_seconds_total")}
    if "natsalon_uptime_seconds" in s:
        return dict(_salon_report(s), **common)
    if "natclient_uptime_seconds" in s:
        return dict(_client_report(s), **common)
    raise ValueError("not a natsalon or natclient metrics page")


def _counts(s, name: str, label: str, nonzero: bool = False) -> dict:
    return {k: int(v) for k, v in _by(s, name, label).items() if v or not nonzero}


def _turn_report(s) -> Optional[dict]:
    if _one(s, "natsalon_turn_enabled") != 1:
        return None
    return {"allocations": _int(_one(s, "natsalon_turn_allocations", 0)),
            "allocations_created": _int(_one(s, "natsalon_turn_allocations_created_total", 0)),
            "permissions": _int(_one(s, "natsalon_turn_permissions", 0)),
            "channels": _int(_one(s, "natsalon_turn_channels", 0)),
            "relayed_bytes": _int(_one(s, "natsalon_turn_relayed_bytes_total", 0)),
            "refusals": _counts(s, "natsalon_turn_refusals_total", "reason")}


def _salon_report(s) -> dict:
    rooms = _one(s, "natsalon_rooms")
    members = _one(s, "natsalon_room_members")
    return {
        "daemon": "salon",
        "version": _current(s, "natsalon_build_info", "version"),
        "uptime_s": round(_one(s, "natsalon_uptime_seconds", 0), 1),
        "answered": _int(_one(s, "natsalon_answers_total", 0, code="success")),
        "answered_400": _int(_one(s, "natsalon_answers_total", 0, code="400")),
        "dropped": _counts(s, "natsalon_dropped_total", "reason", nonzero=True),
        "rate_limit": _int(_one(s, "natsalon_rate_limit")),
        "rooms": None if rooms is None else {"rooms": int(rooms), "members": _int(members or 0)},
        "joins": _counts(s, "natsalon_joins_total", "outcome", nonzero=True),
        "introductions": _int(_one(s, "natsalon_introductions_total", 0)),
        "turn": _turn_report(s),
    }


def _client_report(s) -> dict:
    rtt = _one(s, "natclient_rtt_seconds")
    silence = _one(s, "natclient_peer_silence_seconds")
    return {
        "daemon": "client",
        "version": _current(s, "natclient_build_info", "version"),
        "uptime_s": round(_one(s, "natclient_uptime_seconds", 0), 1),
        "state": _current(s, "natclient_state", "state"),
        "path": _current(s, "natclient_path", "kind"),
        "rtt_ms": None if rtt is None else round(rtt * 1000, 1),
        "peer_silence_s": None if silence is None else round(silence, 1),
        "frames": _counts(s, "natclient_frames_total", "direction"),
        "bytes": _counts(s, "natclient_payload_bytes_total", "direction"),
        "rejected": _int(sum(_by(s, "natclient_frames_rejected_total", "reason").values())),
        "forwarded": _counts(s, "natclient_forwarded_datagrams_total", "direction") or None,
        "connects": _int(_one(s, "natclient_connects_total", 0)),
        "repunches": _int(_one(s, "natclient_repunches_total", 0)),
        "rejoins": _int(_one(s, "natclient_rejoins_total", 0)),
    }


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return ("%dd " % d if d else "") + "%02d:%02d:%02d" % (h, m, s)


def _size(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else "%.1f %s" % (n, unit)
        n /= 1024.0
    return str(n)


def _pairs(d: Optional[dict]) -> str:
    return ", ".join("%s %s" % (k, v) for k, v in sorted(d.items())) if d else "none"


def format_table(r: dict) -> str:
    rows = [("daemon", "%s %s" % (r["daemon"], r.get("version") or "")), ("uptime", _duration(r["uptime_s"]))]
    if r["daemon"] == "salon":
        rows += [("answered", "%d (400: %d)" % (r["answered"], r["answered_400"])),
                 ("dropped", _pairs(r["dropped"])),
                 ("rate limit", "%s/s per source" % r["rate_limit"] if r["rate_limit"] else "off")]
        if r["rooms"] is not None:
            rows.append(("rooms", "%d (%d members)" % (r["rooms"]["rooms"], r["rooms"]["members"])))
        rows += [("joins", _pairs(r["joins"])), ("introductions", str(r["introductions"]))]
        t = r["turn"]
        if t is None:
            rows.append(("TURN", "off"))
        else:
            rows.append(("TURN", "%d allocations (%d made), %d permissions, %d channels, %s relayed" % (
                t["allocations"], t["allocations_created"], t["permissions"], t["channels"],
                _size(t["relayed_bytes"]))))
    else:
        path = r["path"] or "none"
        if r["rtt_ms"] is not None:
            path += ", rtt %.1f ms" % r["rtt_ms"]
        if r["peer_silence_s"] is not None:
            path += ", peer heard %.1f s ago" % r["peer_silence_s"]
        rows += [("state", r["state"] or "?"), ("path", path),
                 ("sent", "%d frames, %s" % (r["frames"].get("sent", 0), _size(r["bytes"].get("sent")))),
                 ("received", "%d frames, %s (%d rejected)" % (r["frames"].get("received", 0),
                                                             _size(r["bytes"].get("received")), r["rejected"] or 0)),
                 ("connects", "%d (%d re-punches, %d re-joins)" % (r["connects"], r["repunches"], r["rejoins"]))]
        if r["forwarded"]:
            rows.append(("forwarded", _pairs(r["forwarded"])))
    rows.append(("memory", _size(r["memory_bytes"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join("%-*s  %s" % (width, k, v) for k, v in rows)
