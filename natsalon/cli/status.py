"""``natsalon status``: a running daemon's status from its metrics.

    natsalon status                                  # http://127.0.0.1:9478/metrics (the salon's)
    natsalon status --metrics 127.0.0.1:9479         # a natclient
    natsalon status --metrics http://host:9478/metrics --json

Salon or client is told by the metrics themselves.  Exit status 0, 1 with
one line when the daemon cannot be reached or is not natsalon's, 2 on bad
arguments.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

from natsalon.ops.status import format_table, report

DEFAULT_URL = "http://127.0.0.1:9478/metrics"


def metrics_url(text: str) -> str:
    """``9479`` / ``HOST:PORT`` / a URL -> the metrics URL."""
    text = text.strip()
    if "://" in text:
        return text
    if text.isdigit():
        text = "127.0.0.1:" + text
    return "http://%s/metrics" % text


def add_arguments(p) -> None:
    p.add_argument("--metrics", default=DEFAULT_URL, metavar="URL",
                   help="the daemon's metrics: a URL, HOST:PORT or PORT (default %s)" % DEFAULT_URL)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the daemon (default 5)")


def run(args) -> int:
    url = metrics_url(args.metrics)
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as r:
            text = r.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        sys.stderr.write("natsalon status: error: cannot read %s: %s\n" % (url, reason))
        return 1
    try:
        r = report(text)
    except ValueError as e:
        sys.stderr.write("natsalon status: error: %s: %s\n" % (url, e))
        return 1
    if args.json:
        sys.stdout.write(json.dumps(r, sort_keys=True) + "\n")
    else:
        sys.stdout.write(format_table(r) + "\n")
    return 0
