"""TURN with both IP families (RFC 8656 sections 7.1 to 7.3, 9, 10, 11):
REQUESTED-ADDRESS-FAMILY, ADDITIONAL-ADDRESS-FAMILY and the per-family
peers, on the sans-IO core with plain numbers; then the relay IPs the
salon's options give each family."""

from __future__ import annotations

import itertools

import pytest

from natsalon.server.turn import NonceJar, TurnConfig, TurnCore
from natsalon.stun import Address, Attr, Class, Method, decode
from natsalon.stun.attributes import AddressErrorCode
from test_turn_core import NOW, SECRET, Client, code

RELAY4 = "192.0.2.1"
RELAY6 = "2001:db8::1"
PEER4 = Address("203.0.113.5", 5000)
PEER6 = Address("2001:db8:5::5", 5000)
CLIENT6 = Address("2001:db8:7::7", 40000)
ALLOW = ("2001:db8::/32",)  # as --turn-allow-peer opens it (the relay IPs too)


class FamilyOpener:
    """Hands out relayed addresses of the version asked, recording what is
    written through each (a dual allocation's writes go by the peer's
    family, as the glue's do)."""

    def __init__(self, ips=(RELAY4, RELAY6)) -> None:
        self.ips = {6 if ":" in ip else 4: ip for ip in ips}
        self.ports = itertools.count(50000)
        self.asked = []
        self.fail = set()  # versions that find no free port
        self.closed = []
        self.to_peers = []  # (relayed IP, data, peer)
        self.to_clients = []

    def open(self, alloc, even=False, version=4):
        self.asked.append(version)
        if version in self.fail:
            return None
        ip = self.ips[version]
        alloc.client_write = lambda data, addr: self.to_clients.append((data, addr))
        previous = alloc.relay_write if alloc.handle is not None else None

        def write(data, addr, ip=ip):
            if previous is not None and (":" in addr[0]) != (":" in ip):
                return previous(data, addr)
            self.to_peers.append((ip, data, addr))

        alloc.relay_write = write
        alloc.handle = alloc.handle or object()
        return Address(ip, next(self.ports))

    def close(self, alloc):
        self.closed.append(alloc)


def make_core(ips=(RELAY4, RELAY6), **config):
    opener = FamilyOpener(ips)
    config.setdefault("secrets", (SECRET,))
    config.setdefault("allow_peer", ALLOW)
    core = TurnCore(TurnConfig(**config), opener, nonces=NonceJar(600, key=b"n" * 16), relay_ips=set(ips))
    return core, opener


def relayed(resp):
    return [v for t, v in resp.attributes if t == Attr.XOR_RELAYED_ADDRESS]


UDP = (Attr.REQUESTED_TRANSPORT, 17)
ASK6 = (Attr.REQUESTED_ADDRESS_FAMILY, 2)
ASK4 = (Attr.REQUESTED_ADDRESS_FAMILY, 1)
BOTH = (Attr.ADDITIONAL_ADDRESS_FAMILY, 2)


def test_requested_ipv6_gets_an_ipv6_relayed_address():
    core, opener = make_core()
    resp = Client(core).allocate((UDP, ASK6))
    assert resp.cls == Class.SUCCESS
    assert [a.host for a in relayed(resp)] == [RELAY6] and opener.asked == [6]
    assert resp.get(Attr.ADDRESS_ERROR_CODE) is None


def test_without_the_attribute_or_asking_ipv4_the_relayed_address_is_ipv4():
    core, opener = make_core()
    assert [a.host for a in relayed(Client(core).allocate((UDP,)))] == [RELAY4]
    c = Client(core, addr=Address("198.51.100.8", 1))
    assert [a.host for a in relayed(c.allocate((UDP, ASK4)))] == [RELAY4]
    assert opener.asked == [4, 4]


def test_additional_family_gives_a_dual_allocation():
    core, opener = make_core()
    resp = Client(core).allocate((UDP, BOTH))
    assert resp.cls == Class.SUCCESS
    addrs = relayed(resp)
    assert [a.host for a in addrs] == [RELAY4, RELAY6] and opener.asked == [4, 6]
    assert resp.get(Attr.ADDRESS_ERROR_CODE) is None and len(core) == 1
    assert resp.get(Attr.LIFETIME) == 600


def test_both_family_attributes_is_400_and_additional_ipv4_is_400():
    core, _ = make_core()
    assert code(Client(core).allocate((UDP, ASK4, BOTH))) == 400
    assert code(Client(core).allocate((UDP, ASK6, BOTH))) == 400
    assert code(Client(core).allocate((UDP, (Attr.ADDITIONAL_ADDRESS_FAMILY, 1)))) == 400
    assert len(core) == 0


def test_ipv6_off_is_440_for_ipv6_and_an_address_error_for_additional():
    core, opener = make_core(ips=(RELAY4,))
    assert code(Client(core).allocate((UDP, ASK6))) == 440
    resp = Client(core, addr=Address("198.51.100.8", 1)).allocate((UDP, BOTH))
    assert [a.host for a in relayed(resp)] == [RELAY4] and opener.asked == [4]
    assert resp.get(Attr.ADDRESS_ERROR_CODE) == AddressErrorCode(2, 440, "Address Family not Supported")


def test_ipv4_off_is_440_for_ipv4_and_an_ipv6_only_relay_defaults_to_ipv6():
    core, _ = make_core(ips=(RELAY6,))
    assert code(Client(core).allocate((UDP, ASK4))) == 440
    assert [a.host for a in relayed(Client(core, addr=CLIENT6).allocate((UDP,)))] == [RELAY6]
    assert code(Client(core, addr=Address("2001:db8:7::8", 1)).allocate((UDP, BOTH))) == 440


def test_no_ipv6_port_for_the_additional_family_keeps_the_ipv4_half():
    core, opener = make_core()
    opener.fail.add(6)
    resp = Client(core).allocate((UDP, BOTH))
    assert [a.host for a in relayed(resp)] == [RELAY4]
    assert resp.get(Attr.ADDRESS_ERROR_CODE).code == 508


def test_unknown_family_value_is_440():
    core, _ = make_core()
    assert code(Client(core).allocate((UDP, (Attr.REQUESTED_ADDRESS_FAMILY, 9)))) == 440


def test_permissions_and_channels_follow_the_allocations_families():
    core, _ = make_core()
    v6 = Client(core, addr=CLIENT6)
    assert v6.allocate((UDP, ASK6)).cls == Class.SUCCESS
    assert code(v6.permit(PEER4)) == 443
    assert code(v6.bind(0x4000, PEER4)) == 443
    assert v6.permit(PEER6).cls == Class.SUCCESS
    assert v6.bind(0x4001, PEER6).cls == Class.SUCCESS
    v4 = Client(core)
    assert v4.allocate((UDP,)).cls == Class.SUCCESS
    assert code(v4.permit(PEER6)) == 443
    dual = Client(core, addr=Address("198.51.100.9", 2))
    assert dual.allocate((UDP, BOTH)).cls == Class.SUCCESS
    assert dual.permit(PEER4, PEER6).cls == Class.SUCCESS
    assert dual.bind(0x4000, PEER6).cls == Class.SUCCESS and dual.bind(0x4001, PEER4).cls == Class.SUCCESS


def test_the_peer_filter_covers_ipv6_by_default():
    core, _ = make_core(allow_peer=())
    c = Client(core, addr=CLIENT6)
    assert c.allocate((UDP, ASK6)).cls == Class.SUCCESS
    for host in ("::1", "fe80::1", "fd00::1", "ff02::1", "::", "::ffff:203.0.113.5", "64:ff9b::cb00:7105"):
        assert code(c.permit(Address(host, 1))) == 403, host
    # global addresses; the documentation prefix, as the IPv4 ones, is the lab's public space
    assert c.permit(Address("2a00:1450::1", 1), Address("2001:db8:9::9", 1)).cls == Class.SUCCESS


def test_a_dual_allocation_relays_each_family_through_its_own_address():
    core, opener = make_core()
    c = Client(core)
    c.allocate((UDP, BOTH))
    c.bind(0x4000, PEER6)
    c.permit(PEER4)
    core.channel_data(b"\x40\x00\x00\x03six", (c.addr.host, c.addr.port), c.via)
    c.send(c.raw(Method.SEND, ((Attr.XOR_PEER_ADDRESS, PEER4), (Attr.DATA, b"four")), auth=False,
                 cls=Class.INDICATION))
    assert opener.to_peers == [(RELAY6, b"six", tuple(PEER6)), (RELAY4, b"four", tuple(PEER4))]
    alloc = core.get(tuple(c.addr), c.via)
    core.from_peer(alloc, b"back6", tuple(PEER6))
    core.from_peer(alloc, b"back4", tuple(PEER4))
    assert opener.to_clients[0][0] == b"\x40\x00\x00\x05back6"
    data = decode(opener.to_clients[1][0])
    assert data.method == Method.DATA and data.get(Attr.DATA) == b"back4"
    assert data.get(Attr.XOR_PEER_ADDRESS) == PEER4


def test_refresh_with_a_family_must_match_one_of_the_allocations():
    core, _ = make_core()
    v6 = Client(core, addr=CLIENT6)
    v6.allocate((UDP, ASK6))
    assert code(v6.request(Method.REFRESH, (ASK4,))) == 443
    assert v6.request(Method.REFRESH, (ASK6,)).cls == Class.SUCCESS
    dual = Client(core)
    dual.allocate((UDP, BOTH))
    assert dual.request(Method.REFRESH, (ASK4,)).cls == Class.SUCCESS
    assert dual.request(Method.REFRESH, (ASK6,)).cls == Class.SUCCESS


def test_deleting_a_dual_allocation_frees_both_relayed_addresses():
    core, opener = make_core(allow_peer=())
    a, b = Client(core), Client(core, addr=Address("198.51.100.9", 2))
    resp = a.allocate((UDP, BOTH))
    six = relayed(resp)[1]
    assert b.allocate((UDP, ASK6)).cls == Class.SUCCESS
    assert b.bind(0x4000, Address(six.host, six.port)).cls == Class.SUCCESS  # allocation to allocation
    assert core.destination_ok((six.host, six.port))
    assert a.refresh(0).cls == Class.SUCCESS
    assert len(core) == 1 and len(opener.closed) == 1
    assert not core.destination_ok((six.host, six.port))
    assert 0x4000 not in core.get(tuple(b.addr), b.via).bindings
    core.sweep(NOW + 10_000)
    assert len(core) == 0


# ------------------------------------------------------------ the salon's options


def _parse(*argv):
    from natsalon.server import tap

    opts = tap.Options()
    opts.parseOptions(list(argv))
    return opts


@pytest.fixture
def host_addresses(monkeypatch):
    from natsalon.server.turn.options import TurnOptionsMixin

    def set_(*addresses):
        monkeypatch.setattr(TurnOptionsMixin, "turn_addresses", staticmethod(lambda: frozenset(addresses)))
    return set_


def test_the_ipv6_relay_ip_is_the_ipv6_interface_or_advertise():
    turn = _parse("--interface", "192.0.2.1", "--interface", "2001:db8::1").config.turn
    assert (turn.relay_ip, turn.second_relay_ip) == ("192.0.2.1", "2001:db8::1")
    turn = _parse("--interface", "192.0.2.1", "--interface", "::", "--advertise", "2001:db8::7").config.turn
    assert turn.second_relay_ip == "2001:db8::7"
    turn = _parse("--interface", "2001:db8::1", "--interface", "192.0.2.1").config.turn
    assert (turn.relay_ip, turn.second_relay_ip) == ("2001:db8::1", "192.0.2.1")


def test_a_specific_ipv4_interface_alone_relays_ipv4_only():
    assert _parse("--interface", "192.0.2.1").config.turn.second_relay_ip == ""


def test_on_the_wildcard_the_hosts_one_global_ipv6_address(host_addresses):
    host_addresses("192.0.2.1", "127.0.0.1", "::1", "fe80::1", "fd00::5", "2001:db8::44")
    turn = _parse().config.turn
    assert (turn.relay_ip, turn.second_relay_ip) == ("192.0.2.1", "2001:db8::44")
    turn = _parse("--interface", "::").config.turn
    assert (turn.relay_ip, turn.second_relay_ip) == ("192.0.2.1", "2001:db8::44")


@pytest.mark.parametrize("addresses", [("192.0.2.1", "::1", "fe80::1"), ("192.0.2.1", "2001:db8::1", "2001:db8::2")])
def test_no_or_several_ipv6_addresses_leave_ipv6_relaying_off(host_addresses, addresses):
    host_addresses(*addresses)
    turn = _parse().config.turn
    assert (turn.relay_ip, turn.second_relay_ip) == ("192.0.2.1", "")


def test_the_salon_wires_both_families_into_the_relay():
    from natsalon.server import tap

    svc = tap.makeService(_parse("--interface", "192.0.2.1", "--interface", "2001:db8::1"))
    relays = svc.turn.relays
    assert relays.by_version == {4: ("192.0.2.1", "192.0.2.1"), 6: ("2001:db8::1", "2001:db8::1")}
    assert svc.turn.core.versions == {4, 6}
    svc = tap.makeService(_parse("--interface", "192.0.2.1"))
    assert svc.turn.core.versions == {4}
