"""The Lua scripts behind every state change of a job, each one atomic on the Redis server.

Why Lua and not MULTI: each change reads before it writes (is the attempt still mine? does the
pending entry still belong to me?) and a MULTI block cannot branch on what it read. A script runs
without any other command in between, so a check and the write it guards cannot be separated.

Fencing: ``attempt`` in the job hash is incremented by ``START`` and only there. Every later
write of a worker (``HEARTBEAT``, ``PROGRESS``, ``FINISH``, ``HAND_BACK``) names the attempt it
was given and changes nothing when the hash holds another one or the job is no longer
``in_progress``: a worker presumed dead (SIGSTOP, a network partition) that wakes up after its
job was claimed by another can neither refresh the pending entry back to itself nor overwrite
the new attempt's state or result.

Field names are the literals of ``records.JobField``; the consumer group name is passed in.
"""

from __future__ import annotations

# Redis full (maxmemory with noeviction): a submission is refused as a whole, before it writes
# anything (a script with a shebang and no allow-oom flag is checked once, at its start); every
# other script runs, since each writes a few bytes and most free memory (acks, deletions,
# expiries): running jobs finish and the queue drains while new work is refused.
_REFUSED_WHEN_FULL = "#!lua\n"
_RUNS_WHEN_FULL = "#!lua flags=allow-oom\n"

# Shared helpers, prepended to every script that needs them.
_ACK = """
local function ack(stream, group, id)
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
end
local function owner(stream, group, id)
  local pend = redis.call('XPENDING', stream, group, id, id, 1)
  if #pend == 0 then return false end
  return pend[1][2]
end
"""

# KEYS: job, jobs zset, stream, idempotency key, the owner's jobs zset
# ARGV: job id, created ms, max depth, idempotency ttl s, use idempotency ('1'|'0'), group,
#       then the job hash as field, value pairs
# → {'created', id} | {'existing', id} | {'full', depth}
# Safe to run twice: a second run of the same submission (same job id) changes nothing.
ENQUEUE = (
    _REFUSED_WHEN_FULL
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'created', ARGV[1]} end
if ARGV[5] == '1' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {'existing', existing} end
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[3], ARGV[6], '0', 'MKSTREAM')
end
local depth = redis.call('XLEN', KEYS[3])
if depth >= tonumber(ARGV[3]) then return {'full', tostring(depth)} end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
local sid = redis.call('XADD', KEYS[3], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[1], 'stream_id', sid)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
if ARGV[5] == '1' then redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[4]) end
return {'created', ARGV[1]}
"""
)

# KEYS: job, stream, deadletter
# ARGV: stream id, consumer, now ms, max deliveries, retention ms, group, deadletter maxlen
# → {'started', attempt} | {'lost'} | {'gone'} | {'final'} | {'expired'} | {'dead', attempt}
START = (
    _RUNS_WHEN_FULL
    + _ACK
    + """
local sid, me, now, group = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[6]
if owner(KEYS[2], group, sid) ~= me then return {'lost'} end
if redis.call('EXISTS', KEYS[1]) == 0 then ack(KEYS[2], group, sid); return {'gone'} end
local f = redis.call('HMGET', KEYS[1], 'status', 'queue_deadline', 'attempt', 'handbacks',
                     'started_at', 'id', 'model')
local status = f[1]
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  ack(KEYS[2], group, sid); return {'final'}
end
local function finish_failed(code, message)
  redis.call('HSET', KEYS[1], 'status', 'failed', 'error_code', code, 'error_message', message,
             'completed_at', now, 'expires_at', now + tonumber(ARGV[5]))
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  ack(KEYS[2], group, sid)
end
if (f[5] == false or f[5] == '') and tonumber(f[2]) < now then
  finish_failed('expired', 'the job waited in the queue past its deadline')
  return {'expired'}
end
local attempt = tonumber(f[3] or '0') + 1
local crashes = attempt - tonumber(f[4] or '0')
if crashes > tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'attempt', attempt)
  finish_failed('max_deliveries_exceeded',
                'the job was started ' .. (crashes - 1) .. ' times and never finished; limit ' .. ARGV[4])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'job', f[6], 'model', f[7],
             'attempts', attempt - 1, 'at', now)
  return {'dead', tostring(attempt)}
end
redis.call('HSET', KEYS[1], 'status', 'in_progress', 'attempt', attempt, 'worker', me,
           'attempt_started_at', now, 'steps_done', 0)
if f[5] == false or f[5] == '' then redis.call('HSET', KEYS[1], 'started_at', now) end
return {'started', tostring(attempt)}
"""
)

# KEYS: job, stream
# ARGV: stream id, consumer, attempt, group
# → 1 refreshed | 0 the job is no longer this worker's (stop)
HEARTBEAT = (
    _RUNS_WHEN_FULL
    + _ACK
    + """
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[3] then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'in_progress' then return 0 end
if owner(KEYS[2], ARGV[4], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[2], ARGV[4], ARGV[2], 0, ARGV[1], 'JUSTID')
return 1
"""
)

# KEYS: job
# ARGV: attempt, steps done ('' to only check), steps total
# → 1 still mine | 0 fenced or cancelled (stop)
PROGRESS = (
    _RUNS_WHEN_FULL
    + """
local f = redis.call('HMGET', KEYS[1], 'attempt', 'status')
if f[1] ~= ARGV[1] or f[2] ~= 'in_progress' then return 0 end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'steps_done', ARGV[2], 'steps_total', ARGV[3])
end
return 1
"""
)

# KEYS: job, stream
# ARGV: stream id, attempt, group, now ms, retention ms, final status, then field, value pairs
# → 1 written (or already, by this attempt: a retry) | 0 fenced (the caller deletes its files)
FINISH = (
    _RUNS_WHEN_FULL
    + _ACK
    + """
local f = redis.call('HMGET', KEYS[1], 'attempt', 'status')
if f[1] == ARGV[2] and f[2] == ARGV[6] then return 1 end
if f[1] ~= ARGV[2] or f[2] ~= 'in_progress' then return 0 end
local now = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'status', ARGV[6], 'completed_at', now,
           'expires_at', now + tonumber(ARGV[5]))
if #ARGV > 6 then redis.call('HSET', KEYS[1], unpack(ARGV, 7)) end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
ack(KEYS[2], ARGV[3], ARGV[1])
return 1
"""
)

# KEYS: job, stream
# ARGV: stream id, attempt, group, consumer, idle ms
# → 1 handed back (claimable by any worker at once; or already, by this attempt) | 0 fenced
HAND_BACK = (
    _RUNS_WHEN_FULL
    + """
local f = redis.call('HMGET', KEYS[1], 'attempt', 'status')
if f[1] == ARGV[2] and f[2] == 'queued' then return 1 end
if f[1] ~= ARGV[2] or f[2] ~= 'in_progress' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'steps_done', 0, 'worker', '')
redis.call('HINCRBY', KEYS[1], 'handbacks', 1)
redis.call('XCLAIM', KEYS[2], ARGV[3], ARGV[4], 0, ARGV[1], 'IDLE', ARGV[5], 'JUSTID')
return 1
"""
)

# KEYS: job, stream, jobs zset, the owner's jobs zset
# ARGV: job id, group, now ms, retention ms, the status the caller read
# → {'missing'} | {'cancelled'} | {'deleted', video path, thumbnail path} | {'unchanged'}
# Acts on the status the caller read, so that running it twice never turns a cancellation into
# a deletion: read queued or in progress → cancel (unchanged if it finished meanwhile); read
# final → delete.
CANCEL = (
    _RUNS_WHEN_FULL
    + _ACK
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'stream_id', 'video_path', 'thumbnail_path')
if not f[1] then return {'missing'} end
local function active(status) return status == 'queued' or status == 'in_progress' end
if active(ARGV[5]) then
  if not active(f[1]) then return {'unchanged'} end
  local now = tonumber(ARGV[3])
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'completed_at', now,
             'expires_at', now + tonumber(ARGV[4]))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  ack(KEYS[2], ARGV[2], f[2])
  return {'cancelled'}
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return {'deleted', f[3] or '', f[4] or ''}
"""
)

# KEYS: job, stream
# ARGV: stream id, group, now ms, retention ms
# → 1 expired or orphan removed | 0 left alone
EXPIRE_QUEUED = (
    _RUNS_WHEN_FULL
    + _ACK
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'queue_deadline', 'started_at')
if not f[1] then ack(KEYS[2], ARGV[2], ARGV[1]); return 1 end
if f[1] ~= 'queued' or (f[3] and f[3] ~= '') then return 0 end
local now = tonumber(ARGV[3])
if tonumber(f[2]) >= now then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'error_code', 'expired',
           'error_message', 'the job waited in the queue past its deadline',
           'completed_at', now, 'expires_at', now + tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
ack(KEYS[2], ARGV[2], ARGV[1])
return 1
"""
)

# KEYS: workers zset, worker info key
# ARGV: consumer, now (unix s), info JSON, info ttl s
# → 1 (runs when Redis is full: readiness must not lose the workers that drain the queue)
ANNOUNCE = (
    _RUNS_WHEN_FULL
    + """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
return 1
"""
)
