"""The Redis store's layout: key names, the metadata's fields and the Lua scripts. No I/O, no
`redis` import.

Every key is under `<REDIS_PREFIX>v1:` (the schema version: a rolling deploy never misreads
another version's keys). All keys of one stream share the hash tag `{<stream_id>}`, so each
script below touches one Cluster slot only:

    v1:{sid}:m   hash: the metadata, `state` (running|ended), `n` (events held = next seq),
                 `w` (the producer's worker), `cancel` (set once someone asked)
    v1:{sid}:l   Redis Stream: entry `<seq>-1` holds field `e`, one SSE event's bytes
    v1:{sid}:f   hash: followers per worker
    v1:{sid}:n   pub/sub channel: "<n>" or "<n> end" after each append
    v1:{k:<owner>}:<counter>   hash: count per worker
    v1:{i:<kind>:<owner>:<key>}  string: an index entry
    v1:workers   sorted set: worker -> lease expiry (ms, Redis's own TIME)
    v1:w:<worker>              pub/sub channel: "cancel <sid>", "presence <sid>"
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from .base import StreamMeta


class Keys:
    """Key and channel names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.base = f"{prefix}v1:"
        self.workers = self.base + "workers"

    def stream(self, stream_id: str) -> tuple[str, str, str]:
        """The stream's meta, log and followers keys (one slot)."""
        tag = f"{self.base}{{{stream_id}}}"
        return tag + ":m", tag + ":l", tag + ":f"

    def notify(self, stream_id: str) -> str:
        return f"{self.base}{{{stream_id}}}:n"

    def counter(self, kind: str, owner: str) -> str:
        return f"{self.base}{{k:{quote(owner, safe='')}}}:{kind}"

    def index(self, kind: str, owner: str | None, key: str) -> str:
        # Quoted so that no ':' or brace in a client's key can make two indexes one.
        who = "-" if owner is None else quote(owner, safe="")
        return f"{self.base}{{i:{quote(kind, safe='')}:{who}:{quote(key, safe='')}}}"

    def control(self, worker_id: str) -> str:
        return f"{self.base}w:{worker_id}"


def meta_fields(meta: StreamMeta) -> list[Any]:
    """The meta hash's fields and values, flat (`state` and `n` are the scripts')."""
    fields: list[Any] = [
        "model", meta.model, "format", meta.format, "resume_token", meta.resume_token,
        "w", meta.worker, "created", repr(meta.created), "options", json.dumps(meta.options),
    ]
    if meta.owner is not None:  # no field for no owner
        fields += ["owner", meta.owner]
    return fields


def meta_from(stream_id: str, fields: dict[bytes, bytes]) -> StreamMeta | None:
    """The metadata in a meta hash as HGETALL answers it; None if there is none."""
    if b"model" not in fields:
        return None
    get = {k: fields[k.encode()].decode() for k in
           ("model", "format", "resume_token", "w", "created", "options")}
    owner = fields.get(b"owner")
    return StreamMeta(
        stream_id=stream_id, owner=None if owner is None else owner.decode(),
        model=get["model"], format=get["format"], resume_token=get["resume_token"],
        worker=get["w"], created=float(get["created"]), options=json.loads(get["options"]))


# KEYS: meta, log. ARGV: ttl_ms, retried (0|1), resume_token, nfields, fields..., events...
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[2] == '1' and redis.call('HGET', KEYS[1], 'resume_token') == ARGV[3] then
    return 1
  end
  return 0
end
local nf = tonumber(ARGV[4])
local fields = {}
for i = 1, nf * 2 do fields[i] = ARGV[4 + i] end
local n = 0
for i = 5 + nf * 2, #ARGV do
  redis.call('XADD', KEYS[2], n .. '-1', 'e', ARGV[i])
  n = n + 1
end
redis.call('HSET', KEYS[1], 'state', 'running', 'n', n, unpack(fields))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""

# Compare-and-append. KEYS: meta, log, followers. ARGV: seq, end (0|1), ended_ttl_ms,
# retried (0|1), channel, events...
# Returns -1 no such stream, 0 refused, 1 appended, 2 appended and a cancel was asked for.
APPEND = """
local st = redis.call('HMGET', KEYS[1], 'state', 'n', 'cancel')
if not st[1] then return -1 end
local seq = tonumber(ARGV[1])
local k = #ARGV - 5
local n = tonumber(st[2])
if st[1] ~= 'running' or n ~= seq then
  -- A retry whose first attempt went through (its reply was lost): the same bytes are there.
  if ARGV[4] == '1' and k > 0 and n == seq + k and (ARGV[2] ~= '1' or st[1] == 'ended') then
    local id = (n - 1) .. '-1'
    local last = redis.call('XRANGE', KEYS[2], id, id)
    if last[1] and last[1][2][2] == ARGV[#ARGV] then return 1 end
  end
  return 0
end
for i = 1, k do
  redis.call('XADD', KEYS[2], (seq + i - 1) .. '-1', 'e', ARGV[5 + i])
end
n = seq + k
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'n', n, 'state', 'ended')
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
  redis.call('PUBLISH', ARGV[5], n .. ' end')
else
  redis.call('HSET', KEYS[1], 'n', n)
  if redis.call('PTTL', KEYS[2]) < 0 then  -- the log's first entries: the meta's lifetime
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl < 1 then ttl = ARGV[3] end  -- never a key without one, whatever happened
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
  redis.call('PUBLISH', ARGV[5], tostring(n))
end
if st[3] then return 2 end
return 1
"""

# KEYS: meta. ARGV: control channel prefix, stream id. Returns the producer's worker, or nil.
CANCEL = """
local st = redis.call('HMGET', KEYS[1], 'state', 'w')
if st[1] ~= 'running' then return nil end
redis.call('HSET', KEYS[1], 'cancel', '1')
redis.call('PUBLISH', ARGV[1] .. st[2], 'cancel ' .. ARGV[2])
return st[2]
"""

# Sum of the live workers' fields. A field of a worker missing from the caller's view of the
# leases is either dead or newer than that view: with PRUNE set (the caller has just renewed
# its view, and a worker leases before it counts) it is dropped, else the script answers
# `UNSURE` and changes nothing, for the caller to renew its view and call again.
_LIVE_SUM = """
local live = {}
for i = FIRST_LIVE, #ARGV do live[ARGV[i]] = true end
local total = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if live[all[i]] then total = total + tonumber(all[i + 1])
  elseif ARGV[PRUNE] == '1' then redis.call('HDEL', KEYS[1], all[i])
  else return UNSURE end
end
"""

# KEYS: counter. ARGV: limit, me, ttl_ms, prune, live workers...
# Returns 1 if counted, 0 if full, -1 if unsure.
ACQUIRE = _LIVE_SUM.replace("FIRST_LIVE", "5").replace("PRUNE", "4").replace(
    "UNSURE", "-1") + """
if total >= tonumber(ARGV[1]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: counter [, meta of the stream when it counts followers]. ARGV: me, control channel
# prefix, stream id, count one less (0|1), prune, live workers...
# Returns {live total} or {0, producer's worker} when it was told; {-1} if unsure.
RELEASE = """
if ARGV[4] == '1' and redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
if #KEYS < 2 then return {0} end
""" + _LIVE_SUM.replace("FIRST_LIVE", "6").replace("PRUNE", "5").replace("UNSURE", "{-1}") + """
if total > 0 then return {total} end
local st = redis.call('HMGET', KEYS[2], 'state', 'w')
if st[1] ~= 'running' then return {0} end
if st[2] ~= ARGV[1] then redis.call('PUBLISH', ARGV[2] .. st[2], 'presence ' .. ARGV[3]) end
return {0, st[2]}
"""

# KEYS: workers. ARGV: me, lease_ms, key_ttl_ms. Returns the live workers.
LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# KEYS: index. ARGV: value, ttl_ms. Returns the value it had (then unchanged), or nil.
INDEX_ADD = """
local old = redis.call('GET', KEYS[1])
if old then return old end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return nil
"""

# KEYS: index. ARGV: value.
INDEX_REMOVE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
