"""Shared by client and server: ``HOST:PORT`` parsing and the interface scan."""
