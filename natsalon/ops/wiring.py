"""What the taps call to make a daemon operable: the metrics listener,
systemd notify and watchdog, and the SIGHUP reload, added as services
next to the daemon's own.  Nothing here touches a hot path: the
collectors read counters at scrape time, the reload callables set a few
attributes the services already read.

    salon = make_salon(reactor, config.config)
    attach_salon(reactor, salon, config)           # children of the salon
    return wrap_client(reactor, ClientService(reactor, config), config)
"""

from __future__ import annotations

from typing import Optional

from twisted.application import service
from twisted.python import usage

from natsalon.ops import metrics
from natsalon.ops.options import OpsSettings
from natsalon.ops.reload import Reloader, ReloadService
from natsalon.ops.sdnotify import NotifyService

#: TURN options SIGHUP applies (TurnConfig fields the core reads per request)
TURN_RELOADABLE = {
    "turn-user-quota": "user_quota",
    "turn-source-quota": "source_quota",
    "turn-bandwidth": "bandwidth",
    "turn-byte-quota": "byte_quota",
    "turn-max-allocations": "max_allocations",
    "turn-max-lifetime": "max_lifetime",
}


def _settings(options) -> OpsSettings:
    ops = getattr(options, "ops", None)
    return ops if ops is not None else OpsSettings()


def _reparse(options):
    """A parser of the same options class over the same arguments."""

    def parse():
        fresh = type(options)()
        fresh.ops_parse(list(_settings(options).argv))
        return fresh

    return parse


# ------------------------------------------------------------------ salon

def salon_summary(salon) -> str:
    parts = []
    intro = salon.introducer
    rooms = getattr(intro, "rooms", None)
    if rooms is not None and callable(getattr(rooms, "members", None)):
        try:
            parts.append("%d rooms (%d members)" % (len(rooms), rooms.members()))
        except TypeError:
            pass
    if salon.turn is not None:
        n = len(salon.turn.core)
        parts.append("%d TURN allocation%s" % (n, "" if n == 1 else "s"))
    parts.append("%d answered" % salon.state.stats.get("answered", 0))
    return "serving: " + ", ".join(parts)


def _set_rate_limit(salon, limit: int, max_sources: int) -> None:
    from natsalon.server.ratelimit import SourceLimiter

    state = salon.state
    if not limit:
        state.limiter = None
    elif state.limiter is None:
        state.limiter = SourceLimiter(limit, max_sources)
    else:
        state.limiter.limit = limit
        state.limiter.overflow_limit = limit * 10
        state.limiter.max_sources = max_sources


def register_salon_reloads(reloader: Reloader, salon, settings: OpsSettings) -> None:
    def rate(new) -> None:
        _set_rate_limit(salon, new.config.rate_limit, new.config.max_sources)

    reloader.register("rate-limit", rate)
    reloader.register("max-sources", rate)
    reloader.register("log-level", lambda new: settings.levels.set(new.ops.levels.level))
    turn = salon.turn
    if turn is None:
        return
    from natsalon.server.turn.auth import SharedSecretAuth

    def secrets(new) -> None:
        cfg = new.config.turn
        if cfg is None:
            raise ValueError("TURN cannot be turned off by a reload (restart the salon)")
        turn.core.auth = SharedSecretAuth(cfg.secrets, turn.core.auth.realm)

    reloader.register("turn-secrets", secrets)
    for option, fieldname in TURN_RELOADABLE.items():
        def limit(new, fieldname=fieldname) -> None:
            cfg = new.config.turn
            if cfg is None:
                raise ValueError("TURN cannot be turned off by a reload (restart the salon)")
            turn.core.config = turn.core.config._replace(**{fieldname: getattr(cfg, fieldname)})
            if fieldname == "max_lifetime":
                turn.core.config = turn.core.config._replace(default_lifetime=cfg.default_lifetime)

        reloader.register(option, limit)


def attach_salon(reactor, salon: service.MultiService, options: Optional[usage.Options] = None,
                 environ=None) -> service.MultiService:
    """Add the operating services to a SalonService (as its last
    children: they start once its sockets are bound); returns ``salon``."""
    settings = _settings(options)
    totals = None
    turn = salon.turn
    if turn is not None:
        totals = metrics.TurnTotals(reactor)
        observers = getattr(turn.core, "on_delete", None)
        if observers is not None:
            observers.append(totals.ended)
    if settings.metrics is not None:
        registry = metrics.registry(metrics.SalonCollector(salon, reactor, totals))
        host, port = settings.metrics
        metrics.MetricsService(reactor, registry, host, port).setServiceParent(salon)
    if options is not None:
        reloader = Reloader(_reparse(options), options)
        register_salon_reloads(reloader, salon, settings)
        ReloadService(reactor, reloader).setServiceParent(salon)
    notify = NotifyService(reactor, lambda: salon_summary(salon), environ=environ)
    if options is not None:
        reloader.before.append(notify.reloading)
        reloader.after.append(notify.reloaded)
    notify.setServiceParent(salon)
    return salon


# ------------------------------------------------------------------ client

def client_summary(svc) -> str:
    client = svc.client
    if client is None:
        return "opening (resolving the salon, binding)"
    conn = client.connection
    text = client.core.phase.value
    if conn.path is not None:
        text += ", %s path, rtt %.1f ms" % (conn.path.kind, conn.path.rtt * 1000)
    return "%s; frames sent %d, received %d" % (text, conn.sent, conn.received)


def wrap_client(reactor, client_svc, options: Optional[usage.Options] = None, environ=None) -> service.MultiService:
    """The natclient service with its operating services, in one
    MultiService (the client service first)."""
    settings = _settings(options)
    top = service.MultiService()
    client_svc.setServiceParent(top)
    events = metrics.EventCounts()
    observers = getattr(client_svc, "observers", None)
    if observers is not None:
        observers.append(events)
    if settings.metrics is not None:
        registry = metrics.registry(metrics.ClientCollector(client_svc, events, reactor))
        host, port = settings.metrics
        metrics.MetricsService(reactor, registry, host, port).setServiceParent(top)
    notify = NotifyService(reactor, lambda: client_summary(client_svc), environ=environ,
                           ready=lambda: client_svc.client is not None)
    if options is not None:
        reloader = Reloader(_reparse(options), options)
        reloader.register("log-level", lambda new: settings.levels.set(new.ops.levels.level))
        reloader.before.append(notify.reloading)
        reloader.after.append(notify.reloaded)
        ReloadService(reactor, reloader).setServiceParent(top)
    notify.setServiceParent(top)
    return top
