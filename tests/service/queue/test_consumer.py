"""Claiming, heartbeats, fencing, dead letters, hand-back and expiry against a real Redis.

Claim timeouts are a fraction of a second here so that "silence" takes a real, short sleep.
"""

from __future__ import annotations

import time

import redis

from service.engine.types import GenerationStats
from service.queue.consumer import Claim, Consumer, StartOutcome
from service.queue.keys import GROUP, Keys
from service.queue.records import ErrorCode, JobStatus
from service.settings import ServiceSettings
from tests.service.queue.helpers import consumer, produce, submit


def _take(worker: Consumer) -> Claim:
    delivery = worker.next_job(block_ms=200)
    assert delivery is not None and delivery.claim is not None, delivery
    return delivery.claim


def _owner(client: redis.Redis, settings: ServiceSettings, stream_id: str) -> str:
    pending = client.xpending_range(
        Keys(settings.key_prefix).stream("tiny"), GROUP, stream_id, stream_id, 1
    )
    return str(pending[0]["consumer"])


def test_fresh_job_starts_as_attempt_one(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    job_id = submit(settings).job_id
    claim = _take(consumer(sync_redis, settings, "w1"))
    assert claim.job.id == job_id and claim.attempt == 1 and not claim.reclaimed
    assert claim.job.status is JobStatus.IN_PROGRESS and claim.job.worker == "w1"


def test_heartbeat_keeps_the_job_and_silence_loses_it_to_a_peer(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    submit(settings)
    first, second = consumer(sync_redis, settings, "a"), consumer(sync_redis, settings, "b")
    claim_a = _take(first)
    time.sleep(settings.claim_timeout_s * 1.2)
    assert first.heartbeat(claim_a)
    assert second.next_job(block_ms=10) is None  # refreshed: not idle, not claimable
    time.sleep(settings.claim_timeout_s * 1.2)
    claim_b = _take(second)  # silent past the timeout: the peer takes it
    assert claim_b.reclaimed and claim_b.attempt == 2
    # The presumed-dead first worker wakes up: every write of its attempt is refused …
    assert not first.heartbeat(claim_a)
    assert _owner(sync_redis, settings, claim_a.stream_id) == "b"  # … its heartbeat stole nothing
    assert not first.progress(claim_a, 3, 4)
    assert not first.still_mine(claim_a)
    assert not first.complete(claim_a, "stale.mp4", "stale.png")
    assert second.progress(claim_b, 1, 4)
    assert second.complete(claim_b, "good.mp4", "good.png")
    record = produce(settings, lambda q: q.get(claim_b.job.id))
    assert record is not None
    assert (record.status, record.attempt, record.video_path) == (
        JobStatus.COMPLETED,
        2,
        "good.mp4",
    )
    assert record.expires_at_ms is not None and record.completed_at_ms is not None


def test_completion_stores_the_transformer_passes_of_its_stats(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    counted, uncounted = submit(settings).job_id, submit(settings).job_id
    worker = consumer(sync_redis, settings, "w1")
    stats = GenerationStats(
        total_seconds=1.0,
        seconds_per_step=0.25,
        steps=4,
        peak_vram_bytes=0,
        transformer_passes=5,
        transformer_passes_saved=3,
    )
    assert worker.complete(_take(worker), "v.mp4", "t.png", stats=stats)
    assert worker.complete(_take(worker), "w.mp4", "u.png")  # a caller without stats
    records = [produce(settings, lambda q, i=i: q.get(i)) for i in (counted, uncounted)]
    assert [(r.transformer_passes, r.transformer_passes_saved) for r in records if r] == [
        (5, 3),
        (None, None),
    ]


def test_progress_is_an_integer_percent(settings: ServiceSettings, sync_redis: redis.Redis) -> None:
    job_id = submit(settings).job_id
    worker = consumer(sync_redis, settings, "w1")
    claim = _take(worker)
    assert worker.progress(claim, 1, 3)
    record = produce(settings, lambda q: q.get(job_id))
    assert record is not None and (record.steps_done, record.progress) == (1, 33)


def test_out_of_deliveries_fails_with_a_dead_letter(
    redis_server: object, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    quick = settings.model_copy(
        update={"claim_timeout_s": 0.2, "heartbeat_interval_s": 0.1, "max_deliveries": 2}
    )
    job_id = submit(quick).job_id
    for attempt, name in ((1, "a"), (2, "b")):
        assert _take(consumer(sync_redis, quick, name)).attempt == attempt
        time.sleep(0.3)  # the worker "crashes": no heartbeat, no ack
    delivery = consumer(sync_redis, quick, "c").next_job(block_ms=50)
    assert delivery is not None and delivery.outcome is StartOutcome.DEAD
    record = produce(quick, lambda q: q.get(job_id))
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error_code == ErrorCode.MAX_DELIVERIES
    keys = Keys(quick.key_prefix)
    dead = sync_redis.xrange(keys.deadletter)
    assert [(fields["job"], fields["attempts"]) for _, fields in dead] == [(job_id, "2")]
    assert sync_redis.xlen(keys.stream("tiny")) == 0


def test_hand_back_requeues_at_once_without_spending_a_delivery(
    redis_server: object, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    once = settings.model_copy(update={"max_deliveries": 1})
    job_id = submit(once).job_id
    first, second = consumer(sync_redis, once, "a"), consumer(sync_redis, once, "b")
    claim = _take(first)
    assert first.hand_back(claim)
    record = produce(once, lambda q: q.get(job_id))
    assert record is not None and record.status is JobStatus.QUEUED
    taken = _take(second)  # no wait for the claim timeout
    assert taken.reclaimed and taken.attempt == 2
    assert not first.still_mine(claim)


def test_delete_stops_a_running_job_and_refuses_its_result(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    job_id = submit(settings).job_id
    worker = consumer(sync_redis, settings, "a")
    claim = _take(worker)

    async def delete(queue):  # type: ignore[no-untyped-def]
        return await queue.delete(await queue.get(job_id))

    assert produce(settings, delete).was_active
    assert not worker.still_mine(claim)
    assert not worker.progress(claim, 1, 4)
    assert not worker.heartbeat(claim)
    assert not worker.complete(claim, "v.mp4", "t.png")
    assert produce(settings, lambda q: q.get(job_id)) is None
    keys = Keys(settings.key_prefix)
    # Nothing of it comes back: no record, no stream entry, no pending entry, no webhook.
    assert not sync_redis.exists(keys.job(job_id))
    assert sync_redis.xlen(keys.stream("tiny")) == 0
    assert sync_redis.xpending(keys.stream("tiny"), "workers")["pending"] == 0
    assert sync_redis.zcard(keys.webhooks_due) == 0


def test_queued_jobs_expire_at_their_deadline(
    redis_server: object, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    short = settings.model_copy(update={"queued_ttl_s": 1})
    swept, started_late = submit(short).job_id, submit(short).job_id
    time.sleep(1.1)
    worker = consumer(sync_redis, short, "a")
    delivery = worker.next_job(block_ms=50)  # reads the oldest entry: past its deadline
    assert delivery is not None and delivery.outcome is StartOutcome.EXPIRED
    assert worker.expire_queued() == 1  # the janitor fails the other one
    for job_id in (swept, started_late):
        record = produce(short, lambda q, job_id=job_id: q.get(job_id))
        assert record is not None and record.status is JobStatus.FAILED
        assert record.error_code == ErrorCode.EXPIRED
    assert sync_redis.xlen(Keys(short.key_prefix).stream("tiny")) == 0


def test_a_crashed_job_behind_fifty_live_ones_is_reclaimed(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    """XAUTOCLAIM looks at 10 × COUNT pending entries a call: the claim must follow its cursor
    through the pending list, not start again at 0-0 each time."""
    live = []
    for index in range(50):
        submit(settings)
        worker = consumer(sync_redis, settings, f"live-{index}")
        live.append((worker, _take(worker)))
    crashed_job = submit(settings).job_id
    assert _take(consumer(sync_redis, settings, "crashed")).job.id == crashed_job
    silent_until = time.monotonic() + settings.claim_timeout_s * 1.3
    while time.monotonic() < silent_until:  # the live workers heartbeat; the crashed one not
        for worker, claim in live:
            assert worker.heartbeat(claim)
        time.sleep(0.05)
    rescuer = consumer(sync_redis, settings, "rescuer")
    delivery = rescuer.next_job(block_ms=10)
    assert delivery is not None and delivery.claim is not None
    assert (delivery.claim.job.id, delivery.claim.attempt) == (crashed_job, 2)
    assert delivery.claim.reclaimed
    # Nothing else is idle: the next look walks the list (from its cursor, round) and finds none.
    assert rescuer.next_job(block_ms=10) is None
    assert {_owner(sync_redis, settings, claim.stream_id) for _, claim in live} == {
        f"live-{index}" for index in range(50)
    }


def test_final_writes_sent_twice_by_the_same_attempt_succeed_both_times(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    """A final write whose reply was lost is sent again: it must not read as fenced (the
    worker would delete the files its first write recorded)."""
    submit(settings)
    submit(settings)
    worker = consumer(sync_redis, settings, "a")
    done = _take(worker)
    assert worker.complete(done, "v.mp4", "t.png") and worker.complete(done, "v.mp4", "t.png")
    handed = _take(worker)
    assert worker.hand_back(handed) and worker.hand_back(handed)
    record = produce(settings, lambda q: q.get(done.job.id))
    assert record is not None and record.status is JobStatus.COMPLETED


def test_dead_consumers_are_removed_once_they_hold_nothing(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    keys = Keys(settings.key_prefix)
    crashed = []
    for index in range(3):  # workers that finished a job each, then died without retiring
        submit(settings)
        worker = consumer(sync_redis, settings, f"crashed-{index}")
        worker.announce("cpu", 0)
        assert worker.complete(_take(worker), "v.mp4", "t.png")
        crashed.append(worker)
    submit(settings)
    holder = consumer(sync_redis, settings, "holder")  # died holding a job: kept for the claim
    _take(holder)
    janitor = consumer(sync_redis, settings, "janitor")
    assert janitor.remove_idle_peers(min_idle_ms=60_000) == 0  # nobody silent that long yet
    time.sleep(0.3)
    assert janitor.remove_idle_peers(min_idle_ms=200) == 3
    names = {c["name"] for c in sync_redis.xinfo_consumers(keys.stream("tiny"), GROUP)}
    assert names == {"holder"}
    assert sync_redis.zcard(keys.workers("tiny")) == 0  # their registrations are gone too
    # A clean stop removes the consumer at once; a consumer holding a job stays.
    leaving = consumer(sync_redis, settings, "leaving")
    assert leaving.next_job(block_ms=10) is None
    leaving.retire()
    holder.retire()
    names = {c["name"] for c in sync_redis.xinfo_consumers(keys.stream("tiny"), GROUP)}
    assert names == {"holder"}


def test_jobs_past_retention_leave_every_listing(
    redis_server: object, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    short = settings.model_copy(update={"retention_s": 1})
    keys = Keys(short.key_prefix)
    done, failed = submit(short, owner="alice").job_id, submit(short, owner="alice").job_id
    cancelled, deleted = submit(short).job_id, submit(short).job_id
    worker = consumer(sync_redis, short, "w1")
    assert worker.complete(_take(worker), "v.mp4", "t.png")
    assert worker.fail(_take(worker), ErrorCode.ENGINE_ERROR, "boom")

    async def delete(queue, job_id):  # type: ignore[no-untyped-def]
        return await queue.delete(await queue.get(job_id))

    worker.fail(_take(worker), ErrorCode.ENGINE_ERROR, "boom")  # the third: finished …
    produce(short, lambda q: delete(q, cancelled))  # … then deleted: off the expiry index at once
    produce(short, lambda q: delete(q, deleted))  # queued, deleted: never on it
    assert sync_redis.zcard(keys.expiring) == 2
    assert worker.reap() == 0  # nothing due yet
    time.sleep(1.1)
    assert worker.reap() == 2
    for index in (keys.jobs, keys.owner_jobs("alice"), keys.expiring):
        assert sync_redis.zcard(index) == 0, index
    for owner in ("alice", None):
        page = produce(
            short, lambda q, owner=owner: q.page(owner=owner, after=None, limit=5, descending=True)
        )
        assert (page.records, page.more, page.last_id) == ([], False, None)
    assert not any(sync_redis.exists(keys.job(j)) for j in (done, failed, cancelled, deleted))
