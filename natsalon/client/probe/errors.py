"""Why a probe could not classify: typed failures, each one line for the user."""

from __future__ import annotations


class ProbeError(Exception):
    """The probe could not classify: the message is one line for the user."""


class ServerUnreachable(ProbeError):
    """The server's name does not resolve, there is no route to it, or
    nothing listens on its port (ICMP port unreachable)."""


class ServerUnusable(ProbeError):
    """The server answers, but not with what a probe needs (an error
    response, no mapped address)."""
