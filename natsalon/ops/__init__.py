"""Operating the daemons.

- :mod:`natsalon.ops.stats`: the counters the daemon keeps;
- :mod:`natsalon.ops.options`: ``--config``, ``--metrics``, ``--log-format``,
  ``--log-level`` (:class:`~natsalon.ops.options.OpsOptionsMixin`);
- :mod:`natsalon.ops.config`: the TOML file;
- :mod:`natsalon.ops.metrics`: Prometheus collectors and the ``/metrics`` page;
- :mod:`natsalon.ops.sdnotify`: systemd notify and watchdog;
- :mod:`natsalon.ops.reload`: SIGHUP;
- :mod:`natsalon.ops.logs`: text or JSON logs behind a level filter;
- :mod:`natsalon.ops.status`: a daemon's status from its metrics;
- :mod:`natsalon.ops.wiring`: what the taps call.
"""
