"""The Lua scripts of the redis storage, and how a batch is cut into their calls.

A script's keys all come in KEYS, never built inside it, so Redis Cluster can route a
call to the node holding them and refuse one whose keys span hash slots. ``Calls`` cuts
one batch into one call per hash slot on a cluster, and into a single call on one Redis
(where a call is atomic, like MULTI/EXEC).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# Store messages and record their idempotency keys, in one command (atomic, like
# MULTI/EXEC), and raise the position to ARGV[2] unless it already holds a larger integer
# (compared as decimal strings, exact beyond 2**53). KEYS: history and by_sender of each
# message stored, then client_msg and claim of each message recorded, then the position
# if ARGV[2] is not ''. ARGV: idempotency TTL, through (or ''), the number stored, then
# id and JSON of each message stored, then the JSON of each message recorded. On Redis
# Cluster one call holds the keys of one hash slot (``RedisStorage._by_slot``).
_APPEND = """
local ttl, through, stored = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 1, stored do
  local id = ARGV[2 + 2 * i]
  redis.call('ZADD', KEYS[2 * i - 1], id, ARGV[3 + 2 * i])
  redis.call('ZADD', KEYS[2 * i], id, id)
end
local k = 2 * stored
for j = 4 + 2 * stored, #ARGV do
  redis.call('SET', KEYS[k + 1], ARGV[j], 'EX', ttl, 'NX')
  redis.call('DEL', KEYS[k + 2])
  k = k + 2
end
if through ~= '' then
  local cur = redis.call('GET', KEYS[#KEYS])
  if not cur or #through > #cur or (#through == #cur and through > cur) then
    redis.call('SET', KEYS[#KEYS], through)
  end
end
return 1
"""

# For each key, atomically: the message sent with it; else 0 if another owner claims it;
# else 1, and the key is claimed by ARGV[1] for ARGV[2] ms. KEYS: client_msg and claim of
# each key.
_CLAIM = """
local owner, ttl = ARGV[1], ARGV[2]
local found = {}
for i = 1, #KEYS, 2 do
  local sent = redis.call('GET', KEYS[i])
  local holder = redis.call('GET', KEYS[i + 1])
  if sent then
    found[#found + 1] = sent
  elseif holder and holder ~= owner then
    found[#found + 1] = 0
  else
    redis.call('SET', KEYS[i + 1], owner, 'PX', ttl)
    found[#found + 1] = 1
  end
end
return found
"""

# Delete each claim (KEYS) that ARGV[1] holds.
_RELEASE = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
  end
end
return 1
"""


Arg = bytes | str | int


@dataclass
class AppendCall:
    """The keys and arguments of one ``_APPEND`` call (see the script for their order)."""

    stored_keys: list[str] = field(default_factory=list)
    stored_args: list[Arg] = field(default_factory=list)
    recorded_keys: list[str] = field(default_factory=list)
    recorded_args: list[Arg] = field(default_factory=list)
    position_key: str | None = None

    def keys(self) -> list[str]:
        return self.stored_keys + self.recorded_keys + ([self.position_key] if self.position_key else [])

    def args(self, ttl: int, through: int | None) -> list[Arg]:
        head: list[Arg] = [ttl, "" if through is None or not self.position_key else str(through)]
        return [*head, len(self.stored_keys) // 2, *self.stored_args, *self.recorded_args]


@dataclass
class KeyedCall:
    """The keys of one ``_CLAIM`` or ``_RELEASE`` call, with the batch positions they answer."""

    keys: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)


class Calls:
    """Script calls grouped by ``slot`` (a key's hash slot on a cluster, else always 0)."""

    def __init__(self, slot: Callable[[str], int]) -> None:
        self.slot = slot
        self.appends: dict[int, AppendCall] = {}
        self.keyed: dict[int, KeyedCall] = {}

    def store(self, history: str, by_sender: str, message_id: int, json: bytes) -> None:
        call = self.appends.setdefault(self.slot(history), AppendCall())
        call.stored_keys += (history, by_sender)
        call.stored_args += (message_id, json)

    def record(self, client_msg: str, claim: str, json: bytes) -> None:
        call = self.appends.setdefault(self.slot(client_msg), AppendCall())
        call.recorded_keys += (client_msg, claim)
        call.recorded_args.append(json)

    def key(self, position: int, *keys: str) -> None:
        call = self.keyed.setdefault(self.slot(keys[0]), KeyedCall())
        call.keys += keys
        call.positions.append(position)
