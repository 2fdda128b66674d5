"""Submitting, reading, listing and cancelling jobs against a real Redis."""

from __future__ import annotations

import pytest
import redis

from service.queue.keys import ENTRY_JOB_FIELD, Keys
from service.queue.producer import CancelOutcome, QueueFull, UnknownCursor
from service.queue.records import JobField, JobStatus, is_job_id, new_job_id
from service.settings import ServiceSettings
from tests.service.queue.helpers import REQUEST, consumer, produce, submit


def test_submit_writes_record_and_stream_entry_together(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    submitted = submit(settings)
    keys = Keys(settings.key_prefix)
    assert submitted.created and is_job_id(submitted.job_id)
    record = produce(settings, lambda queue: queue.get(submitted.job_id))
    assert record is not None
    assert record.status is JobStatus.QUEUED
    assert record.request == REQUEST
    assert record.attempt == 0 and record.progress == 0
    entries = sync_redis.xrange(keys.stream("tiny"))
    assert [(entry_id, fields[ENTRY_JOB_FIELD]) for entry_id, fields in entries] == [
        (sync_redis.hget(keys.job(submitted.job_id), JobField.STREAM_ID), submitted.job_id)
    ]
    assert sync_redis.zscore(keys.jobs, submitted.job_id) == record.created_at_ms


def test_job_ids_differ_and_are_unguessable_format(settings: ServiceSettings) -> None:
    ids = {submit(settings).job_id for _ in range(20)}
    assert len(ids) == 20
    assert all(is_job_id(job_id) for job_id in ids)
    assert not is_job_id("video_../../etc/passwd")


def test_idempotency_key_returns_the_same_job_of_the_same_owner(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    first = submit(settings, key="k1", owner="alice")
    again = submit(settings, key="k1", owner="alice")
    other_client = submit(settings, key="k1", owner="bob")
    assert again.job_id == first.job_id and not again.created
    assert other_client.job_id != first.job_id and other_client.created
    assert sync_redis.xlen(Keys(settings.key_prefix).stream("tiny")) == 2


def test_full_queue_refuses_until_a_job_finishes(
    redis_server: object, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    small = settings.model_copy(update={"max_queue_depth": 2})
    submit(small)
    submit(small)
    with pytest.raises(QueueFull) as raised:
        submit(small)
    assert raised.value.depth == 2
    worker = consumer(sync_redis, small, "w1")
    delivery = worker.next_job(block_ms=100)
    assert delivery is not None and delivery.claim is not None
    assert worker.complete(delivery.claim, "v.mp4", "t.png")
    assert submit(small).created


def test_listing_pages_in_both_orders(settings: ServiceSettings) -> None:
    ids = [submit(settings).job_id for _ in range(5)]
    first, more = produce(
        settings, lambda q: q.list(owner=None, after=None, limit=2, descending=False)
    )
    assert [r.id for r in first] == ids[:2] and more
    second, more = produce(
        settings, lambda q: q.list(owner=None, after=ids[1], limit=2, descending=False)
    )
    assert [r.id for r in second] == ids[2:4] and more
    last, more = produce(
        settings, lambda q: q.list(owner=None, after=ids[3], limit=2, descending=False)
    )
    assert [r.id for r in last] == ids[4:] and not more
    newest, more = produce(
        settings, lambda q: q.list(owner=None, after=None, limit=3, descending=True)
    )
    assert [r.id for r in newest] == ids[::-1][:3] and more
    with pytest.raises(UnknownCursor):
        produce(
            settings,
            lambda q: q.list(owner=None, after="video_" + "0" * 32, limit=2, descending=False),
        )


def test_cancel_queued_job_removes_it_from_the_stream(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    job_id = submit(settings).job_id

    async def cancel(queue):  # type: ignore[no-untyped-def]
        record = await queue.get(job_id)
        return await queue.cancel(record)

    assert produce(settings, cancel).outcome is CancelOutcome.CANCELLED
    record = produce(settings, lambda q: q.get(job_id))
    assert record is not None and record.status is JobStatus.CANCELLED
    assert sync_redis.xlen(Keys(settings.key_prefix).stream("tiny")) == 0
    assert consumer(sync_redis, settings, "w1").next_job(block_ms=50) is None
    # A second DELETE removes the cancelled record altogether.
    assert produce(settings, cancel).outcome is CancelOutcome.DELETED
    assert produce(settings, lambda q: q.get(job_id)) is None


def test_cancel_finished_job_deletes_record_and_returns_its_files(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    job_id = submit(settings).job_id
    worker = consumer(sync_redis, settings, "w1")
    delivery = worker.next_job(block_ms=100)
    assert delivery is not None and delivery.claim is not None
    assert worker.complete(delivery.claim, "/r/v.mp4", "/r/t.png")

    async def cancel(queue):  # type: ignore[no-untyped-def]
        return await queue.cancel(await queue.get(job_id))

    cancelled = produce(settings, cancel)
    assert cancelled.outcome is CancelOutcome.DELETED
    assert cancelled.files == ("/r/v.mp4", "/r/t.png")
    assert produce(settings, lambda q: q.get(job_id)) is None
    assert sync_redis.zscore(Keys(settings.key_prefix).jobs, job_id) is None


def test_a_submission_sent_twice_with_its_id_creates_one_job(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    job_id = new_job_id()
    first = produce(settings, lambda q: q.submit("tiny", REQUEST, seconds="2", job_id=job_id))
    again = produce(settings, lambda q: q.submit("tiny", REQUEST, seconds="2", job_id=job_id))
    assert first == again and first.job_id == job_id
    keys = Keys(settings.key_prefix)
    assert sync_redis.xlen(keys.stream("tiny")) == 1 and sync_redis.zcard(keys.jobs) == 1


def test_a_cancel_sent_twice_cancels_and_never_deletes(settings: ServiceSettings) -> None:
    job_id = submit(settings).job_id
    record = produce(settings, lambda q: q.get(job_id))
    assert record is not None
    assert produce(settings, lambda q: q.cancel(record)).outcome is CancelOutcome.CANCELLED
    assert produce(settings, lambda q: q.cancel(record)).outcome is CancelOutcome.UNCHANGED
    still = produce(settings, lambda q: q.get(job_id))
    assert still is not None and still.status is JobStatus.CANCELLED
