"""The operating options both daemons share, mixed into their ``Options``:
``--config``, ``--metrics``, ``--log-format``, ``--log-level``.

:class:`OpsOptionsMixin` adds them (usage.Options gathers ``optParameters``
from every base) and wraps ``parseOptions``: the ``--config`` file is
applied first, so the command line overrides it; a bad file, or a bad
value that came from it, ends ``twistd`` with one line naming the file and
the key, exit status 2.  After parsing, ``self.ops`` holds the checked
:class:`OpsSettings`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import List, Optional, Set, Tuple

from twisted.python import usage

from natsalon.ops import config, logs

#: the exit status of a bad configuration (as argparse's usage errors)
EXIT_CONFIG = 2


def parse_listen(text: str) -> Tuple[str, int]:
    """``"9100"`` -> ``("127.0.0.1", 9100)``; ``"0.0.0.0:9100"``,
    ``"[::1]:9100"``.  ValueError says what is wrong."""
    text = str(text).strip()
    host, port = "127.0.0.1", text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValueError("%r is not [HOST]:PORT" % text)
        host, port = text[1:end], text[end + 2:]
    elif ":" in text:
        host, _, port = text.rpartition(":")
        if ":" in host:
            raise ValueError("%r: write an IPv6 address in brackets, [::1]:9100" % text)
    if not host:
        raise ValueError("%r has no host before the colon" % text)
    try:
        number = int(port)
    except ValueError:
        raise ValueError("%r is not [HOST:]PORT" % text) from None
    if not 0 <= number <= 65535:
        raise ValueError("port %d is out of range (0 to 65535)" % number)
    return host, number


@dataclass
class OpsSettings:
    metrics: Optional[Tuple[str, int]] = None
    log_format: str = "text"
    levels: logs.LevelFilter = field(default_factory=logs.LevelFilter)
    config: Optional[str] = None
    #: the subcommand's own arguments, for re-reading the file on SIGHUP
    argv: List[str] = field(default_factory=list)

    def describe_metrics(self) -> str:
        if self.metrics is None:
            return "off"
        host, port = self.metrics
        return "http://%s:%d/metrics" % ("[%s]" % host if ":" in host else host, port)


class OpsOptionsMixin:
    optParameters = [
        ["config", None, None, "TOML file of these options (the command line overrides it; SIGHUP re-reads it)."],
        ["metrics", None, None, "[HOST:]PORT: serve Prometheus metrics at http://HOST:PORT/metrics "
                                "(HOST 127.0.0.1 unless given; off by default)."],
        ["log-format", None, "text", "text (one line per event) or json (one JSON object per event)."],
        ["log-level", None, "info", "Lowest level logged: debug, info, warn, error, critical "
                                    "(peer addresses only at debug)."],
    ]

    ops: OpsSettings
    #: how errors name the command ("twistd natsalon: error: ...")
    command = "twistd"

    def parseOptions(self, options=None) -> None:
        try:
            self.ops_parse(list(sys.argv[1:] if options is None else options))
        except config.ConfigError as e:
            sys.stderr.write("config error: %s\n" % e)
            sys.stderr.flush()
            raise SystemExit(EXIT_CONFIG)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise  # parsed by code (tests, embedding): the caller decides
            # under twistd: one line and exit 2, as every natsalon command
            # does (twistd itself would print the whole usage and exit 1)
            sys.stderr.write("%s: error: %s\n" % (self.command, e))
            sys.stderr.flush()
            raise SystemExit(EXIT_CONFIG)
        logs.install(getattr(self, "parent", None), self.ops.log_format, self.ops.levels)

    def ops_parse(self, argv: List[str]) -> None:
        """Parse ``argv`` over the ``--config`` file; raises
        :class:`~natsalon.ops.config.ConfigError` for what the file got
        wrong and ``usage.UsageError`` for what the command line did."""
        path, given = config.scan(self, argv)
        from_file: Set[str] = set()
        if path is not None:
            from_file = config.apply(self, path, config.read(path), skip=given)
        try:
            super().parseOptions(argv)
            self.ops = self._ops_settings(path, argv)
        except usage.UsageError as e:
            blamed = config.blame(str(e), path, from_file, given) if path else None
            if blamed is not None:
                raise blamed from None
            raise

    def _ops_settings(self, path: Optional[str], argv: List[str]) -> OpsSettings:
        metrics = None
        if self["metrics"]:
            try:
                metrics = parse_listen(self["metrics"])
            except ValueError as e:
                raise usage.UsageError("--metrics: %s" % e) from None
        fmt = str(self["log-format"]).strip().lower()
        if fmt not in logs.FORMATS:
            raise usage.UsageError("--log-format: %r is not one of %s" % (self["log-format"], ", ".join(logs.FORMATS)))
        try:
            level = logs.parse_level(self["log-level"])
        except ValueError as e:
            raise usage.UsageError("--log-level: %s" % e) from None
        return OpsSettings(metrics=metrics, log_format=fmt, levels=logs.LevelFilter(level), config=path, argv=argv)
