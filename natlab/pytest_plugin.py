"""pytest fixtures for the NAT lab (loaded by tests/conftest.py).

- ``natlab``: a function-scoped :class:`natlab.Lab`, torn down after the test
  (also on failure); the test fails if any of its namespaces is left.
- ``natlab_factory``: call it to get more labs in one test.
- Tests marked ``nat`` that are skipped turn into failures when ``CI`` is true
  (CI runs as root, so a skipped NAT test there means the lab is broken).
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, List

import pytest

from .lab import Lab, cleanup_stale, list_netns, unavailable_reason


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "nat: tests that build real NATs in network namespaces (need root, ip, nft)")


def pytest_sessionstart(session: pytest.Session) -> None:
    if unavailable_reason() is None:
        cleanup_stale()


def _require_lab() -> None:
    reason = unavailable_reason()
    if reason:
        if in_ci():
            pytest.fail("NAT lab unavailable in CI (CI=true), a skipped NAT test is a failure: "
                        + reason, pytrace=False)
        pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and in_ci() and item.get_closest_marker("nat") is not None
            and not hasattr(report, "wasxfail")):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = "NAT test skipped in CI (CI=true), which counts as a failure: %s" % reason


def _check_gone(labs: List[Lab]) -> None:
    left = [ns for ns in list_netns() for lab in labs if ns.startswith(lab.prefix)]
    assert not left, "NAT lab left namespaces behind: %s" % left


@pytest.fixture
def natlab() -> Iterator[Lab]:
    """A fresh lab (server + third host, no sites yet); torn down after the test."""
    _require_lab()
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()
    _check_gone([lab])


@pytest.fixture
def natlab_factory() -> Iterator[Callable[[], Lab]]:
    """``natlab_factory()`` returns a new Lab; all are torn down after the test."""
    _require_lab()
    labs: List[Lab] = []

    def make() -> Lab:
        lab = Lab()
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.close()
    _check_gone(labs)
