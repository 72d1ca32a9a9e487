"""The NAT prober.

    from natsalon.client.probe import probe, ProbeConfig
    d = probe(reactor, ("203.0.113.10", 3478), ProbeConfig(hairpin=True))

Modules, each one role:

- :mod:`.config`: :class:`ProbeConfig`, the run's limits and schedules;
- :mod:`.errors`: :class:`ProbeError`, :class:`ServerUnreachable`,
  :class:`ServerUnusable`;
- :mod:`.sockets`: :class:`~.sockets.ProbeSocket`, the UDP socket of one test;
- :mod:`.measure`: :func:`probe` and the tests (R, M, F1/F2, S, H/B, X);
- :mod:`.run`: :class:`~.run.ProbeRun`, a run's sockets, timers and outcome;
- :mod:`.findings`: what the run found so far, checked against the server's
  advertised addresses;
- :mod:`.report`: :class:`ProbeReport`, its JSON and table, built from the
  findings;
- :mod:`.classify`: the pure verdict tables.

The names above are loaded on first use, so importing :mod:`.classify`
alone loads no reactor.
"""

__all__ = ["probe", "ProbeConfig", "ProbeReport", "ProbeError", "ServerUnreachable", "ServerUnusable"]

_HOMES = {
    "probe": "natsalon.client.probe.measure",
    "ProbeConfig": "natsalon.client.probe.config",
    "ProbeReport": "natsalon.client.probe.report",
    "ProbeError": "natsalon.client.probe.errors",
    "ServerUnreachable": "natsalon.client.probe.errors",
    "ServerUnusable": "natsalon.client.probe.errors",
}


def __getattr__(name):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError("module 'natsalon.client.probe' has no attribute %r" % name)
    import importlib

    return getattr(importlib.import_module(home), name)
