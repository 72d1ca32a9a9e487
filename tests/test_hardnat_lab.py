"""Hard NATs in the NAT lab with asymmetric delay: one site 10 ms from the
internet, the other 80 ms (one way), real salon and ``natsalon connect``
processes (helpers of test_connect_lab).  The predicted pairs still connect
by prediction, and the near side waits for the far one's introduction
before its first shot (the salon-coordinated moment)."""
from __future__ import annotations

import pytest

from natlab import Lab, Nat
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
