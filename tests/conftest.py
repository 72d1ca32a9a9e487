"""Shared pytest configuration: the NAT lab fixtures live in natlab.pytest_plugin."""

pytest_plugins = ["natlab.pytest_plugin"]
