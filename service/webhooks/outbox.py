"""The webhook outbox in Redis: events to deliver, and the steps of their delivery.

An event is written by the queue's scripts in the same step that ends its job
(``service.queue.scripts``: ``emit_webhook``), as the hash ``P:webhook:<event id>`` (id, type,
video id, URL, creation time, attempts, and the job's owner, whose secret signs it) and its id
in the sorted set ``P:webhooks:due`` scored by when its next attempt is due (ms). It is durable as the job queue is (AOF): an API, worker or
deliverer restart loses none.

Delivery is at least once. ``claim`` takes the due events and, in the same step, pushes each
one's due time a lease into the future and counts the attempt: a deliverer that dies mid-attempt
leaves the event to be claimed again once the lease ends, and two deliverers never hold one
event at once (unless an attempt outlives its lease, which is longer than the HTTP timeout).
Then ``done`` removes it, ``retry`` sets its next due time, or ``give_up`` moves it to the
dead-letter stream ``P:webhooks:dead`` after the last attempt; ``postpone`` hands back one the
deliverer claimed but did not attempt (its receiver's host was busy), uncounting the attempt.

The backoff between attempts n and n + 1 (n ≥ 1): d = min(cap, base · 2^(n−1)), waited as
d/2 + U(0, d/2) ("equal jitter": never less than half the step, so retries keep backing off,
and spread, so that receivers coming back are not hit by every deliverer at once).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import redis

from service.queue.keys import Keys

DEAD_MAXLEN = 10_000

# KEYS: due zset
# ARGV: now ms, lease ms, most events, webhook key prefix, per-key settings key prefix
# → {id, attempts, type, video id, url, created at, owner, owner's secret generation} for each
# event claimed (owner "" for an event written without one: before per-key secrets, no keys)
_CLAIM = """#!lua flags=allow-oom
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, id in ipairs(due) do
  local key = ARGV[4] .. id
  local f = redis.call('HMGET', key, 'type', 'video_id', 'url', 'created_at', 'owner')
  if not f[1] then
    redis.call('ZREM', KEYS[1], id)
  else
    local attempts = redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('ZADD', KEYS[1], 'XX', until_ms, id)
    local owner = f[5] or ''
    local generation = '0'
    if owner ~= '' then
      generation = redis.call('HGET', ARGV[5] .. owner, 'generation') or '0'
    end
    for _, value in ipairs({id, tostring(attempts), f[1], f[2], f[3], f[4], owner, generation}) do
      table.insert(out, value)
    end
  end
end
return out
"""

# KEYS: due zset, event
# ARGV: id
_DONE = """#!lua flags=allow-oom
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: due zset, event
# ARGV: id, next due ms, last error
_RETRY = """#!lua flags=allow-oom
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'last_error', ARGV[3])
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
return 1
"""

# KEYS: due zset, event
# ARGV: id, next due ms
_POSTPONE = """#!lua flags=allow-oom
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'attempts', -1)
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
return 1
"""

# KEYS: due zset, event, dead stream
# ARGV: id, last error, dead maxlen, now ms
_GIVE_UP = """#!lua flags=allow-oom
local f = redis.call('HMGET', KEYS[2], 'type', 'video_id', 'url', 'attempts')
if f[1] then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'event', ARGV[1], 'type', f[1],
             'video_id', f[2], 'url', f[3], 'attempts', f[4], 'error', ARGV[2], 'at', ARGV[4])
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""


@dataclass(frozen=True)
class WebhookEvent:
    """One event as claimed for one delivery attempt (``attempt`` counts from 1)."""

    id: str
    type: str
    video_id: str
    url: str
    created_at: int  # unix s
    attempt: int
    owner: str = ""  # the job's owner (its key's digest); "" for an event without one
    generation: int = 0  # the owner's secret generation as the event was claimed

    def body(self) -> bytes:
        """The payload, the same bytes on every attempt (the signature covers them): the shape
        of OpenAI's webhook events (``openai.types.webhooks``)."""
        payload = {
            "id": self.id,
            "object": "event",
            "created_at": self.created_at,
            "type": self.type,
            "data": {"id": self.video_id},
        }
        return json.dumps(payload, separators=(",", ":")).encode()


def retry_delay_s(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds before the attempt after failed attempt ``attempt`` (≥ 1): equal jitter over
    min(cap, base · 2^(attempt − 1))."""
    step = min(cap_s, base_s * 2.0 ** min(attempt - 1, 60))
    return step / 2 + rng.uniform(0.0, step / 2)


class Outbox:
    """The outbox under one key prefix, through a synchronous client."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self.keys = keys
        self._claim = client.register_script(_CLAIM)
        self._done = client.register_script(_DONE)
        self._retry = client.register_script(_RETRY)
        self._give_up = client.register_script(_GIVE_UP)
        self._postpone = client.register_script(_POSTPONE)

    def claim(self, now_ms: int, lease_ms: int, limit: int) -> list[WebhookEvent]:
        reply: Any = self._claim(
            keys=[self.keys.webhooks_due],
            args=[now_ms, lease_ms, limit, self.keys.webhook(""), self.keys.webhook_key_prefix],
        )
        events = []
        for i in range(0, len(reply), 8):
            event_id, attempts, kind, video_id, url, created, owner, generation = reply[i : i + 8]
            events.append(
                WebhookEvent(
                    id=event_id,
                    type=kind,
                    video_id=video_id,
                    url=url,
                    created_at=int(created),
                    attempt=int(attempts),
                    owner=owner,
                    generation=int(generation),
                )
            )
        return events

    def next_due_ms(self) -> int | None:
        """When the earliest event is due (ms), or None when there is none."""
        first: Any = self._redis.zrange(self.keys.webhooks_due, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    def wait_for_new(self, timeout_s: float) -> None:
        """Block until an event is written (the scripts push a wake token) or ``timeout_s``."""
        self._redis.blpop([self.keys.webhooks_wake], timeout=max(0.01, timeout_s))

    def done(self, event: WebhookEvent) -> None:
        self._done(keys=[self.keys.webhooks_due, self.keys.webhook(event.id)], args=[event.id])

    def retry(self, event: WebhookEvent, due_ms: int, error: str) -> None:
        self._retry(
            keys=[self.keys.webhooks_due, self.keys.webhook(event.id)],
            args=[event.id, due_ms, error[:500]],
        )

    def postpone(self, event: WebhookEvent, due_ms: int) -> None:
        """Hand a claimed event back unattempted (its attempt uncounted), due at ``due_ms``."""
        self._postpone(
            keys=[self.keys.webhooks_due, self.keys.webhook(event.id)], args=[event.id, due_ms]
        )

    def give_up(self, event: WebhookEvent, error: str, now_ms: int) -> None:
        self._give_up(
            keys=[self.keys.webhooks_due, self.keys.webhook(event.id), self.keys.webhooks_dead],
            args=[event.id, error[:500], DEAD_MAXLEN, now_ms],
        )
