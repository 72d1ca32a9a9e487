"""The NAT lab's IPv6 pieces that need no namespace: the IPv6 router
rulesets and the delay line's IPv6 checksum completion."""

from __future__ import annotations

import socket
import struct

import pytest

from natlab import V6, nft_ruleset, nft_ruleset6
from natlab.delayer import fix_checksum
from natlab.lab import Nat


def test_each_ipv6_behaviour_has_its_forward_policy_and_neighbour_discovery_reaches_the_router():
    for v6, policy in ((V6.OPEN, "accept"), (V6.FIREWALL, "drop"), (V6.NAT66, "drop")):
        rules = nft_ruleset6(v6, 0.0)
        assert "table ip6 natlab6 {" in rules and "policy %s;" % policy in rules.split("chain forward")[1]
        assert "meta l4proto ipv6-icmp accept" in rules.split("chain forward")[0]
        assert ("masquerade" in rules) is (v6 is V6.NAT66)
        assert "natlab_loss6" not in rules
    lossy = nft_ruleset6(V6.FIREWALL, 0.05)
    assert lossy.count("ip6 nexthdr udp numgen random mod 10000 < 500 drop") == 2


def test_a_dual_stack_router_keeps_its_ipv4_rules_out_of_ipv6():
    assert nft_ruleset(Nat.FULL_CONE, "192.0.2.10", False, 0.0, 120).startswith("table inet natlab {")
    assert nft_ruleset(Nat.FULL_CONE, "192.0.2.10", False, 0.0, 120, family="ip").startswith("table ip natlab {")


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _frame6(payload: bytes, proto: int = 17) -> bytes:
    src = socket.inet_pton(socket.AF_INET6, "2001:db8:1::2")
    dst = socket.inet_pton(socket.AF_INET6, "2001:db8::10")
    if proto == 17:
        seg = struct.pack("!HHHH", 40000, 3478, 8 + len(payload), 0x1234) + payload  # a "partial" checksum
    else:
        seg = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 0x50, 0x10, 1024, 0x1234, 0) + payload
    ip6 = struct.pack("!IHBB", 6 << 28, len(seg), proto, 64) + src + dst
    return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip6 + seg


@pytest.mark.parametrize("proto", [17, 6])
@pytest.mark.parametrize("size", [0, 1, 20, 101])
def test_the_delay_line_completes_ipv6_udp_and_tcp_checksums(proto, size):
    frame = _frame6(bytes(range(size)), proto)
    fixed = fix_checksum(frame)
    assert len(fixed) == len(frame) and fixed[:54] == frame[:54]
    seg = fixed[54:]
    pseudo = fixed[22:54] + struct.pack("!IxxxB", len(seg), proto)
    assert _sum16(pseudo + seg) == 0xFFFF  # a correct checksum sums to all ones
    assert fixed[54 + (6 if proto == 17 else 16):][:2] != b"\x12\x34"


def test_frames_it_does_not_know_pass_unchanged():
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
    icmp6 = bytearray(_frame6(b"abc"))
    icmp6[20] = 58
    for frame in (arp, bytes(icmp6), b"\x00" * 10):
        assert fix_checksum(frame) == frame

