"""The NAT lab: an emulated internet of network namespaces with real Linux NATs.

Topology (every name starts with the per-lab prefix ``nsl<pid>-<n>-``)::

    server (203.0.113.10 + .11) ─┐
    third  (198.51.100.20)      ─┤
                                 br0 in "inet" ── [wire: delay line] ── router "a" ── lan0 bridge ── a1, a2
                                 ...                                    (nftables NAT)

Public addresses come only from the documentation ranges, LANs are 10.N.0.0/24;
no namespace has a default route, every public namespace only has routes for
the three documentation /24s, so nothing can leave the lab.

Behaviours (mapping / filtering in RFC 4787 terms) and the external ports they yield:

=======================  =====================================================  ==========================
Nat                      how                                                    external port
=======================  =====================================================  ==========================
OPEN                     host has a public /32, router forwards (proxy ARP)     the host's own port
FULL_CONE                masquerade + DNAT of any inbound to a live mapping     source port kept (EIM)
                         (dynamic nft map ext port -> host ip . port)
RESTRICTED_CONE          as FULL_CONE, DNAT only from remote addresses the      source port kept (EIM)
                         mapping has sent to (nft set ext port . remote ip)
PORT_RESTRICTED_CONE     plain masquerade; conntrack filters                    source port kept (EIM)
SYMMETRIC_RANDOM         masquerade fully-random                                uniformly random per flow
SYMMETRIC_SEQUENTIAL     snat to numgen-inc-indexed map of ports                20000, 20001, ... per new
                                                                                flow of the site (wraps
                                                                                after 1000)
SYMMETRIC_UDP_FIREWALL   public /32 host, stateful forward filter (conntrack)   the host's own port
UDP_BLOCKED              masquerade, forward drops all UDP                      -
=======================  =====================================================  ==========================

"Source port kept" is Linux's port-preserving allocation: the host's port unless
another flow already holds it towards the same destination (then another port).
Every router drops unsolicited WAN traffic to itself (input policy drop), so an
early punch packet can't create a conntrack entry that steals a host's port.
Hairpin (hairpin=True): a LAN packet to the router's public address and a live
mapping's port is DNATed to the mapped host and SNATed to the public address, so
the peer sees the sender's public address (its public port, when kept); with
hairpin=False such packets end at the router.  Hairpin ignores filtering.
Mapping lifetime: conntrack (30 s one-way, 120 s once answered; both become
``udp_timeout`` when given); the full/restricted cone inbound map and peer set
live ``udp_timeout`` (default 120 s) after the last outbound packet.
Loss: nft ``numgen random`` drops on the router's WAN port (netdev ingress and
egress), independently in each direction.  Delay: the WAN link runs through a
"wire" namespace where delayer.py relays frames between two veths after
``delay_ms`` (each direction, so the RTT grows by 2*delay_ms).  Lab veths use
gso_max_segs 1 so the relay never sees frames bigger than the MTU.

IPv6 (optional: ``add_site(..., v6=V6.FIREWALL)``; the lab stays IPv4-only until
the first such site).  Addresses come from 2001:db8::/32 only: the internet
segment is 2001:db8::/64 (server 2001:db8::10 + ::11, third 2001:db8::20, site
routers' WAN 2001:db8::1:N), site N's LAN 2001:db8:N::/64 (router ::1, hosts
::2, ::3).  The internet hosts and every router get a route to each public
site LAN via its router (no default routes, as in IPv4).  Addresses are added
``nodad`` and DAD is off, so they are usable at once.

=======================  =====================================================  ==========================
V6                       how                                                    external address
=======================  =====================================================  ==========================
OPEN                     global address, router forwards, no filter             the host's own
FIREWALL                 global address, stateful forward filter (conntrack):   the host's own
                         endpoint-independent mapping, address-and-port-
                         dependent filtering (a home router's IPv6)
NAT66                    masquerade to the router's WAN address (ports kept     the router's WAN address
                         when free), conntrack filters
=======================  =====================================================  ==========================

A site is dual-stack (``nat`` for IPv4, ``v6`` for IPv6) or IPv6-only
(``nat=None``).  On a site with IPv6 the IPv4 ruleset is ``table ip`` (not
``inet``) and IPv6 has its own ``table ip6``; ICMPv6 reaches the router (neighbour
discovery).  Loss drops IPv6 UDP too (not ICMPv6, so neighbour discovery stands);
the delay line carries IPv6.  No IPv6 hairpin.
"""
from __future__ import annotations

import atexit
import enum
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from typing import Dict, List, Optional, Sequence, Tuple, Union

log = logging.getLogger("natlab")

PREFIX = "nsl"
_STALE_RE = re.compile(r"^%s(\d+)-" % PREFIX)
DOC_NETS = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
SERVER_IPS = ("203.0.113.10", "203.0.113.11")
THIRD_IP = "198.51.100.20"
DOC_NET6 = "2001:db8::/32"
INET6 = "2001:db8::/64"  # the internet segment (br0)
SERVER_IPS6 = ("2001:db8::10", "2001:db8::11")
THIRD_IP6 = "2001:db8::20"
SEQ_BASE = 20000  # first port of SYMMETRIC_SEQUENTIAL allocation
SEQ_SPAN = 1000   # ports SEQ_BASE .. SEQ_BASE+SEQ_SPAN-1, then wrap
DEFAULT_BINDING_TIMEOUT = 120  # s, lifetime of full/restricted cone inbound mappings (== conntrack stream timeout)

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE_SCRIPT = os.path.join(HERE, "udpprobe.py")
DELAYER_SCRIPT = os.path.join(HERE, "delayer.py")


class LabError(RuntimeError):
    pass


class Nat(enum.Enum):
    """NAT behaviours (RFC 4787 terms); the table in the natlab.lab docstring says how each is built."""

    OPEN = "open"                                  # public address, no NAT, no filter
    FULL_CONE = "full_cone"                        # EIM + endpoint-independent filtering
    RESTRICTED_CONE = "restricted_cone"            # EIM + address-dependent filtering
    PORT_RESTRICTED_CONE = "port_restricted_cone"  # EIM + address-and-port-dependent filtering
    SYMMETRIC_RANDOM = "symmetric_random"          # new random port per destination
    SYMMETRIC_SEQUENTIAL = "symmetric_sequential"  # next port per destination
    SYMMETRIC_UDP_FIREWALL = "symmetric_udp_firewall"  # public address, stateful filter
    UDP_BLOCKED = "udp_blocked"                    # NAT, but no UDP at all

    @property
    def translates(self) -> bool:
        return self not in (Nat.OPEN, Nat.SYMMETRIC_UDP_FIREWALL)


class V6(enum.Enum):
    """A site's IPv6 behaviour; the table in the natlab.lab docstring says how each is built."""

    OPEN = "open"          # global address, no filter
    FIREWALL = "firewall"  # global address, stateful filter (EIM, address-and-port-dependent filtering)
    NAT66 = "nat66"        # masquerade to the router's WAN address

    @property
    def translates(self) -> bool:
        return self is V6.NAT66


def _run(argv: Sequence[str], check: bool = True, input: Optional[str] = None,
         timeout: float = 30) -> subprocess.CompletedProcess:
    p = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise LabError("%s failed (rc=%d): %s" % (" ".join(argv[:6]), p.returncode,
                                                   (p.stderr or p.stdout).strip()))
    return p


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_netns() -> List[str]:
    p = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def _kill_ns_pids(ns: str) -> None:
    p = _run(["ip", "netns", "pids", ns], check=False)
    for tok in p.stdout.split():
        try:
            os.kill(int(tok), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


def delete_netns(ns: str) -> None:
    _kill_ns_pids(ns)
    _run(["ip", "netns", "del", ns], check=False)


def cleanup_stale() -> List[str]:
    """Delete lab namespaces left by runs whose process is gone. Returns their names."""
    removed = []
    for ns in list_netns():
        m = _STALE_RE.match(ns)
        if m and not _pid_alive(int(m.group(1))):
            log.info("removing stale lab namespace %s", ns)
            delete_netns(ns)
            removed.append(ns)
    return removed


def unavailable_reason() -> Optional[str]:
    """Why namespaces can't be built here, or None if they can."""
    if os.environ.get("NATLAB_DISABLE"):
        return "the NAT lab is disabled by NATLAB_DISABLE=%s" % os.environ["NATLAB_DISABLE"]
    if not sys.platform.startswith("linux"):
        return "the NAT lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the NAT lab needs root to build network namespaces (run the tests as root)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return "the NAT lab needs %r (iproute2 / nftables) on PATH" % tool
    return None


_live_labs: "weakref.WeakSet[Lab]" = weakref.WeakSet()
_counter_lock = threading.Lock()
_counter = [0]


@atexit.register
def _close_all() -> None:
    for lab in list(_live_labs):
        try:
            lab.close()
        except Exception:  # pragma: no cover - best effort at exit
            log.exception("closing lab at exit")


class Host:
    """A namespace in the lab. ``ips[0]`` is its main address."""

    def __init__(self, lab: "Lab", name: str, ns: str, ips: Sequence[str]) -> None:
        self.lab = lab
        self.name = name
        self.ns = ns
        self.ips: Tuple[str, ...] = tuple(ips)
        #: IPv6 addresses (empty on an IPv4-only host)
        self.ips6: Tuple[str, ...] = ()

    @property
    def ip(self) -> str:
        return self.ips[0]

    @property
    def ip6(self) -> Optional[str]:
        """The main IPv6 address, or None."""
        return self.ips6[0] if self.ips6 else None

    def __repr__(self) -> str:
        return "Host(%s, ns=%s, ips=%s)" % (self.name, self.ns, self.ips)

    def argv(self, argv: Sequence[str]) -> List[str]:
        return ["ip", "netns", "exec", self.ns] + [str(a) for a in argv]

    def run(self, argv: Sequence[str], timeout: float = 60, check: bool = False,
            **kw) -> subprocess.CompletedProcess:
        """Run a command in this namespace and wait; output captured as text."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.argv(argv), timeout=timeout, check=check, **kw)

    def spawn(self, argv: Sequence[str], **popen_kw) -> subprocess.Popen:
        """Start a process in this namespace; the lab ends it (group-wide) at close."""
        return self.lab._spawn(self, argv, **popen_kw)

    def python(self, code_or_argv: Union[str, Sequence[str]], *args: str, spawn: bool = False,
               timeout: float = 60, **kw):
        """Run sys.executable here: a code string (``-c``) or an argv list (script, args...)."""
        if isinstance(code_or_argv, str):
            argv = [sys.executable, "-c", code_or_argv] + list(args)
        else:
            argv = [sys.executable] + list(code_or_argv) + list(args)
        if spawn:
            return self.spawn(argv, **kw)
        return self.run(argv, timeout=timeout, **kw)

    def probe(self) -> "Probe":
        from .probe import Probe
        return Probe(self)


class Site:
    """A router namespace (``router``) with hosts behind it."""

    def __init__(self, name: str, nat: Nat, router: Host, hosts: List[Host], public_ip: str,
                 lan: str, hairpin: bool, loss: float, delay_ms: float,
                 udp_timeout: Optional[int]) -> None:
        self.name = name
        self.nat = nat
        self.router = router
        self.hosts = hosts
        self.public_ip = public_ip
        self.lan = lan
        self.hairpin = hairpin
        self.loss = loss
        self.delay_ms = delay_ms
        self.udp_timeout = udp_timeout
        self.ruleset = ""
        #: IPv6 behaviour (None: IPv4 only), the router's WAN address, the LAN prefix
        self.v6: Optional[V6] = None
        self.public_ip6: Optional[str] = None
        self.lan6: Optional[str] = None

    def __repr__(self) -> str:
        return "Site(%s, %s, public_ip=%s, hosts=%s%s)" % (
            self.name, self.nat.name if self.nat else None, self.public_ip, [h.ip for h in self.hosts],
            ", v6=%s" % self.v6.name if self.v6 else "")

    def conntrack(self) -> str:
        """The router's conntrack table (needs conntrack-tools), for debugging."""
        return self.router.run(["conntrack", "-L"]).stdout

    def set_nat(self, nat: Nat) -> None:
        """Change the router's behaviour to ``nat`` while hosts are using it
        (between NATs that translate, UDP_BLOCKED excepted): one nft
        transaction swaps the rulesets.  Conntrack stays, so every live
        mapping keeps its external port and flows go on; new flows are
        mapped, and inbound packets filtered, the new way."""
        usable = {n for n in Nat if n.translates} - {Nat.UDP_BLOCKED}
        if nat not in usable or self.nat not in usable:
            raise ValueError("set_nat swaps between translating NATs only (%s -> %s)" % (self.nat.name, nat.name))
        drop = ["delete table inet natlab", "delete table ip natlab_nat"]
        if self.loss > 0:
            drop.append("delete table netdev natlab_loss")
        ruleset = nft_ruleset(nat, self.public_ip, self.hairpin, self.loss,
                              self.udp_timeout or DEFAULT_BINDING_TIMEOUT)
        r = self.router.run(["nft", "-f", "-"], input="\n".join(drop) + "\n" + ruleset)
        if r.returncode != 0:
            raise LabError("site %s: nft refused the new ruleset: %s" % (self.name, r.stderr))
        self.nat = nat
        self.ruleset = ruleset


def nft_ruleset(nat: Nat, wan_ip: str, hairpin: bool, loss: float,
                binding_timeout: int, family: str = "inet") -> str:
    """The nftables ruleset of a site router (WAN port ``wan0``, LAN bridge ``lan0``);
    ``family`` "ip" on a site with IPv6, whose own rules are :func:`nft_ruleset6`'s."""
    bt = "%ds" % binding_timeout
    fwd_policy = "accept" if nat is Nat.OPEN else "drop"
    fwd = []
    if nat is Nat.UDP_BLOCKED:
        fwd.append("meta l4proto udp drop")
    fwd += ["ct state established,related accept", 'iifname "lan0" accept']
    if nat in (Nat.FULL_CONE, Nat.RESTRICTED_CONE):
        fwd.append("ct status dnat accept")
    out = [
        "table %s natlab {" % family,
        # A home router: nothing unsolicited from the WAN reaches the router itself,
        # so an early punch packet can't create a conntrack entry on the router.
        "  chain input { type filter hook input priority 0; policy drop;",
        '    iif "lo" accept',
        "    ct state established,related accept",
        '    iifname "lan0" accept',
        "  }",
        "  chain forward { type filter hook forward priority 0; policy %s;" % fwd_policy,
    ] + ["    " + r for r in fwd] + ["  }", "}"]
    if nat.translates:
        pre, post = [], []
        mapped = "udp dport map @mapping"
        if nat is Nat.FULL_CONE:
            pre.append('iifname "wan0" udp dport @mapping dnat ip to %s' % mapped)
        elif nat is Nat.RESTRICTED_CONE:
            pre.append('iifname "wan0" udp dport . ip saddr @peers dnat ip to %s' % mapped)
        if hairpin:
            pre.append('iifname "lan0" ip daddr %s udp dport @mapping dnat ip to %s' % (wan_ip, mapped))
            post.append('iifname "lan0" oifname "lan0" ct status dnat snat ip to %s' % wan_ip)
        if nat is Nat.SYMMETRIC_RANDOM:
            post.append('oifname "wan0" masquerade fully-random')
        elif nat is Nat.SYMMETRIC_SEQUENTIAL:
            elems = ", ".join("%d : %s . %d" % (i, wan_ip, SEQ_BASE + i) for i in range(SEQ_SPAN))
            post.append('oifname "wan0" meta l4proto udp snat ip to numgen inc mod %d map { %s }'
                        % (SEQ_SPAN, elems))
            post.append('oifname "wan0" masquerade')
        else:
            post.append('oifname "wan0" masquerade')
        out += [
            "table ip natlab_nat {",
            # external port -> internal ip . port, refreshed by outbound traffic
            "  map mapping { type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout %s; }" % bt,
            # external port . remote address the mapping has sent to
            "  set peers { type inet_service . ipv4_addr; flags dynamic,timeout; timeout %s; }" % bt,
            "  chain pre { type nat hook prerouting priority dstnat; policy accept;",
        ] + ["    " + r for r in pre] + [
            "  }",
            "  chain post { type nat hook postrouting priority srcnat; policy accept;",
        ] + ["    " + r for r in post] + [
            "  }",
            # after srcnat: the packet carries its external address already
            "  chain track { type filter hook postrouting priority 200; policy accept;",
            '    oifname "wan0" ct direction original update @mapping { udp sport timeout %s : ct original ip saddr . ct original proto-src }' % bt,
            '    oifname "wan0" ct direction reply update @mapping { udp sport timeout %s : ct reply ip saddr . ct reply proto-src }' % bt,
            '    oifname "wan0" update @peers { udp sport . ip daddr timeout %s }' % bt,
            "  }",
            "}",
        ]
    if loss > 0:
        n = int(round(loss * 10000))
        out += [
            "table netdev natlab_loss {",
            '  chain in { type filter hook ingress device "wan0" priority 0; meta protocol ip numgen random mod 10000 < %d drop; }' % n,
            '  chain out { type filter hook egress device "wan0" priority 0; meta protocol ip numgen random mod 10000 < %d drop; }' % n,
            "}",
        ]
    return "\n".join(out) + "\n"


def nft_ruleset6(v6: V6, loss: float) -> str:
    """The IPv6 nftables ruleset of a site router (WAN port ``wan0``, LAN bridge ``lan0``)."""
    out = [
        "table ip6 natlab6 {",
        "  chain input { type filter hook input priority 0; policy drop;",
        '    iif "lo" accept',
        "    ct state established,related accept",
        '    iifname "lan0" accept',
        "    meta l4proto ipv6-icmp accept",  # neighbour discovery
        "  }",
        "  chain forward { type filter hook forward priority 0; policy %s;" % ("accept" if v6 is V6.OPEN else "drop"),
        "    ct state established,related accept",
        '    iifname "lan0" accept',
        "  }",
        "}",
    ]
    if v6 is V6.NAT66:
        out += [
            "table ip6 natlab6_nat {",
            "  chain post { type nat hook postrouting priority srcnat; policy accept;",
            '    oifname "wan0" masquerade',
            "  }",
            "}",
        ]
    if loss > 0:
        n = int(round(loss * 10000))
        rule = "meta protocol ip6 ip6 nexthdr udp numgen random mod 10000 < %d drop" % n
        out += [
            "table netdev natlab_loss6 {",
            '  chain in { type filter hook ingress device "wan0" priority 0; %s; }' % rule,
            '  chain out { type filter hook egress device "wan0" priority 0; %s; }' % rule,
            "}",
        ]
    return "\n".join(out) + "\n"


class Lab:
    """A lab of namespaces; use as a context manager (or call close())."""

    def __init__(self, prefix: Optional[str] = None) -> None:
        reason = unavailable_reason()
        if reason:
            raise LabError(reason)
        with _counter_lock:
            _counter[0] += 1
            n = _counter[0]
        self.prefix = prefix or "%s%d-%d-" % (PREFIX, os.getpid(), n)
        self.namespaces: List[str] = []
        self.sites: Dict[str, Site] = {}
        self._procs: List[subprocess.Popen] = []
        self._port_counter = 0
        self._closed = False
        self._wan_next = 10
        self._pub_next = 100
        self.ipv6 = False  # the core has IPv6 (enable_ipv6)
        self._routes6: List[Tuple[str, str]] = []  # (public site LAN prefix, its router's WAN address)
        self._v6_namespaces: List[str] = []  # where those routes go: server, third, IPv6 routers
        _live_labs.add(self)
        try:
            cleanup_stale()
            self._build_core()
        except BaseException:
            self.close()
            raise

    # -- context manager -------------------------------------------------
    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------
    def _ns(self, short: str) -> str:
        ns = self.prefix + short
        _run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        # disable IPv6 (no ND/MLD noise), no reverse-path filtering, no redirects,
        # no bridge netfilter.
        _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
              "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
              "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
              "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0"])
        # bridge-nf-call-* exist only once br_netfilter is loaded; set them if present
        _run(["ip", "netns", "exec", ns, "sh", "-c",
              "for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ -e $f ] && echo 0 > $f; done; true"],
             check=False)
        self._ip(ns, "link set dev lo up")
        return ns

    def _ip(self, ns: str, *cmds: str) -> None:
        _run(["ip", "-n", ns, "-batch", "-"], input="\n".join(cmds) + "\n")

    def _attach_to_internet(self, ns: str, ifname: str) -> None:
        """A veth from the internet bridge to ``ifname`` in ``ns``."""
        self._port_counter += 1
        port = "p%d" % self._port_counter
        self._ip(self.inet_ns,
                 "link add %s type veth peer name %s netns %s" % (port, ifname, ns),
                 "link set dev %s master br0 up" % port)
        self._no_gso(self.inet_ns, port)
        self._no_gso(ns, ifname)

    def _no_gso(self, ns: str, ifname: str) -> None:
        # One segment per skb: the delay line relays frames through packet sockets,
        # which can't send a TSO/GSO super-frame bigger than the MTU.
        self._ip(ns, "link set dev %s gso_max_segs 1" % ifname)

    def _public_host(self, short: str, ips: Sequence[str]) -> Host:
        ns = self._ns(short)
        self._attach_to_internet(ns, "eth0")
        cmds = ["addr add %s/24 dev eth0" % ip for ip in ips] + ["link set dev eth0 up"]
        own = {self._net_of(ip) for ip in ips}
        cmds += ["route add %s dev eth0" % net for net in DOC_NETS if net not in own]
        self._ip(ns, *cmds)
        return Host(self, short, ns, ips)

    @staticmethod
    def _net_of(ip: str) -> str:
        return ip.rsplit(".", 1)[0] + ".0/24"

    def _build_core(self) -> None:
        self.inet_ns = self._ns("inet")
        self._ip(self.inet_ns, "link add br0 type bridge", "link set dev br0 up")
        self.server = self._public_host("server", SERVER_IPS)
        self.third = self._public_host("third", (THIRD_IP,))

    # -- IPv6 -------------------------------------------------------------
    def _v6_sysctls(self, ns: str, forwarding: bool = False) -> None:
        """IPv6 on in ``ns`` (the lab turns it off everywhere), with no DAD (addresses usable
        at once) and no router advertisements taken; a router forwards."""
        settings = ["net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_ra=0", "net.ipv6.conf.all.accept_ra=0",
                    "net.ipv6.conf.default.disable_ipv6=0", "net.ipv6.conf.all.disable_ipv6=0"]
        if forwarding:
            settings.append("net.ipv6.conf.all.forwarding=1")
        self._run_sysctl(ns, *settings)

    def enable_ipv6(self) -> None:
        """Give the core IPv6 (the server's two addresses, the third host's); idempotent,
        and called by the first ``add_site(..., v6=...)``."""
        if self.ipv6:
            return
        self._ip(self.inet_ns, "link set dev br0 type bridge mcast_snooping 0")
        for host, ips in ((self.server, SERVER_IPS6), (self.third, (THIRD_IP6,))):
            self._run_sysctl(host.ns, "net.ipv6.conf.eth0.accept_dad=0")
            self._v6_sysctls(host.ns)
            self._ip(host.ns, *["addr add %s/64 dev eth0 nodad" % ip for ip in ips])
            host.ips6 = tuple(ips)
            self._v6_namespaces.append(host.ns)
        self.ipv6 = True

    def _site_v6(self, rns: str, idx: int, wan_n: int, v6: V6) -> Tuple[str, str]:
        """A site router's IPv6: addresses, routes to the public site LANs, and (open,
        firewall) its own LAN made reachable.  Returns (WAN address, LAN prefix)."""
        wan6, lan6 = "2001:db8::1:%d" % wan_n, "2001:db8:%x::" % idx
        cmds = ["addr add %s/64 dev wan0 nodad" % wan6, "addr add %s1/64 dev lan0 nodad" % lan6]
        cmds += ["route add %s via %s dev wan0" % (net, via) for net, via in self._routes6]
        self._ip(rns, *cmds)
        if not v6.translates:
            route = ("%s/64" % lan6, wan6)
            for ns in self._v6_namespaces:
                self._ip(ns, "route add %s via %s" % route)
            self._routes6.append(route)
        self._v6_namespaces.append(rns)
        return wan6, lan6

    # -- sites ------------------------------------------------------------
    def add_site(self, name: str, nat: Nat = Nat.PORT_RESTRICTED_CONE, hosts: int = 1,
                 hairpin: bool = False, loss: float = 0.0, delay_ms: float = 0,
                 udp_timeout: Optional[int] = None, v6: Optional[V6] = None) -> Site:
        """A router doing ``nat`` with ``hosts`` hosts behind it.

        v6: the site's IPv6 behaviour (default None: IPv4 only); with ``nat=None`` the
        site is IPv6-only.

        loss: probability (0..1) that a packet crossing the router's WAN port is
        dropped, applied independently in each direction.  delay_ms: one-way
        delay added in each direction on the WAN link (RTT grows by 2*delay_ms).
        udp_timeout: seconds for nf_conntrack_udp_timeout and _stream in the router
        (and the inbound mapping lifetime of full/restricted cone).
        """
        if self._closed:
            raise LabError("lab is closed")
        if not re.match(r"^[a-z][a-z0-9]{0,7}$", name) or name in self.sites or name in ("inet", "server", "third"):
            raise ValueError("site name must be a new short lowercase word: %r" % name)
        if not 1 <= hosts <= 2:
            raise ValueError("a site has one or two hosts")
        if not 0 <= loss < 1:
            raise ValueError("loss is a probability in [0, 1)")
        if nat is None and v6 is None:
            raise ValueError("a site needs IPv4 (nat) or IPv6 (v6)")
        if nat is not None and not isinstance(nat, Nat):
            nat = Nat(nat)
        if v6 is not None and not isinstance(v6, V6):
            v6 = V6(v6)
        if v6 is not None:
            self.enable_ipv6()
        idx = len(self.sites) + 1
        lan = "10.%d.0" % idx
        wan_ip = "192.0.2.%d" % self._wan_next
        self._wan_next += 1
        if self._wan_next > 250:
            raise LabError("too many sites")
        wan_n = self._wan_next - 1
        rns = self._ns(name)
        self._run_sysctl(rns, "net.ipv4.ip_forward=1")
        if v6 is not None:
            self._v6_sysctls(rns, forwarding=True)
        # WAN link, optionally through a delay line in its own namespace
        if delay_ms and delay_ms > 0:
            wns = self._ns(name + "w")
            self._ip(rns, "link add wan0 type veth peer name wa netns %s" % wns)
            self._no_gso(rns, "wan0")
            self._no_gso(wns, "wa")
            self._attach_to_internet(wns, "wb")
            self._ip(wns, "link set dev wa up", "link set dev wb up")
            p = self._spawn(Host(self, name + "w", wns, ()),
                            [sys.executable, DELAYER_SCRIPT, "wa", "wb", str(delay_ms)],
                            stdout=subprocess.PIPE, text=True)
            line = p.stdout.readline() if p.stdout else ""
            if "ready" not in line:
                raise LabError("delay line of site %s did not start" % name)
        else:
            self._attach_to_internet(rns, "wan0")
        cmds = ["addr add %s/24 dev wan0" % wan_ip, "link set dev wan0 up",
                "link add lan0 type bridge", "addr add %s.1/24 dev lan0" % lan, "link set dev lan0 up"]
        cmds += ["route add %s dev wan0" % net for net in DOC_NETS if net != self._net_of(wan_ip)]
        if nat is None:  # IPv6-only: no IPv4 on the router
            cmds = [c for c in cmds if not c.startswith(("addr", "route"))]
        self._ip(rns, *cmds)
        wan6 = lan6 = None
        if v6 is not None:
            wan6, lan6 = self._site_v6(rns, idx, wan_n, v6)
        host_objs = []
        for j in range(1, hosts + 1):
            hns = self._ns("%s%d" % (name, j))
            if v6 is not None:
                self._v6_sysctls(hns)
            self._ip(rns, "link add h%d type veth peer name eth0 netns %s" % (j, hns),
                     "link set dev h%d master lan0 up" % j, "link set dev h%d gso_max_segs 1" % j)
            self._no_gso(hns, "eth0")
            if nat is None:
                hip, hcmds = None, ["link set dev eth0 up"]
            elif nat.translates:
                hip = "%s.%d" % (lan, j + 1)
                hcmds = ["addr add %s/24 dev eth0" % hip, "link set dev eth0 up"]
                hcmds += ["route add %s via %s.1" % (net, lan) for net in DOC_NETS]
            else:
                hip = "198.51.100.%d" % self._pub_next
                self._pub_next += 1
                hcmds = ["addr add %s/32 dev eth0" % hip, "link set dev eth0 up",
                         "route add %s.1/32 dev eth0" % lan]
                hcmds += ["route add %s via %s.1 dev eth0" % (net, lan) for net in DOC_NETS]
                self._ip(rns, "route add %s/32 dev lan0" % hip)
            hip6 = None
            if v6 is not None:
                hip6 = "%s%d" % (lan6, j + 1)
                hcmds += ["addr add %s/64 dev eth0 nodad" % hip6, "route add %s via %s1" % (DOC_NET6, lan6)]
            self._ip(hns, *hcmds)
            host = Host(self, "%s%d" % (name, j), hns, (hip or hip6,))
            host.ips6 = (hip6,) if hip6 else ()
            host_objs.append(host)
        if nat is not None and not nat.translates:
            self._run_sysctl(rns, "net.ipv4.conf.wan0.proxy_arp=1", "net.ipv4.neigh.wan0.proxy_delay=0")
        self._run_sysctl(rns, "net.ipv4.conf.lan0.send_redirects=0", "net.ipv4.conf.wan0.send_redirects=0")
        ruleset = ""
        if nat is not None:
            ruleset = nft_ruleset(nat, wan_ip, hairpin, loss, udp_timeout or DEFAULT_BINDING_TIMEOUT,
                                  family="inet" if v6 is None else "ip")
        if v6 is not None:
            ruleset += nft_ruleset6(v6, loss)
        _run(["ip", "netns", "exec", rns, "nft", "-f", "-"], input=ruleset)
        if udp_timeout:
            self._run_sysctl(rns, "net.netfilter.nf_conntrack_udp_timeout=%d" % udp_timeout,
                             "net.netfilter.nf_conntrack_udp_timeout_stream=%d" % udp_timeout)
        router_ips = (wan_ip, lan + ".1") if nat is not None else (wan6, lan6 + "1")
        site = Site(name, nat, Host(self, name, rns, router_ips), host_objs, wan_ip if nat is not None else None,
                    lan + ".0/24", hairpin, loss, delay_ms, udp_timeout)
        site.ruleset = ruleset
        if v6 is not None:
            site.v6, site.public_ip6, site.lan6 = v6, wan6, lan6 + "/64"
            site.router.ips6 = (wan6, lan6 + "1")
        self.sites[name] = site
        log.debug("site %r built: %s", name, site)
        return site

    def _run_sysctl(self, ns: str, *settings: str) -> None:
        _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w"] + list(settings))

    # -- processes --------------------------------------------------------
    def _spawn(self, host: Host, argv: Sequence[str], **kw) -> subprocess.Popen:
        if self._closed:
            raise LabError("lab is closed")
        kw.setdefault("start_new_session", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(host.argv(argv), **kw)
        self._procs.append(p)
        return p

    @staticmethod
    def bin(name: str) -> str:
        """Path of a console script of this Python environment (e.g. ``twistd``)."""
        return os.path.join(os.path.dirname(sys.executable), name)

    def close(self) -> None:
        """Kill every spawned process and delete every namespace. Idempotent."""
        if self._closed:
            return
        self._closed = True
        procs, self._procs = self._procs, []
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    try:
                        p.terminate()
                    except OSError:
                        pass
        deadline = time.monotonic() + 3
        for p in procs:
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    p.kill()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:  # pragma: no cover
                    log.error("process %d would not die", p.pid)
            else:
                # the group may hold children that outlived their leader
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            for f in (p.stdin, p.stdout, p.stderr):
                try:
                    if f:
                        f.close()
                except OSError:
                    pass
        for ns in reversed(self.namespaces):
            delete_netns(ns)
        self.namespaces = []
        left = [ns for ns in list_netns() if ns.startswith(self.prefix)]
        for ns in left:  # named outside our list (e.g. build failed midway)
            delete_netns(ns)
        _live_labs.discard(self)
