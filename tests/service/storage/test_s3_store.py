"""The S3 result store against a real S3-protocol server (moto, over HTTP): what it writes,
reads back by range, signs, deletes and sweeps, and how it says that the store is unusable."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from service.engine.types import GenerationRequest
from service.queue.records import new_job_id
from service.storage import StoreUnavailable, Variant, open_store
from service.storage.s3 import S3ResultStore
from service.worker.noop_engine import NoopEngine
from tests.service.redis_fixtures import free_port
from tests.service.storage.s3_fixtures import S3Server, s3_server, s3_settings

__all__ = ["s3_server"]

REQUEST = GenerationRequest(prompt="p", width=16, height=16, num_frames=3, num_inference_steps=1)


def _store(s3: S3Server, tmp_path: Path, **overrides: object) -> S3ResultStore:
    bucket = overrides.pop("bucket", None) or s3.new_bucket()
    settings = s3_settings("redis://127.0.0.1:1/0", s3, str(bucket), tmp_path / "none", **overrides)
    store = open_store(settings)
    assert isinstance(store, S3ResultStore)
    return store


def test_write_stores_three_objects_per_attempt_that_read_back_whole_and_by_range(
    s3_server: S3Server, tmp_path: Path
) -> None:
    store = _store(s3_server, tmp_path)
    job_id = new_job_id()
    video = NoopEngine("tiny").generate(REQUEST)
    first = store.write(job_id, 1, video)
    second = store.write(job_id, 2, video)
    assert set(first.refs).isdisjoint(second.refs)
    assert s3_server.keys(store.bucket, store.prefix) == sorted([*first.refs, *second.refs])
    assert first.video == f"{store.prefix}{job_id}/attempt-1.mp4"
    found = store.stat(first.video)
    assert found is not None and found.size > 0 and found.etag.startswith('"')
    chunks = store.read(first.video, 0, found.size - 1)
    assert chunks is not None
    whole = b"".join(chunks)
    assert len(whole) == found.size and whole[4:8] == b"ftyp"
    middle = store.read(first.video, 3, 9)
    assert middle is not None and b"".join(middle) == whole[3:10]
    thumbnail = store.read(first.thumbnail, 0, 7)
    assert thumbnail is not None and b"".join(thumbnail) == b"\x89PNG\r\n\x1a\n"
    sheet = store.read(first.spritesheet, 0, 1)
    assert sheet is not None and b"".join(sheet) == b"\xff\xd8"  # JPEG's SOI marker
    assert (tmp_path / "none").exists() is False  # nothing went to a local results directory


def test_keys_outside_the_store_are_neither_read_nor_signed(
    s3_server: S3Server, tmp_path: Path
) -> None:
    store = _store(s3_server, tmp_path)
    foreign = f"{store.prefix}secrets.txt"
    s3_server.client().put_object(Bucket=store.bucket, Key=foreign, Body=b"x")
    job_key = f"{store.prefix}{new_job_id()}/attempt-1.mp4"
    for ref in (foreign, "elsewhere/" + job_key, f"{store.prefix}{new_job_id()}/../x.mp4"):
        assert store.stat(ref) is None and store.read(ref, 0, 0) is None
        assert store.presigned_url(ref, Variant.VIDEO, "v.mp4", 60) is None
    assert store.stat(job_key) is None  # ours, but never written


def test_a_presigned_url_serves_the_object_without_credentials(
    s3_server: S3Server, tmp_path: Path
) -> None:
    store = _store(s3_server, tmp_path)
    job_id = new_job_id()
    stored = store.write(job_id, 1, NoopEngine("tiny").generate(REQUEST))
    url = store.presigned_url(stored.spritesheet, Variant.SPRITESHEET, f"{job_id}.jpg", 60)
    assert url is not None and url.startswith(s3_server.url) and "X-Amz-Signature=" in url
    got = httpx.get(url, timeout=10)
    assert got.status_code == 200 and got.content.startswith(b"\xff\xd8")
    assert got.headers["content-type"] == "image/jpeg"
    assert got.headers["content-disposition"] == f'attachment; filename="{job_id}.jpg"'


def test_the_public_endpoint_is_the_host_presigned_urls_name(
    s3_server: S3Server, tmp_path: Path
) -> None:
    public = "http://objects.example.test:9000"
    store = _store(s3_server, tmp_path, s3_public_endpoint_url=public)
    ref = f"{store.prefix}{new_job_id()}/attempt-1.mp4"
    url = store.presigned_url(ref, Variant.VIDEO, "v.mp4", 60)
    assert url is not None and url.startswith(f"{public}/{store.bucket}/")


def test_delete_job_removes_every_object_of_the_job_and_only_those(
    s3_server: S3Server, tmp_path: Path
) -> None:
    store = _store(s3_server, tmp_path)
    video = NoopEngine("tiny").generate(REQUEST)
    doomed, kept = new_job_id(), new_job_id()
    refs = store.write(doomed, 2, video).refs
    store.write(doomed, 1, video)  # an attempt the record never pointed at
    other = store.write(kept, 1, video)
    store.delete_job(doomed, refs)
    assert s3_server.keys(store.bucket, store.prefix) == sorted(other.refs)
    store.delete(other)
    assert s3_server.keys(store.bucket, store.prefix) == []


def test_sweep_removes_the_objects_of_jobs_whose_record_is_gone_once_past_the_grace(
    s3_server: S3Server, tmp_path: Path
) -> None:
    store = _store(s3_server, tmp_path)
    video = NoopEngine("tiny").generate(REQUEST)
    gone, alive = new_job_id(), new_job_id()
    store.write(gone, 1, video)
    alive_refs = set(store.write(alive, 1, video).refs)
    store.write(alive, 2, video)  # unreferenced, but its record exists: it stays

    def kept(job_id: str) -> set[str] | None:
        return alive_refs if job_id == alive else None

    assert store.sweep(kept, grace_s=3600) == 0  # everything is younger than the grace
    time.sleep(1.1)  # S3 times have whole seconds: be past the modification time of each
    assert store.sweep(kept, grace_s=0) == 3
    remaining = s3_server.keys(store.bucket, store.prefix)
    assert len(remaining) == 6 and all(
        key.startswith(f"{store.prefix}{alive}/") for key in remaining
    )


def test_check_names_the_setting_at_fault(s3_server: S3Server, tmp_path: Path) -> None:
    store = _store(s3_server, tmp_path)
    store.check()
    assert s3_server.keys(store.bucket) == []  # the probe object is gone again
    missing = _store(s3_server, tmp_path, bucket="qvgen-no-such-bucket")
    with pytest.raises(StoreUnavailable) as no_bucket:
        missing.check()
    assert "QVGEN_S3_BUCKET=qvgen-no-such-bucket does not exist" in str(no_bucket.value)
    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = _store(s3_server, tmp_path, s3_endpoint_url=nowhere)
    with pytest.raises(StoreUnavailable) as no_server:
        unreachable.check()
    message = str(no_server.value)
    assert f"QVGEN_S3_ENDPOINT_URL={nowhere} is unreachable" in message and "\n" not in message


def test_check_says_the_credentials_were_refused(s3_server: S3Server, tmp_path: Path) -> None:
    store = _store(s3_server, tmp_path, s3_access_key_id="AKIAWRONG", s3_secret_access_key="x")
    with s3_server.checking_credentials(), pytest.raises(StoreUnavailable) as refused:
        store.check()
    message = str(refused.value)
    assert "refused the credentials" in message and "QVGEN_S3_ACCESS_KEY_ID" in message
    store.check()  # the same store, once the server accepts any key again


def test_a_failed_upload_says_which_object_and_which_setting(
    s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket()
    store = _store(s3_server, tmp_path, bucket=bucket)
    s3_server.client().delete_bucket(Bucket=bucket)
    job_id = new_job_id()
    with pytest.raises(StoreUnavailable) as failed:
        store.write(job_id, 1, NoopEngine("tiny").generate(REQUEST))
    message = str(failed.value)
    assert f"upload of {store.prefix}{job_id}/attempt-1.mp4 failed" in message
    assert f"QVGEN_S3_BUCKET={bucket} does not exist" in message
