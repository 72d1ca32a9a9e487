"""Failures a room registry reports to the introducer."""


class RegistryUnavailable(Exception):
    """The registry's store cannot be reached now (Redis is down).  The
    introducer counts the request and answers a JOIN 503 (retry later)
    without a log line: the registry logs the outage once, when it starts."""
