"""The room registry in Redis, shared by several salons.

:class:`RedisRooms` implements :class:`IRoomRegistry` with the same rules
as :class:`natsalon.server.introducer.rooms.MemoryRooms` (the one contract,
``tests/rooms_contract.py``, runs against both).  Each call is one Lua
script run with EVALSHA, so it is atomic across instances: two JOINs
racing on two salons are applied one after the other, the second sees the
first, and they never both wait nor both miss each other.

Keys (``P`` is the prefix, ``natsalon:`` by default; room ids in hex):

- ``P room:<room>``, a hash: one field per member, named
  ``<nonce hex>/<host>/<port>``, whose value is
  ``<seen> <arrival> <source key> <leave hash hex or ->\\n<record>``; the
  field ``#`` counts arrivals (the tie-break of "most recently seen
  first").  The record is opaque to the scripts: the member's instance id,
  its socket key and its JOIN, packed by :func:`pack_record`;
- ``P seen``, a sorted set of ``<room>/<field>`` scored by when each
  member was last seen: :meth:`RedisRooms.prune` takes the expired ones
  from its low end;
- ``P rooms``, how many rooms hold members (the ``max_rooms`` cap);
- ``P src:<source key>``, how many members a source IP (an IPv6 /64)
  holds in all rooms (the ``max_per_source`` cap).

Time is the caller's ``now``, passed in and stored as data (Redis TTLs
cannot follow a test's clock, nor the salon's): a member is gone when
``seen + timeout <= now``, checked in the scripts.  Every key written also
gets a TTL of ``safety_ttl`` seconds (refreshed on each write), a safety
net for when no salon is left to prune; it never decides who meets.

A member seen through another salon comes back with ``via`` a
:class:`RemoteVia` (that salon's instance id and socket key), so the
introducer's push of an introduction to it is routed to that salon
(:mod:`natsalon.server.introducer.notify`), which sends it from its own
socket.

Redis Cluster is not supported (a script touches keys of several rooms);
a single primary, with Sentinel or a managed service for availability, is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from twisted.internet import defer
from zope.interface import implementer

from natsalon.server.introducer.rooms import (
    MAX_MEMBERS, MEMBER_TIMEOUT, IRoomRegistry, JoinResult, Member, Outcome, source_key)
from natsalon.stun import Address

#: how long an untouched key lives in Redis when no salon prunes it
SAFETY_TTL = 120
#: members one prune removes at most (the next tick goes on)
PRUNE_BATCH = 20000

_OUTCOMES = {o.value.encode(): o for o in Outcome}

_COMMON = r"""
local function parse(v)
  local nl = string.find(v, "\n", 1, true)
  local seen, seq, src, lh = string.match(string.sub(v, 1, nl - 1), "^(%S+) (%d+) (%S+) (%S+)$")
  return seen, seq, src, lh, string.sub(v, nl + 1)
end
local function srcdown(prefix, src)
  local k = prefix .. "src:" .. src
  if redis.call("DECR", k) <= 0 then redis.call("DEL", k) end
end
local function roomgone(room, nrooms)
  redis.call("DEL", room)
  if redis.call("DECR", nrooms) < 0 then redis.call("SET", nrooms, 0) end
end
"""

#: KEYS: room, seen, rooms, own source.  ARGV: now, the settings ("timeout
#: max-members max-rooms max-per-source safety-ttl-ms"), field, address part
#: of the field, source key, leave hash hex, record, prefix, room hex
JOIN = _COMMON + r"""
local room, seenz, nrooms, srck = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now_s = ARGV[1]
local now = tonumber(ARGV[1])
local timeout, max_members, max_rooms, max_src, ttl = string.match(ARGV[2], "^(%S+) (%S+) (%S+) (%S+) (%S+)$")
timeout, max_members, max_rooms, max_src, ttl = tonumber(timeout), tonumber(max_members), tonumber(max_rooms), tonumber(max_src), tonumber(ttl)
local field, addr, src, lh, rec, prefix, roomhex = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]

local all = redis.call("HGETALL", room)
local had = false
local members = {}
local held = nil
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if f ~= "#" then
    had = true
    local seen, seq, s, h = parse(v)
    if tonumber(seen) + timeout <= now then
      redis.call("HDEL", room, f)
      redis.call("ZREM", seenz, roomhex .. "/" .. f)
      srcdown(prefix, s)
    elseif f == field then
      held = {seq = seq, lh = h}
    else
      members[#members + 1] = f
      members[#members + 1] = v
    end
  end
end

local function touch()
  redis.call("PEXPIRE", room, ttl)
  redis.call("PEXPIRE", seenz, ttl)
  redis.call("PEXPIRE", nrooms, ttl)
  redis.call("PEXPIRE", srck, ttl)
end

if held ~= nil then
  -- the same member again (a poll, a retransmission): refresh it
  if held.lh ~= "-" then lh = held.lh end
  local v = now_s .. " " .. held.seq .. " " .. src .. " " .. lh .. "\n" .. rec
  redis.call("HSET", room, field, v)
  redis.call("ZADD", seenz, now, roomhex .. "/" .. field)
  touch()
  local out = {"waiting", 0, v}
  for i = 1, #members do out[#out + 1] = members[i] end
  return out
end

-- a new member: first drop the members at its address (that socket
-- joined again; its LEAVE was lost)
local tail = "/" .. addr
local kept = {}
for i = 1, #members, 2 do
  local f, v = members[i], members[i + 1]
  if string.sub(f, -#tail) == tail and string.find(f, "/", 1, true) == #f - #tail + 1 then
    local seen, seq, s = parse(v)
    redis.call("HDEL", room, f)
    redis.call("ZREM", seenz, roomhex .. "/" .. f)
    srcdown(prefix, s)
  else
    kept[#kept + 1] = f
    kept[#kept + 1] = v
  end
end
members = kept
if had and #members == 0 then
  roomgone(room, nrooms)
  had = false
end

if #members / 2 >= max_members then return {"full"} end
if not had and tonumber(redis.call("GET", nrooms) or "0") >= max_rooms then return {"too_many_rooms"} end
if tonumber(redis.call("GET", srck) or "0") >= max_src then return {"too_many_from_source"} end

local seq = redis.call("HINCRBY", room, "#", 1)
local v = now_s .. " " .. seq .. " " .. src .. " " .. lh .. "\n" .. rec
redis.call("HSET", room, field, v)
redis.call("ZADD", seenz, now, roomhex .. "/" .. field)
redis.call("INCR", srck)
if not had then redis.call("INCR", nrooms) end
touch()
local out = {"waiting", 1, v}
for i = 1, #members do out[#out + 1] = members[i] end
return out
"""

#: KEYS: room, seen, rooms.  ARGV: nonce hex, leave hash hex, prefix, room hex
LEAVE = _COMMON + r"""
local room, seenz, nrooms = KEYS[1], KEYS[2], KEYS[3]
local nonce, lh, prefix, roomhex = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local all = redis.call("HGETALL", room)
local left, remaining = 0, 0
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if f ~= "#" then
    local seen, seq, s, h = parse(v)
    -- Lua strings are interned: == compares pointers, in constant time
    if string.sub(f, 1, #nonce + 1) == nonce .. "/" and h ~= "-" and h == lh then
      redis.call("HDEL", room, f)
      redis.call("ZREM", seenz, roomhex .. "/" .. f)
      srcdown(prefix, s)
      left = left + 1
    else
      remaining = remaining + 1
    end
  end
end
if left > 0 and remaining == 0 then roomgone(room, nrooms) end
return left
"""

#: KEYS: seen, rooms.  ARGV: now, timeout, prefix, batch
PRUNE = _COMMON + r"""
local seenz, nrooms = KEYS[1], KEYS[2]
local now, timeout, prefix, batch = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local items = redis.call("ZRANGEBYSCORE", seenz, "-inf", now - timeout, "LIMIT", 0, batch)
local n = 0
for _, item in ipairs(items) do
  local slash = string.find(item, "/", 1, true)
  local roomhex, f = string.sub(item, 1, slash - 1), string.sub(item, slash + 1)
  local room = prefix .. "room:" .. roomhex
  local v = redis.call("HGET", room, f)
  if not v then
    redis.call("ZREM", seenz, item)
  else
    local seen, seq, s = parse(v)
    if tonumber(seen) + timeout <= now then
      redis.call("HDEL", room, f)
      redis.call("ZREM", seenz, item)
      srcdown(prefix, s)
      n = n + 1
      if redis.call("HLEN", room) <= 1 then roomgone(room, nrooms) end
    end
  end
end
return n
"""


@dataclass(frozen=True)
class RemoteVia:
    """The socket of a member that joined through another salon: pushes
    to it go to that salon (``instance``), which sends them from its
    socket ``via``."""

    instance: str
    via: Any


def pack_record(instance: str, via, blob: bytes) -> bytes:
    """What the scripts store opaquely for a member: its salon, its socket
    key (a tuple of ints), its JOIN: ``<instance> <n>,<n>[,<n>]\\n<JOIN>``."""
    return b"%s %s\n%s" % (instance.encode(), ",".join(map(str, via)).encode(), blob)


def unpack_record(record: bytes) -> Tuple[str, Any, bytes]:
    head, _, blob = record.partition(b"\n")
    instance, via = head.split(b" ")
    return instance.decode(), tuple(int(x) for x in via.split(b",")), blob


def member_field(nonce: bytes, address: Address) -> Tuple[bytes, bytes]:
    """``(field, address part)`` naming a member in its room's hash."""
    addr = ("%s/%d" % (address.host, address.port)).encode()
    return nonce.hex().encode() + b"/" + addr, addr


@implementer(IRoomRegistry)
class RedisRooms:
    """The room registry in Redis (see the module docstring).

    ``link`` is a :class:`natsalon.server.introducer.redislink.RedisLink`
    (or anything with its ``script(source)``); ``instance`` this salon's
    id, stored with each member it holds.  Every call returns a Deferred;
    while Redis is unreachable it fails with
    :class:`natsalon.server.introducer.redislink.RedisUnavailable`.
    """

    def __init__(self, link, instance: str, max_rooms: int = 10000, member_timeout: float = MEMBER_TIMEOUT,
                 max_members: int = MAX_MEMBERS, max_per_source: int = 16, prefix: str = "natsalon:",
                 safety_ttl: float = SAFETY_TTL, prune_batch: int = PRUNE_BATCH) -> None:
        if not instance or "/" in instance or not instance.isprintable() or " " in instance:
            raise ValueError("an instance id is a non-empty name without '/' or spaces")
        self.link = link
        self.instance = instance
        self.max_rooms = max_rooms
        self.member_timeout = member_timeout
        self.max_members = max_members
        self.max_per_source = max_per_source
        self.prefix = prefix.encode()
        self.safety_ms = int(max(safety_ttl, 10 * member_timeout) * 1000)
        self.prune_batch = prune_batch
        self._join = link.script(JOIN)
        self._leave = link.script(LEAVE)
        self._prune = link.script(PRUNE)
        p = self.prefix
        self._seen, self._rooms = p + b"seen", p + b"rooms"
        self._settings = b"%r %d %d %d %d" % (float(member_timeout), max_members, max_rooms, max_per_source,
                                              self.safety_ms)

    def _room(self, room_id: bytes) -> bytes:
        return self.prefix + b"room:" + room_id.hex().encode()

    def join(self, room_id: bytes, member: Member, now: float) -> defer.Deferred:
        field, addr = member_field(member.nonce, member.address)
        src = source_key(member.address.host).encode()
        lh = member.leave_hash.hex().encode() if member.leave_hash else b"-"
        via = member.via.via if isinstance(member.via, RemoteVia) else member.via
        keys = [self._room(room_id), self._seen, self._rooms, self.prefix + b"src:" + src]
        args = [repr(float(now)).encode(), self._settings, field, addr, src, lh,
                pack_record(self.instance, via, member.blob), self.prefix, room_id.hex().encode()]
        return self._join(keys, args).addCallback(self._joined, member)

    def _joined(self, reply: List[bytes], member: Member) -> JoinResult:
        outcome = _OUTCOMES[reply[0]]
        if outcome is not Outcome.WAITING:
            return JoinResult(outcome)
        newcomer = bool(int(reply[1]))
        me, _ = self._member(member.nonce, reply[2], member.address)
        others = []
        for i in range(3, len(reply), 2):
            others.append(self._parse(reply[i], reply[i + 1]))
        others.sort(key=lambda pair: pair[1], reverse=True)
        listed = tuple(m for m, _ in others if m.nonce != member.nonce)
        if not listed:
            return JoinResult(Outcome.WAITING, me)
        return JoinResult(Outcome.INTRODUCED, me, listed, newcomer)

    def _parse(self, field: bytes, value: bytes) -> Tuple[Member, Tuple[float, int]]:
        nonce_hex, host, port = field.decode().split("/")
        return self._member(bytes.fromhex(nonce_hex), value, Address(host, int(port)))

    def _member(self, nonce: bytes, value: bytes, address: Address) -> Tuple[Member, Tuple[float, int]]:
        head, _, record = value.partition(b"\n")
        seen, seq, _src, lh = head.split(b" ")
        instance, via, blob = unpack_record(record)
        if instance != self.instance:
            via = RemoteVia(instance, via)
        leave_hash = None if lh == b"-" else bytes.fromhex(lh.decode())
        return Member(nonce, address, blob, via, leave_hash, float(seen)), (float(seen), int(seq))

    def leave(self, room_id: bytes, nonce: bytes, leave_hash: bytes, now: float) -> defer.Deferred:
        keys = [self._room(room_id), self._seen, self._rooms]
        args = [nonce.hex().encode(), leave_hash.hex().encode(), self.prefix, room_id.hex().encode()]
        return self._leave(keys, args).addCallback(lambda n: int(n) > 0)

    def prune(self, now: float) -> defer.Deferred:
        args = [repr(float(now)).encode(), repr(float(self.member_timeout)).encode(), self.prefix,
                self.prune_batch]
        return self._prune([self._seen, self._rooms], args).addCallback(int)
