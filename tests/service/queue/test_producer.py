"""Submitting, reading, listing and cancelling jobs against a real Redis."""

from __future__ import annotations

import dataclasses
import json
from itertools import chain

import pytest
import redis

from service.engine.types import CachePolicy
from service.queue.keys import ENTRY_JOB_FIELD, Keys
from service.queue.producer import DeleteOutcome, Page, QueueFull, UnknownCursor
from service.queue.records import JobField, JobStatus, is_job_id, new_job_id, now_ms
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


def test_the_cache_fields_are_stored_as_strings_and_read_back_as_sent(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    request = dataclasses.replace(
        REQUEST, cache=CachePolicy.MAGCACHE, cache_threshold=0.3, guidance_stop=0.5
    )
    job_id = produce(settings, lambda q: q.submit("tiny", request, seconds="2")).job_id
    stored = json.loads(
        str(sync_redis.hget(Keys(settings.key_prefix).job(job_id), JobField.REQUEST))
    )
    assert (stored["cache"], stored["cache_threshold"], stored["guidance_stop"]) == (
        "magcache",
        0.3,
        0.5,
    )
    record = produce(settings, lambda q: q.get(job_id))
    assert record is not None and record.request == request
    assert record.request.cache is CachePolicy.MAGCACHE
    # Not completed: no pass counts yet.
    assert (record.transformer_passes, record.transformer_passes_saved) == (None, None)


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


def _page(settings: ServiceSettings, after: str | None, limit: int, descending: bool) -> Page:
    return produce(
        settings,
        lambda q: q.page(owner=None, after=after, limit=limit, descending=descending),
    )


def _walk(settings: ServiceSettings, limit: int, descending: bool) -> list[list[str]]:
    """Every page's ids, following last_id until has_more is false."""
    pages, after = [], None
    for _ in range(100):
        page = _page(settings, after, limit, descending)
        pages.append([record.id for record in page.records])
        if not page.more:
            return pages
        assert page.last_id is not None, "has_more without a cursor: a dead end"
        after = page.last_id
    raise AssertionError("the listing never ended")


def test_listing_pages_in_both_orders(settings: ServiceSettings) -> None:
    ids = [submit(settings).job_id for _ in range(5)]
    first = _page(settings, None, 2, descending=False)
    assert [r.id for r in first.records] == ids[:2] and first.more and first.last_id == ids[1]
    second = _page(settings, ids[1], 2, descending=False)
    assert [r.id for r in second.records] == ids[2:4] and second.more
    last = _page(settings, ids[3], 2, descending=False)
    assert [r.id for r in last.records] == ids[4:] and not last.more
    newest = _page(settings, None, 3, descending=True)
    assert [r.id for r in newest.records] == ids[::-1][:3] and newest.more
    assert _walk(settings, 2, descending=True) == [ids[4:2:-1], ids[2:0:-1], ids[:1]]
    with pytest.raises(UnknownCursor):
        _page(settings, "video_" + "0" * 32, 2, descending=False)  # no time of this service
    with pytest.raises(UnknownCursor):
        _page(settings, "not-an-id", 2, descending=False)


def test_jobs_made_in_the_same_millisecond_page_in_a_stable_order(
    settings: ServiceSettings,
) -> None:
    created = now_ms()
    ids = sorted(new_job_id(created) for _ in range(5))
    for job_id in ids:
        produce(
            settings, lambda q, job_id=job_id: q.submit("tiny", REQUEST, seconds="2", job_id=job_id)
        )
    assert list(chain(*_walk(settings, 2, descending=False))) == ids
    assert list(chain(*_walk(settings, 2, descending=True))) == ids[::-1]


def test_a_deleted_cursor_and_gone_entries_never_dead_end_the_listing(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    ids = [submit(settings).job_id for _ in range(12)]
    keys = Keys(settings.key_prefix)
    # Jobs 2..9 expire without the janitor: their hashes go, their listing entries stay.
    sync_redis.delete(*(keys.job(job_id) for job_id in ids[2:10]))
    pages = _walk(settings, 3, descending=False)
    assert list(chain(*pages)) == ids[:2] + ids[10:]
    assert all(pages), pages  # no empty page before the end
    assert sync_redis.zcard(keys.jobs) == 4  # the entries met were dropped
    # A cursor whose job was deleted between two pages still marks its place.
    sync_redis.delete(keys.job(ids[1]))
    rest = _page(settings, ids[1], 10, descending=False)
    assert [r.id for r in rest.records] == ids[10:] and not rest.more


def test_delete_of_a_queued_job_removes_it_and_everything_naming_it(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    keys = Keys(settings.key_prefix)
    job_id = submit(settings, key="order-1", owner="alice").job_id
    idempotency_keys = sync_redis.keys(keys.idempotency("*"))
    assert len(idempotency_keys) == 1

    async def delete(queue):  # type: ignore[no-untyped-def]
        record = await queue.get(job_id)
        return await queue.delete(record)

    deleted = produce(settings, delete)
    assert (deleted.outcome, deleted.was_active) == (DeleteOutcome.DELETED, True)
    assert produce(settings, lambda q: q.get(job_id)) is None
    assert sync_redis.xlen(keys.stream("tiny")) == 0
    assert consumer(sync_redis, settings, "w1").next_job(block_ms=50) is None
    for index in (keys.jobs, keys.owner_jobs("alice"), keys.expiring):
        assert sync_redis.zscore(index, job_id) is None, index
    assert not sync_redis.exists(*idempotency_keys)
    # The event stream ends with the deletion (an /events reader hears of it), then expires.
    last = sync_redis.xrevrange(keys.events(job_id), count=1)
    assert last[0][1] == {"status": "deleted"} and sync_redis.pttl(keys.events(job_id)) > 0


def test_delete_of_a_finished_job_returns_its_files(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    job_id = submit(settings).job_id
    worker = consumer(sync_redis, settings, "w1")
    delivery = worker.next_job(block_ms=100)
    assert delivery is not None and delivery.claim is not None
    assert worker.complete(delivery.claim, "/r/v.mp4", "/r/t.png")

    async def delete(queue):  # type: ignore[no-untyped-def]
        return await queue.delete(await queue.get(job_id))

    deleted = produce(settings, delete)
    assert (deleted.outcome, deleted.was_active) == (DeleteOutcome.DELETED, False)
    assert deleted.files == ("/r/v.mp4", "/r/t.png")
    assert produce(settings, lambda q: q.get(job_id)) is None
    assert sync_redis.zscore(Keys(settings.key_prefix).jobs, job_id) is None


def test_a_submission_sent_twice_with_its_id_creates_one_job(
    settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    job_id = new_job_id()
    first = produce(settings, lambda q: q.submit("tiny", REQUEST, seconds="2", job_id=job_id))
    again = produce(settings, lambda q: q.submit("tiny", REQUEST, seconds="2", job_id=job_id))
    assert (first.job_id, first.created, again.job_id, again.created) == (job_id, True) * 2
    assert first.jobs_ahead == 0 and first.record is not None and again.record is not None
    assert first.record.stream_id is not None and again.record.id == job_id
    keys = Keys(settings.key_prefix)
    assert sync_redis.xlen(keys.stream("tiny")) == 1 and sync_redis.zcard(keys.jobs) == 1


def test_a_delete_sent_twice_deletes_once(settings: ServiceSettings) -> None:
    job_id = submit(settings).job_id
    record = produce(settings, lambda q: q.get(job_id))
    assert record is not None
    assert produce(settings, lambda q: q.delete(record)).outcome is DeleteOutcome.DELETED
    assert produce(settings, lambda q: q.delete(record)).outcome is DeleteOutcome.MISSING
