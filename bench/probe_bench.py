#!/usr/bin/env python3
"""NAT classification benchmark: ``natsalon probe`` beside pystun3 and
coturn's ``turnutils_natdiscovery``, per lab NAT behaviour, in one lab run.

One lab (needs root), the real ``twistd -n natsalon`` on two IPs, one site
per behaviour (optionally with loss).  Per round and site, the three tools
run one after the other (order rotated each round) in the site's host
namespace.  Time is wall-clock time of the whole command (process start
included), and for ours also the probe's own ``elapsed_ms``.  Correctness:

- ours: classic type, mapping, filtering and port allocation all as expected;
- pystun3 (RFC 3489, classic type only): its type name as expected;
- turnutils_natdiscovery ``-m -f`` (RFC 5780, no classic type): mapping and
  filtering as expected; it asks coturn, started beside the salon on ports
  3480/3481 (its first request has no attributes, which natsalon answers
  without OTHER-ADDRESS); on udp-blocked it prints no verdict, which counts
  as correct.

Writes a markdown table to bench/results/probe.md.  Nothing is asserted on
timing; exit status 1 only when the lab or the server could not start.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from natlab import Lab, LabError, Nat, unavailable_reason  # noqa: E402
from natlab.salon import start_salon  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "probe.md"
SERVER = "203.0.113.10"
COTURN_PORT = 3480  # coturn beside the salon: natdiscovery's first request is attribute-less,
# which natsalon answers with XOR-MAPPED-ADDRESS only (no OTHER-ADDRESS), so natdiscovery cannot go on
EIM, ADM, APDM = "endpoint-independent", "address-dependent", "address-and-port-dependent"

# behaviour -> (ours: classic, mapping, filtering, allocation), pystun3 name, natdiscovery (mapping, filtering)
EXPECTED = {
    Nat.OPEN: (("open", EIM, EIM, "preserving"), "Open Internet", (EIM, EIM)),
    Nat.FULL_CONE: (("full-cone", EIM, EIM, "preserving"), "Full Cone", (EIM, EIM)),
    Nat.RESTRICTED_CONE: (("restricted-cone", EIM, ADM, "preserving"), "Restric NAT", (EIM, ADM)),
    Nat.PORT_RESTRICTED_CONE: (("port-restricted-cone", EIM, APDM, "preserving"), "Restric Port NAT",
                               (EIM, APDM)),
    Nat.SYMMETRIC_RANDOM: (("symmetric", APDM, APDM, "random"), "Symmetric NAT", (APDM, APDM)),
    Nat.SYMMETRIC_SEQUENTIAL: (("symmetric", APDM, APDM, "sequential"), "Symmetric NAT", (APDM, APDM)),
    Nat.SYMMETRIC_UDP_FIREWALL: (("symmetric-udp-firewall", EIM, APDM, "preserving"),
                                 "Symmetric UDP Firewall", (EIM, APDM)),
    Nat.UDP_BLOCKED: (("udp-blocked", "unknown", "unknown", "unknown"), "Blocked", (None, None)),
}

ND_MAPPING = [("Endpoint Independent Mapping", EIM), ("Address Dependent Mapping", ADM),
              ("Address and Port Dependent Mapping", APDM)]
ND_FILTERING = [("Endpoint Independent Filtering", EIM), ("Address Dependent Filtering", ADM),
                ("Address and Port Dependent Filtering", APDM)]


def timed(host, argv, timeout=120):
    t = time.monotonic()
    try:
        p = host.run(argv, timeout=timeout)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired:
        out, rc = "timeout", -1
    return time.monotonic() - t, out, rc


def run_ours(host, nat):
    secs, out, rc = timed(host, [Lab.bin("natsalon"), "probe", "--server", SERVER, "--json"])
    try:
        j = json.loads(out)
    except ValueError:
        return secs, None, False, out.strip().splitlines()[-1:] or ["?"]
    got = (j["classic"], j["mapping"], j["filtering"], j["port_allocation"]["kind"])
    return secs, j["elapsed_ms"], rc == 0 and got == EXPECTED[nat][0], "/".join(got)


def run_pystun(host, nat):
    secs, out, rc = timed(host, [Lab.bin("pystun3"), "-H", SERVER, "-P", "3478"])
    m = re.search(r"NAT Type:\s*(.+)", out)
    got = m.group(1).strip() if m else (out.strip().splitlines() or ["?"])[-1]
    return secs, None, got == EXPECTED[nat][1], got


def run_natdiscovery(host, nat):
    secs, out, rc = timed(host, ["turnutils_natdiscovery", "-m", "-f", "-p", str(COTURN_PORT), SERVER])
    mapping = next((v for k, v in ND_MAPPING if k in out), None)
    filtering = next((v for k, v in ND_FILTERING if k in out), None)
    want = EXPECTED[nat][2]
    ok = (mapping, filtering) == want
    got = "%s/%s" % (mapping or "?", filtering or "?")
    return secs, None, ok, got


def start_coturn(lab) -> None:
    tmp = tempfile.mkdtemp(prefix="probebench-")
    argv = ["turnserver", "-n", "--stun-only", "--no-auth", "-m", "1",
            "--listening-ip", lab.server.ips[0], "--listening-ip", lab.server.ips[1],
            "--listening-port", str(COTURN_PORT), "--alt-listening-port", str(COTURN_PORT + 1),
            "--no-tcp", "--no-tls", "--no-dtls", "--no-cli", "--log-file", "stdout", "--simple-log",
            "--db", tmp + "/turndb", "--pidfile", tmp + "/turnserver.pid"]
    lab.server.spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # the lab ends it
    time.sleep(1.0)


TOOLS = {"ours": run_ours, "pystun3": run_pystun, "natdiscovery": run_natdiscovery}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loss", type=float, default=0.0, help="packet loss on every site's WAN link")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    reason = unavailable_reason()
    if reason:
        print("probe bench skipped: " + reason, file=sys.stderr)
        return 0
    tools = [t for t in args.tools.split(",") if t]
    if "natdiscovery" in tools and shutil.which("turnutils_natdiscovery") is None:
        tools.remove("natdiscovery")
    rows = {}  # (nat, tool) -> list of (secs, elapsed_ms, ok, got)
    try:
        with Lab() as lab:
            start_salon(lab)
            if "natdiscovery" in tools:
                start_coturn(lab)
            sites = {nat: lab.add_site("b%d" % i, nat, loss=args.loss) for i, nat in enumerate(Nat)}
            for r in range(args.rounds):
                order = tools[r % len(tools):] + tools[:r % len(tools)]
                for nat, site in sites.items():
                    for tool in order:
                        res = TOOLS[tool](site.hosts[0], nat)
                        rows.setdefault((nat, tool), []).append(res)
                        print("[bench] round %d %-22s %-12s %6.2fs %s %s" % (
                            r + 1, nat.name, tool, res[0], "ok " if res[2] else "BAD", res[3]),
                            file=sys.stderr, flush=True)
    except LabError as e:
        print("probe bench: lab error: %s" % e, file=sys.stderr)
        return 1
    write(rows, tools, args)
    return 0


def write(rows, tools, args) -> None:
    lines = [
        "# NAT classification: time and correctness per lab behaviour",
        "",
        "Generated by `bench/probe_bench.py` on %s (%s, Python %s); %d rounds, loss %.0f%%, "
        "one lab run; ours and pystun3 ask the real `twistd -n natsalon` on two IPs (port 3478), "
        "turnutils_natdiscovery asks coturn on the same two IPs (port %d) in the same lab." % (
            datetime.date.today().isoformat(), platform.machine(), platform.python_version(), args.rounds,
            args.loss * 100, COTURN_PORT),
        "",
        "Time: median wall-clock seconds of the whole command (process start included); for ours also the "
        "median `elapsed_ms` the probe reports. Correct: rounds with the expected verdict "
        "(ours: classic/mapping/filtering/port allocation; pystun3: classic type; "
        "turnutils_natdiscovery `-m -f`: mapping/filtering).",
        "",
        "| behaviour | " + " | ".join("%s time | %s correct" % (t, t) for t in tools) + " | ours elapsed_ms | "
        "ours verdict | pystun3 verdict | natdiscovery verdict |",
        "|---" * (1 + 2 * len(tools) + 4) + "|",
    ]
    for nat in Nat:
        cells = [nat.name.lower()]
        for t in tools:
            res = rows.get((nat, t), [])
            cells.append("%.2f s" % statistics.median(r[0] for r in res) if res else "-")
            cells.append("%d/%d" % (sum(1 for r in res if r[2]), len(res)) if res else "-")
        ours = rows.get((nat, "ours"), [])
        ems = [r[1] for r in ours if r[1] is not None]
        cells.append("%d" % statistics.median(ems) if ems else "-")
        for t in ("ours", "pystun3", "natdiscovery"):
            res = rows.get((nat, t), [])
            cells.append(", ".join(sorted({str(r[3]) for r in res})) if res else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "pystun3 reports port-restricted cone as `Restric Port NAT` (its spelling); "
              "turnutils_natdiscovery has no classic type and prints no verdict when nothing answers.", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
