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

Every change a reader may wait for (a start, a step, the end, a hand-back, a deletion) also
appends an entry to the job's event stream (``keys.Keys.events``), which ``GET
/v1/videos/{id}/events`` blocks on. A job that ends completed or failed with a webhook URL gets
its webhook event written in the same script (an outbox: the event exists if and only if the job
ended; ``service.webhooks.outbox`` delivers it).

Each owner's unfinished (queued or running) jobs of a model are counted in
``keys.Keys.unfinished``: ``ENQUEUE`` adds one when it creates a job, and every script that
moves a job from queued or in progress to a final status (or deletes it then) takes one off, in
the same step and only on that transition, so that a re-run, a hand-back or a redelivery leaves
the count as it is. Reaping drops only finished jobs, which no longer count.

Field names are the literals of ``records.JobField``; the consumer group name is passed in.
"""

from __future__ import annotations

from service.queue import keys

# Redis full (maxmemory with noeviction): a submission is refused as a whole, before it writes
# anything (a script with a shebang and no allow-oom flag is checked once, at its start); every
# other script runs, since each writes a few bytes and most free memory (acks, deletions,
# expiries): running jobs finish and the queue drains while new work is refused.
_REFUSED_WHEN_FULL = "#!lua\n"
_RUNS_WHEN_FULL = "#!lua flags=allow-oom\n"

# How long a job's event stream lives while the job is queued or running (past any queue
# deadline); a finished job's lives as long as its record.
_EVENTS_ACTIVE_TTL_MS = str(8 * 86_400_000)

# note(events, status): one entry on the job's event stream, capped, expiring.
_NOTE = f"""
local function note(events, status, ttl)
  redis.call('XADD', events, 'MAXLEN', '~', {keys.EVENTS_MAXLEN}, '*', 'status', status)
  redis.call('PEXPIRE', events, ttl or {_EVENTS_ACTIVE_TTL_MS})
end
"""

# emit_webhook(job, event key, due zset, wake list, type, now ms): the job's webhook event, once
# (its id is the job's: 'evt_' + the job id's hex), when the job names a URL. It carries the
# job's owner, whose secret signs it (``service.webhooks.tenants``).
_WEBHOOK = """
local function emit_webhook(job, event, due, wake, kind, now)
  local f = redis.call('HMGET', job, 'id', 'webhook_url', 'owner')
  if not f[2] or f[2] == '' then return end
  if redis.call('EXISTS', event) == 1 then return end
  local id = 'evt_' .. string.sub(f[1], 7)
  redis.call('HSET', event, 'id', id, 'type', kind, 'video_id', f[1], 'url', f[2],
             'created_at', math.floor(now / 1000), 'attempts', 0, 'owner', f[3] or '')
  redis.call('ZADD', due, now, id)
  redis.call('LPUSH', wake, '1')
  redis.call('LTRIM', wake, 0, 0)
end
"""

# ended(counts, job): the job (still holding its owner) leaves its owner's count of unfinished
# jobs; called once, on the transition to a final status. A count never goes below zero (jobs
# queued before the count existed end uncounted) and an owner's field goes at zero.
_ENDED = """
local function ended(counts, job)
  local who = redis.call('HGET', job, 'owner') or ''
  if redis.call('HINCRBY', counts, who, -1) <= 0 then redis.call('HDEL', counts, who) end
end
"""

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

# A finished job's hash expires ``ttl`` ms from now, at ``at``; the expiry index remembers when,
# under '<id> <owner>', so that the janitor (REAP) drops it from the listings then too.
_RETAIN = """
local function expiry_member(job)
  local f = redis.call('HMGET', job, 'id', 'owner')
  if f[2] and f[2] ~= '' then return f[1] .. ' ' .. f[2] end
  return f[1]
end
local function retain_until(job, expiring, at, ttl)
  redis.call('PEXPIRE', job, ttl)
  redis.call('ZADD', expiring, at, expiry_member(job))
end
"""

# KEYS: job, jobs zset, stream, idempotency key, the owner's jobs zset, the job's tombstone,
#       the model's unfinished counts
# ARGV: job id, created ms, max depth, idempotency ttl s, use idempotency ('1'|'0'), group,
#       request fingerprint, job key prefix, owner, most unfinished jobs of the owner (0: no
#       limit), then the job hash as field, value pairs
# → {'created', id, jobs ahead, stream id} | {'created', id} (a repeat) | {'existing', id}
#   | {'conflict', id} | {'full', depth} | {'over_quota', owner's unfinished} | {'abandoned', id}
# Safe to run twice: a second run of the same submission (same job id) changes nothing (the
# owner's count included: it moves only with a job created here). A
# tombstone (SETTLE) means the API answered that this submission was not made: refuse it.
# The idempotency key holds '<job id> <fingerprint>': the same request again is that job, another
# request a conflict; a key whose job is gone (deleted, or past retention) is free again. Its
# job's hash is read by name (prefix .. id): keys the caller cannot know in advance, which a
# single Redis allows.
ENQUEUE = (
    _REFUSED_WHEN_FULL
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'created', ARGV[1]} end
if redis.call('EXISTS', KEYS[6]) == 1 then return {'abandoned', ARGV[1]} end
if ARGV[5] == '1' then
  local existing = redis.call('GET', KEYS[4])
  if existing then
    local id, print = string.match(existing, '^(%S+) (%S+)$')
    if id and redis.call('EXISTS', ARGV[8] .. id) == 1 then
      if print == ARGV[7] then return {'existing', id} end
      return {'conflict', id}
    end
  end
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[3], ARGV[6], '0', 'MKSTREAM')
end
local mine = tonumber(redis.call('HGET', KEYS[7], ARGV[9]) or '0')
if tonumber(ARGV[10]) > 0 and mine >= tonumber(ARGV[10]) then
  return {'over_quota', tostring(mine)}
end
local depth = redis.call('XLEN', KEYS[3])
if depth >= tonumber(ARGV[3]) then return {'full', tostring(depth)} end
redis.call('HSET', KEYS[1], unpack(ARGV, 11))
redis.call('HINCRBY', KEYS[7], ARGV[9], 1)
local sid = redis.call('XADD', KEYS[3], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[1], 'stream_id', sid)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
if ARGV[5] == '1' then redis.call('SET', KEYS[4], ARGV[1] .. ' ' .. ARGV[7], 'EX', ARGV[4]) end
return {'created', ARGV[1], tostring(depth), sid}
"""
)

# KEYS: job, the job's tombstone
# ARGV: tombstone ttl s
# → 'created' | 'abandoned'
# After an enqueue whose answer never came: either it ran (the job exists) or it never will
# (the tombstone makes it refuse if it arrives later). Either answer is final.
SETTLE = (
    _RUNS_WHEN_FULL
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'created' end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
return 'abandoned'
"""
)

# KEYS: job, stream, deadletter, expiry index, events, webhook event, webhooks due, wake,
#       the model's unfinished counts
# ARGV: stream id, consumer, now ms, max deliveries, retention ms, group, deadletter maxlen
# → {'started', attempt} | {'lost'} | {'gone'} | {'final'} | {'expired'} | {'dead', attempt}
START = (
    _RUNS_WHEN_FULL
    + _ENDED
    + _ACK
    + _RETAIN
    + _NOTE
    + _WEBHOOK
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
  ended(KEYS[9], KEYS[1])
  redis.call('HSET', KEYS[1], 'status', 'failed', 'error_code', code, 'error_message', message,
             'completed_at', now, 'expires_at', now + tonumber(ARGV[5]))
  retain_until(KEYS[1], KEYS[4], now + tonumber(ARGV[5]), ARGV[5])
  ack(KEYS[2], group, sid)
  note(KEYS[5], 'failed', ARGV[5])
  emit_webhook(KEYS[1], KEYS[6], KEYS[7], KEYS[8], 'video.failed', now)
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
note(KEYS[5], 'in_progress')
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

# KEYS: job, events
# ARGV: attempt, steps done ('' to only check), steps total
# → 1 still mine | 0 fenced or deleted (stop)
PROGRESS = (
    _RUNS_WHEN_FULL
    + _NOTE
    + """
local f = redis.call('HMGET', KEYS[1], 'attempt', 'status')
if f[1] ~= ARGV[1] or f[2] ~= 'in_progress' then return 0 end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'steps_done', ARGV[2], 'steps_total', ARGV[3])
  note(KEYS[2], 'in_progress')
end
return 1
"""
)

# KEYS: job, stream, expiry index, events, webhook event, webhooks due, wake, unfinished counts
# ARGV: stream id, attempt, group, now ms, retention ms, final status, then field, value pairs
# → 1 written (or already, by this attempt: a retry) | 0 fenced (the caller deletes its files)
FINISH = (
    _RUNS_WHEN_FULL
    + _ENDED
    + _ACK
    + _RETAIN
    + _NOTE
    + _WEBHOOK
    + """
local f = redis.call('HMGET', KEYS[1], 'attempt', 'status')
if f[1] == ARGV[2] and f[2] == ARGV[6] then return 1 end
if f[1] ~= ARGV[2] or f[2] ~= 'in_progress' then return 0 end
local now = tonumber(ARGV[4])
ended(KEYS[8], KEYS[1])
redis.call('HSET', KEYS[1], 'status', ARGV[6], 'completed_at', now,
           'expires_at', now + tonumber(ARGV[5]))
if #ARGV > 6 then redis.call('HSET', KEYS[1], unpack(ARGV, 7)) end
retain_until(KEYS[1], KEYS[3], now + tonumber(ARGV[5]), ARGV[5])
ack(KEYS[2], ARGV[3], ARGV[1])
note(KEYS[4], ARGV[6], ARGV[5])
emit_webhook(KEYS[1], KEYS[5], KEYS[6], KEYS[7], 'video.' .. ARGV[6], now)
return 1
"""
)

# KEYS: job, stream, events
# ARGV: stream id, attempt, group, consumer, idle ms
# → 1 handed back (claimable by any worker at once; or already, by this attempt) | 0 fenced
HAND_BACK = (
    _RUNS_WHEN_FULL
    + _NOTE
    + """
local f = redis.call('HMGET', KEYS[1], 'attempt', 'status')
if f[1] == ARGV[2] and f[2] == 'queued' then return 1 end
if f[1] ~= ARGV[2] or f[2] ~= 'in_progress' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'steps_done', 0, 'worker', '')
redis.call('HINCRBY', KEYS[1], 'handbacks', 1)
redis.call('XCLAIM', KEYS[2], ARGV[3], ARGV[4], 0, ARGV[1], 'IDLE', ARGV[5], 'JUSTID')
note(KEYS[3], 'queued')
return 1
"""
)

# KEYS: job, stream, jobs zset, the owner's jobs zset, expiry index, events, unfinished counts
# ARGV: job id, group, events linger ms
# → {'missing'} | {'deleted', was running or queued ('1'|'0'), video path, thumbnail path}
# DELETE as OpenAI's: whatever the job's state, it is gone after one call. A queued or running
# job's stream entry is acknowledged and deleted (no worker takes it; the one running it learns
# at its next step or heartbeat that the job is no longer its own and stops, and a result it
# still writes is refused: FINISH finds no attempt). Its Idempotency-Key goes with it when the
# key still names it. The event stream is kept a little longer with a last 'deleted' entry, so
# that a reader blocked on it hears of the deletion. Running it twice: the second finds nothing.
DELETE = (
    _RUNS_WHEN_FULL
    + _ENDED
    + _ACK
    + _RETAIN
    + _NOTE
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'stream_id', 'video_path', 'thumbnail_path',
                     'idempotency_key')
if not f[1] then return {'missing'} end
local active = f[1] == 'queued' or f[1] == 'in_progress'
if active then ended(KEYS[7], KEYS[1]) end
if active and f[2] and f[2] ~= '' then ack(KEYS[2], ARGV[2], f[2]) end
if f[5] and f[5] ~= '' then
  local named = redis.call('GET', f[5])
  if named and string.sub(named, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
    redis.call('DEL', f[5])
  end
end
redis.call('ZREM', KEYS[5], expiry_member(KEYS[1]))
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
note(KEYS[6], 'deleted', ARGV[3])
return {'deleted', active and '1' or '0', f[3] or '', f[4] or ''}
"""
)

# KEYS: job, stream, expiry index, events, webhook event, webhooks due, wake, unfinished counts
# ARGV: stream id, group, now ms, retention ms
# → 1 expired or orphan removed | 0 left alone
EXPIRE_QUEUED = (
    _RUNS_WHEN_FULL
    + _ENDED
    + _ACK
    + _RETAIN
    + _NOTE
    + _WEBHOOK
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'queue_deadline', 'started_at')
if not f[1] then ack(KEYS[2], ARGV[2], ARGV[1]); return 1 end
if f[1] ~= 'queued' or (f[3] and f[3] ~= '') then return 0 end
local now = tonumber(ARGV[3])
if tonumber(f[2]) >= now then return 0 end
ended(KEYS[8], KEYS[1])
redis.call('HSET', KEYS[1], 'status', 'failed', 'error_code', 'expired',
           'error_message', 'the job waited in the queue past its deadline',
           'completed_at', now, 'expires_at', now + tonumber(ARGV[4]))
retain_until(KEYS[1], KEYS[3], now + tonumber(ARGV[4]), ARGV[4])
ack(KEYS[2], ARGV[2], ARGV[1])
note(KEYS[4], 'failed', ARGV[4])
emit_webhook(KEYS[1], KEYS[5], KEYS[6], KEYS[7], 'video.failed', now)
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

# KEYS: stream
# ARGV: group, consumer, min idle ms
# → 1 removed | 0 kept (it holds an entry, or was active within min idle ms, or is unknown)
# XGROUP DELCONSUMER drops the consumer's pending entries with it: only ever remove one that
# holds none, checked in the same step.
REMOVE_IDLE_CONSUMER = (
    _RUNS_WHEN_FULL
    + """
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #consumer, 2 do f[consumer[i]] = consumer[i + 1] end
  if f['name'] == ARGV[2] then
    if tonumber(f['pending']) ~= 0 or tonumber(f['idle']) < tonumber(ARGV[3]) then return 0 end
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
    return 1
  end
end
return 0
"""
)

# KEYS: expiry index, jobs zset
# ARGV: now ms, most jobs to drop, owner listing key prefix, job key prefix
# → jobs dropped from the listings (their retention has ended)
REAP = (
    _RUNS_WHEN_FULL
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  local id, owner = string.match(member, '^(%S+) ?(%S*)$')
  redis.call('DEL', ARGV[4] .. id)
  redis.call('ZREM', KEYS[2], id)
  if owner ~= '' then redis.call('ZREM', ARGV[3] .. owner, id) end
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""
)

# KEYS: job
# ARGV: most jobs ahead to count, stream key prefix
# → {jobs ahead (-1 unless queued), field, value, …} | {} (no such job)
# One call per poll: the record and, while it is queued, the unfinished jobs before its stream
# entry, counted here rather than shipped to the API (its model's stream is read by name).
READ = """#!lua flags=no-writes
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return {} end
local f = {}
for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
local ahead = -1
if f['status'] == 'queued' and f['stream_id'] and f['stream_id'] ~= '' then
  local stream = ARGV[2] .. f['model']
  ahead = #redis.call('XRANGE', stream, '-', '(' .. f['stream_id'], 'COUNT', ARGV[1])
end
table.insert(fields, 1, ahead)
return fields
"""
