"""``GET /v1/videos/{id}/events`` over real HTTP: the uvicorn API, a worker process with the
no-op engine, real Redis; the stream read as a client reads it (httpx, line by line)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from benchmarks.service import Cluster
from service.settings import ServiceSettings
from tests.service.cluster_fixtures import JOB_TIMEOUT_S, MODEL, auth, start_cluster, wait_ready
from tests.service.redis_fixtures import RedisServer, free_port, make_settings, running_redis

MAX_STREAMS = 3
STEPS, STEP_DELAY_S = 8, 0.1


@pytest.fixture
def service(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Cluster, ServiceSettings]]:
    cluster, settings = start_cluster(
        redis_server.url, tmp_path / "results", max_event_streams=MAX_STREAMS, poll_after_ms=50
    )
    try:
        yield cluster, settings
    finally:
        cluster.stop()


@dataclass
class Event:
    type: str
    id: str | None
    data: dict[str, object]


@dataclass
class Stream:
    """One ``/events`` stream read in a thread until the server ends it."""

    status: int | None = None
    events: list[Event] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)
    broken: bool = False  # the connection was cut, not the stream ended by the server

    def wait(self, what: str, condition: object) -> None:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not condition():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"{what}: got {self.events}"
            time.sleep(0.02)


def _read(url: str, stream: Stream, headers: dict[str, str]) -> None:
    try:
        with httpx.stream("GET", url, headers=headers, timeout=JOB_TIMEOUT_S) as response:
            stream.status = response.status_code
            stream.opened.set()
            if response.status_code != 200:
                return
            assert response.headers["content-type"].startswith("text/event-stream")
            fields: dict[str, str] = {}
            for line in response.iter_lines():
                if line.startswith(":"):
                    continue
                if line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
                    continue
                if "data" in fields:
                    stream.events.append(
                        Event(fields.get("event", ""), fields.get("id"), json.loads(fields["data"]))
                    )
                fields = {}
    except httpx.HTTPError:
        stream.broken = True
    finally:
        stream.opened.set()
        stream.ended.set()


def _open(cluster: Cluster, video_id: str, **headers: str) -> Stream:
    stream = Stream()
    url = f"{cluster.base_url}/v1/videos/{video_id}/events"
    threading.Thread(target=_read, args=(url, stream, {**auth(), **headers}), daemon=True).start()
    assert stream.opened.wait(JOB_TIMEOUT_S)
    return stream


def _create(cluster: Cluster, steps: int = STEPS) -> str:
    body = {"prompt": "a ball", "size": "16x16", "num_frames": 1, "num_inference_steps": steps}
    response = httpx.post(f"{cluster.base_url}/v1/videos", json=body, headers=auth(), timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_the_stream_shows_the_queue_then_every_step_then_the_end(
    service: tuple[Cluster, ServiceSettings],
) -> None:
    cluster, _ = service
    ahead, job = _create(cluster), _create(cluster)
    stream = _open(cluster, job)
    stream.wait("the queued state", lambda: stream.events)
    first = stream.events[0]
    assert first.type == "video.queued" and first.data["queue_position"] == 1
    cluster.start_worker(STEP_DELAY_S, model=MODEL, model_id=MODEL)
    assert stream.ended.wait(JOB_TIMEOUT_S) and not stream.broken
    types = [event.type for event in stream.events]
    assert types[-1] == "video.completed" and stream.events[-1].data["progress"] == 100
    running = [event.data for event in stream.events if event.type == "video.in_progress"]
    steps = [int(video["steps_done"]) for video in running]  # type: ignore[call-overload]
    # Each step is announced as it is written; a reader may see two written between its reads
    # as one, never one out of order.
    assert steps == sorted(steps) and len(steps) >= 2, steps
    assert stream.events[-1].data["steps_done"] == STEPS
    assert set(types) <= {"video.queued", "video.in_progress", "video.completed"}
    assert all(event.data["id"] == job for event in stream.events)
    # Reconnecting after the end: the current state (the end) at once, then the stream ends.
    again = _open(cluster, job, **{"Last-Event-ID": str(stream.events[-1].id)})
    assert again.ended.wait(JOB_TIMEOUT_S)
    assert [event.type for event in again.events] == ["video.completed"]
    assert (
        httpx.get(f"{cluster.base_url}/v1/videos/{ahead}", headers=auth()).json()["status"]
        == "completed"
    )


def test_a_deletion_ends_the_stream_and_streams_are_capped(
    service: tuple[Cluster, ServiceSettings],
) -> None:
    cluster, _ = service
    cluster.start_worker(STEP_DELAY_S, model=MODEL, model_id=MODEL)
    wait_ready(cluster)
    running = _create(cluster, steps=500)
    stream = _open(cluster, running)
    stream.wait("a step", lambda: any(e.data.get("steps_done") for e in stream.events))
    queued = [_create(cluster) for _ in range(MAX_STREAMS - 1)]
    others = [_open(cluster, video_id) for video_id in queued]
    refused = _open(cluster, queued[0])
    assert refused.ended.wait(JOB_TIMEOUT_S) and refused.status == 429
    deleted = httpx.delete(f"{cluster.base_url}/v1/videos/{running}", headers=auth())
    assert deleted.status_code == 200
    assert stream.ended.wait(JOB_TIMEOUT_S) and not stream.broken
    assert stream.events[-1].type == "video.deleted"
    assert stream.events[-1].data == {"id": running, "object": "video.deleted", "deleted": True}
    # Its place is free again once the stream has ended.
    reopened = _open(cluster, queued[0])
    assert reopened.status == 200
    for video_id in queued:
        assert httpx.delete(f"{cluster.base_url}/v1/videos/{video_id}", headers=auth()).is_success
    for other in [*others, reopened]:
        assert other.ended.wait(JOB_TIMEOUT_S)
        assert other.events[-1].type == "video.deleted"
    gone = _open(cluster, running)
    assert gone.status == 404
    for video_id in ("video_" + "0" * 32, "nope"):
        assert _open(cluster, video_id).status == 404


def test_a_stream_ends_when_redis_goes_away_and_answers_503_until_it_is_back(
    tmp_path: Path,
) -> None:
    with running_redis(tmp_path / "redis", "--appendonly", "yes") as server:
        cluster, _ = start_cluster(server.url, tmp_path / "results", poll_after_ms=50)
        try:
            job = _create(cluster)
            stream = _open(cluster, job)
            stream.wait("the queued state", lambda: stream.events)
            server.kill()
            assert stream.ended.wait(JOB_TIMEOUT_S) and not stream.broken  # ended, not hung
            assert [event.type for event in stream.events] == ["video.queued"]
            assert _open(cluster, job).status == 503
            server.start()  # AOF: the job is still there
            again = _open(cluster, job)
            again.wait("the queued state again", lambda: again.events)
            assert again.status == 200 and again.events[0].type == "video.queued"
        finally:
            cluster.stop()


def test_one_key_cannot_hold_every_stream(redis_server: RedisServer, tmp_path: Path) -> None:
    """Issue 27: one key opened all of the process's streams; another key's first got 429."""
    keys = ("stream-key-a", "stream-key-b")
    settings = make_settings(
        redis_server.url,
        tmp_path / "results",
        api_keys=",".join(keys),
        max_event_streams=4,
        max_event_streams_per_key=2,
    )
    cluster = Cluster(settings, free_port())
    cluster.start_api()
    bearer = [{"Authorization": f"Bearer {key}"} for key in keys]
    try:
        body = {"prompt": "a ball", "size": "16x16", "num_frames": 1}
        jobs = [
            httpx.post(f"{cluster.base_url}/v1/videos", json=body, headers=h, timeout=10).json()[
                "id"
            ]
            for h in (bearer[0], bearer[0], bearer[0], bearer[1])
        ]
        held = [_open(cluster, job, **bearer[0]) for job in jobs[:2]]
        assert [s.status for s in held] == [200, 200]
        refused = httpx.get(
            f"{cluster.base_url}/v1/videos/{jobs[2]}/events", headers=bearer[0], timeout=10
        )
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_streams_for_key"
        assert "max_event_streams_per_key" in refused.json()["error"]["message"]
        assert refused.headers["retry-after"]
        other = _open(cluster, jobs[3], **bearer[1])
        assert other.status == 200
        for job, h in zip(jobs, (bearer[0], bearer[0], bearer[0], bearer[1]), strict=True):
            httpx.delete(f"{cluster.base_url}/v1/videos/{job}", headers=h, timeout=10)
        for stream in [*held, other]:
            assert stream.ended.wait(JOB_TIMEOUT_S)
    finally:
        cluster.stop()
