"""``--config FILE``: a TOML file of the daemon's options.

Every key is a long option's name (``rate-limit`` or ``rate_limit``), its
value what the command line would take: a string or number for an option
with a value, ``true``/``false`` for a flag, a list for a repeatable option
(``turn-secret = ["a", "b"]``).  The file is read before the command line,
so the command line overrides it.  A file that cannot be read, an unknown
key or a bad value is :class:`ConfigError`: one line naming the file and
the key.
"""

from __future__ import annotations

import getopt
import sys
from typing import Dict, Iterable, List, Optional, Set, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - older Pythons
    import tomli as tomllib

from twisted.python import usage

#: options a file may not set (they act at once, or name the file itself)
NOT_IN_FILE = frozenset({"config", "help", "version"})


class ConfigError(Exception):
    """A bad configuration file; ``str()`` is one line for the user."""

    def __init__(self, path: str, message: str, key: Optional[str] = None) -> None:
        self.path, self.key = path, key
        super().__init__("%s: %s%s" % (path, "%s: " % key if key else "", message))


def read(path: str) -> Dict[str, object]:
    """The TOML file's table, or :class:`ConfigError`."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, "cannot read: %s" % (e.strerror or e)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "not valid TOML: %s" % e) from None


def scan(options: usage.Options, argv: List[str]) -> Tuple[Optional[str], Set[str]]:
    """``(the --config path or None, the canonical names of the options
    given in argv)``; a command line getopt refuses gives ``(None, set())``
    (the real parse then says what is wrong)."""
    try:
        opts, _ = getopt.getopt(argv, options.shortOpt, options.longOpt)
    except getopt.error:
        return None, set()
    path, given = None, set()
    for opt, arg in opts:
        name = canonical(options, opt.lstrip("-"))
        if name is None:
            continue
        given.add(name)
        if name == "config":
            path = arg
    return path, given


def canonical(options: usage.Options, name: str) -> Optional[str]:
    """The option's canonical name (as in ``options._dispatch``'s keys) or None."""
    for candidate in (name, name.replace("-", "_"), name.replace("_", "-")):
        if candidate in options.synonyms:
            return options.synonyms[candidate]
    return None


def _flags(options: usage.Options) -> Set[str]:
    """Options that take no value (getopt's long names without "=")."""
    return {name for name in options.longOpt if not name.endswith("=")}


def apply(options: usage.Options, path: str, table: Dict[str, object], skip: Iterable[str] = ()) -> Set[str]:
    """Set the options of ``table`` on ``options`` (as the command line
    would), except those in ``skip`` (given on the command line); returns
    the canonical names set.  Raises :class:`ConfigError`."""
    skip = set(skip)
    flags = _flags(options)
    applied = set()
    for key, value in table.items():
        name = canonical(options, key)
        if name is None or name in NOT_IN_FILE or key.startswith("-"):
            if isinstance(value, dict):
                raise ConfigError(path, "tables are not options (put every option at the top level)", key)
            raise ConfigError(path, "unknown key", key)
        applied.add(name)
        if name in skip:
            continue
        handler = options._dispatch[name]
        try:
            if name in flags:
                if not isinstance(value, bool):
                    raise ConfigError(path, "%r is not true or false" % (value,), key)
                options[name] = 1 if value else 0
            elif isinstance(handler, usage.CoerceParameter):
                handler.dispatch(name, _text(path, key, value))
            else:
                values = value if isinstance(value, list) else [value]
                for v in values:
                    handler(name, _text(path, key, v))
        except (usage.UsageError, ValueError) as e:
            raise ConfigError(path, str(e), key) from None
    return applied


def _text(path: str, key: str, value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(path, "%r is not a string or a number" % (value,), key)
    return str(value)


def blame(error: str, path: str, from_file: Set[str], given: Set[str]) -> Optional[ConfigError]:
    """The :class:`ConfigError` for a UsageError about an option that came
    from the file (its message starts with ``--NAME``), or None when the
    command line gave it."""
    if not error.startswith("--"):
        return None
    head, sep, rest = error[2:].partition(":")
    name = head.split(" ", 1)[0]
    if {name, name.replace("-", "_")} & from_file and name not in given:
        return ConfigError(path, rest.strip() if sep else error, name)
    return None
