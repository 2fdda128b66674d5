"""The per-key job quota against a real Redis: each owner's unfinished jobs of a model are
counted by the scripts that create and end jobs, down by one on every way a job ends and by
nothing on a hand-back, a redelivery or a re-run."""

from __future__ import annotations

import time

import pytest
import redis

from service.queue.consumer import Claim, Consumer, StartOutcome
from service.queue.keys import Keys
from service.queue.producer import KeyQuotaReached
from service.queue.records import ErrorCode, new_job_id
from service.settings import ServiceSettings
from tests.service.queue.helpers import REQUEST, consumer, produce, submit

ALICE, BOB = "a" * 64, "b" * 64


def _take(worker: Consumer) -> Claim:
    delivery = worker.next_job(block_ms=200)
    assert delivery is not None and delivery.claim is not None, delivery
    return delivery.claim


def _unfinished(settings: ServiceSettings, owner: str = ALICE) -> int:
    return produce(settings, lambda q: q.unfinished_of(owner, "tiny"))


def _delete(settings: ServiceSettings, job_id: str) -> bool:
    async def delete(queue):  # type: ignore[no-untyped-def]
        record = await queue.get(job_id)
        return record is not None and (await queue.delete(record)).was_active

    return produce(settings, delete)


def test_a_key_at_its_quota_is_refused_and_another_key_is_not(settings: ServiceSettings) -> None:
    capped = settings.model_copy(update={"max_jobs_per_key": 2})
    first = submit(capped, owner=ALICE).job_id
    submit(capped, owner=ALICE)
    with pytest.raises(KeyQuotaReached, match="QVGEN_MAX_JOBS_PER_KEY allows 2") as refused:
        submit(capped, owner=ALICE)
    assert (refused.value.unfinished, refused.value.limit) == (2, 2)
    assert submit(capped, owner=BOB).created
    assert [_unfinished(capped), _unfinished(capped, BOB)] == [2, 1]
    assert _delete(capped, first)
    assert submit(capped, owner=ALICE).created  # room again once one has ended


def test_without_keys_and_with_zero_there_is_no_per_key_limit(settings: ServiceSettings) -> None:
    for owner, limit in (("", 1), (ALICE, 0)):
        capped = settings.model_copy(update={"max_jobs_per_key": limit})
        for _ in range(3):
            assert submit(capped, owner=owner).created
        assert _unfinished(capped, owner) == 3


def test_a_rerun_of_the_same_submission_counts_once(settings: ServiceSettings) -> None:
    job_id = new_job_id()
    for _ in range(2):  # the retry after a lost reply sends the same job id
        produce(
            settings,
            lambda q: q.submit("tiny", REQUEST, seconds="2", owner=ALICE, job_id=job_id),
        )
    assert _unfinished(settings) == 1


def test_completed_failed_and_deleted_jobs_leave_the_count_and_hand_backs_do_not(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    for _ in range(4):
        submit(settings, owner=ALICE)
    worker = consumer(sync_redis, settings, "w")
    claim = _take(worker)
    assert _unfinished(settings) == 4  # running still counts
    assert worker.hand_back(claim) and worker.hand_back(claim)
    assert _unfinished(settings) == 4
    claim = _take(worker)  # the redelivery
    assert _unfinished(settings) == 4
    assert worker.complete(claim, "v.mp4", "t.png") and worker.complete(claim, "v.mp4", "t.png")
    assert _unfinished(settings) == 3
    failed = _take(worker)
    assert worker.fail(failed, ErrorCode.ENGINE_ERROR, "boom")
    assert worker.fail(failed, ErrorCode.ENGINE_ERROR, "boom")
    assert _unfinished(settings) == 2
    running = _take(worker)
    assert _delete(settings, running.job.id)  # deleted while running
    assert not worker.complete(running, "v.mp4", "t.png")
    assert _unfinished(settings) == 1
    queued = produce(settings, lambda q: q.page(owner=ALICE, after=None, limit=10, descending=True))
    left = [r.id for r in queued.records if r.status.value == "queued"]
    assert len(left) == 1 and _delete(settings, left[0])  # deleted while queued
    assert _unfinished(settings) == 0
    assert not _delete(settings, claim.job.id)  # a finished job deleted: no change
    assert _unfinished(settings) == 0
    assert not sync_redis.exists(Keys(settings.key_prefix).unfinished("tiny"))


def test_expired_jobs_leave_the_count(
    redis_server: object, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    short = settings.model_copy(update={"queued_ttl_s": 1})
    submit(short, owner=ALICE)
    submit(short, owner=ALICE)
    time.sleep(1.1)
    worker = consumer(sync_redis, short, "a")
    delivery = worker.next_job(block_ms=50)
    assert delivery is not None and delivery.outcome is StartOutcome.EXPIRED
    assert _unfinished(short) == 1
    assert worker.expire_queued() == 1 and worker.expire_queued() == 0
    assert _unfinished(short) == 0


def test_dead_lettered_jobs_leave_the_count(
    redis_server: object, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    quick = settings.model_copy(
        update={"claim_timeout_s": 0.2, "heartbeat_interval_s": 0.1, "max_deliveries": 2}
    )
    submit(quick, owner=ALICE)
    for name in ("a", "b"):
        _take(consumer(sync_redis, quick, name))
        time.sleep(0.3)  # the worker "crashes": the redelivery still counts
        assert _unfinished(quick) == 1
    delivery = consumer(sync_redis, quick, "c").next_job(block_ms=50)
    assert delivery is not None and delivery.outcome is StartOutcome.DEAD
    assert _unfinished(quick) == 0
