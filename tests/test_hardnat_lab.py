"""Hard NATs in the NAT lab with asymmetric delay: one site 10 ms from the
internet, the other 80 ms (one way), real salon and ``natsalon connect``
processes (helpers of test_connect_lab).  The predicted pairs still connect
by prediction, and the near side waits for the far one's introduction
before its first shot (the salon-coordinated moment)."""
from __future__ import annotations

import pytest

from natlab import Lab, Nat
from natlab.flows import start_flows
from natlab.salon import start_salon

from test_connect_lab import _check, _last, _run_pairs

P, W, Q = Nat.PORT_RESTRICTED_CONE, Nat.SYMMETRIC_UDP_FIREWALL, Nat.SYMMETRIC_SEQUENTIAL
SHORT = {P: "p", W: "w", Q: "q"}
NEAR, FAR = 10, 80  # one-way ms on the WAN link of each side's site


@pytest.mark.nat
def test_predicted_pairs_with_asymmetric_delay(natlab: Lab) -> None:
    lab = natlab
    jobs = []
    for i, (a, b) in enumerate(((Q, P), (Q, W), (Q, Q))):
        ha = lab.add_site("an%d%s" % (i, SHORT[a]), a, delay_ms=NEAR).hosts[0]
        hb = lab.add_site("af%d%s" % (i, SHORT[b]), b, delay_ms=FAR).hosts[0]
        jobs.append(("asym-%s-%s" % (a.name, b.name), ha, hb))
    start_salon(lab)
    results, took = _run_pairs(lab, jobs, 25.0)
    print("asymmetric pairs took %.1fs" % took)
    problems = _check(results, [])
    assert not problems, "\n".join(problems)
    for label, (near, far) in results.items():
        plan_near, plan_far = _last(near[1], "strategy"), _last(far[1], "strategy")
        assert plan_near["strategy"] == plan_far["strategy"] == "predicted", (label, plan_near, plan_far)
        # the near side's round trip to the salon is about 20 ms, the far one's 160 ms: it waits about 70 ms
        # (a loaded machine adds to both round trips; the wait is their difference, so it stays near 70)
        assert 40 <= plan_near.get("wait_ms", 0) <= 100, (label, plan_near)
        assert "wait_ms" not in plan_far, (label, plan_far)


@pytest.mark.nat
def test_busy_sequential_against_sequential(natlab: Lab) -> None:
    """Two sequential NATs, a second host behind one of them opening 20 new
    flows per second (ports taken between the probe and the shots): still a
    predicted path, each way round."""
    lab = natlab
    jobs = []
    for i in range(2):
        busy = lab.add_site("bq%d" % i, Q, hosts=2)
        start_flows(busy.hosts[1], rate=20)
        quiet = lab.add_site("qq%d" % i, Q).hosts[0]
        pair = (busy.hosts[0], quiet) if i == 0 else (quiet, busy.hosts[0])
        jobs.append(("busy%d-%s-%s" % (i, Q.name, Q.name),) + pair)
    start_salon(lab)
    results, took = _run_pairs(lab, jobs, 25.0)
    problems = _check(results, [], strategies={(Q, Q): "predicted"})
    assert not problems, "\n".join(problems)
