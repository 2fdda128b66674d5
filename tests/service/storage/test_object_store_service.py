"""The service on an object store, as real processes: the uvicorn API and two workers that share
no directory with it (nor with each other), talking to Redis and to the moto S3 server only.

The acceptance of the object store: 20 jobs complete and download through the API; a SIGKILLed
worker's job completes once; the spritesheet downloads through the official SDK as a JPEG of
the stated grid.
"""

from __future__ import annotations

import io
import json
import os
import signal
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import redis
from PIL import Image

from benchmarks.service import Cluster
from qvgen.video_io import probe_video
from service.engine.spritesheet import SpritesheetLayout
from service.queue.keys import Keys
from service.queue.records import JobField
from service.settings import ServiceSettings
from tests.service.cluster_fixtures import API_KEY, MODEL, auth, is_final, wait_ready, wait_video
from tests.service.redis_fixtures import RedisServer, free_port, redis_server
from tests.service.storage.s3_fixtures import S3Server, s3_server, s3_settings

__all__ = ["redis_server", "s3_server"]

# The SDK marks the Videos API deprecated (Sora's shutdown); the shape is what we serve.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SMALL_JOB = {"prompt": "s3", "size": "16x16", "num_frames": 3, "num_inference_steps": 2}
STEP_DELAY_S = 0.01
# At STEP_DELAY_S a step, a job that runs for seconds: time to find its worker and kill it.
LONG_JOB_STEPS = 300


@dataclass
class ObjectStoreService:
    api: Cluster  # the API process; its settings' results_dir is a directory only it could see
    workers: Cluster  # the worker processes; another directory, under other settings
    settings: ServiceSettings  # what the API runs with
    worker_settings: ServiceSettings
    s3: S3Server

    @property
    def bucket(self) -> str:
        return self.settings.s3_bucket

    def job_keys(self, job_id: str) -> list[str]:
        return self.s3.keys(self.bucket, f"{self.settings.s3_key_prefix}{job_id}/")


@pytest.fixture(scope="module")
def service(
    redis_server: RedisServer, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ObjectStoreService]:
    bucket = s3_server.new_bucket()
    api_settings = s3_settings(
        redis_server.url,
        s3_server,
        bucket,
        tmp_path_factory.mktemp("api") / "results",
        api_keys=API_KEY,
    )
    worker_settings = api_settings.model_copy(
        update={"results_dir": tmp_path_factory.mktemp("workers") / "results"}
    )
    port = free_port()
    api, workers = Cluster(api_settings, port), Cluster(worker_settings, port)
    try:
        api.start_api()
        for _ in range(2):
            workers.start_worker(STEP_DELAY_S, model=MODEL, model_id=MODEL)
        wait_ready(api, workers=2)
        yield ObjectStoreService(api, workers, api_settings, worker_settings, s3_server)
    finally:
        workers.stop()
        api.stop()


def _submit(service: ObjectStoreService, **overrides: object) -> str:
    body = {**SMALL_JOB, **overrides}
    response = httpx.post(
        f"{service.api.base_url}/v1/videos", json=body, headers=auth(), timeout=10
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_twenty_jobs_on_two_workers_complete_and_download_through_the_api(
    service: ObjectStoreService, tmp_path: Path
) -> None:
    ids = [_submit(service, seed=index) for index in range(20)]
    done = [wait_video(service.api, video_id, is_final) for video_id in ids]
    assert [video["status"] for video in done] == ["completed"] * 20, done
    client = redis.Redis.from_url(service.settings.redis_url, decode_responses=True)
    keys = Keys(service.settings.key_prefix)
    ran_on = {client.hget(keys.job(video_id), JobField.WORKER) for video_id in ids}
    client.close()
    assert len(ran_on) == 2, f"both workers should have run jobs: {ran_on}"
    with httpx.Client(base_url=service.api.base_url, headers=auth(), timeout=30) as http:
        for index, video_id in enumerate(ids):
            mp4 = http.get(f"/v1/videos/{video_id}/content")
            assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4"
            target = tmp_path / f"{video_id}.mp4"
            target.write_bytes(mp4.content)
            info = probe_video(target)
            assert (info.frame_count, info.width, info.height) == (3, 16, 16)
            # The no-op engine's red channel is (seed + 16 t) mod 256: this is job `index`'s.
            thumbnail = http.get(f"/v1/videos/{video_id}/content", params={"variant": "thumbnail"})
            first_frame = np.asarray(Image.open(io.BytesIO(thumbnail.content)))
            assert int(first_frame[0, 0, 0]) == index
            assert len(service.job_keys(video_id)) == 3


def test_a_range_request_is_served_from_the_object(service: ObjectStoreService) -> None:
    video_id = _submit(service)
    assert wait_video(service.api, video_id, is_final)["status"] == "completed"
    url = f"{service.api.base_url}/v1/videos/{video_id}/content"
    whole = httpx.get(url, headers=auth(), timeout=10)
    part = httpx.get(url, headers={**auth(), "Range": "bytes=10-19"}, timeout=10)
    assert part.status_code == 206 and part.content == whole.content[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(whole.content)}"


def test_a_sigkilled_workers_job_completes_once(service: ObjectStoreService) -> None:
    client = redis.Redis.from_url(service.settings.redis_url, decode_responses=True)
    keys = Keys(service.settings.key_prefix)
    owner = None
    try:
        video_id = _submit(service, num_inference_steps=LONG_JOB_STEPS)
        wait_video(service.api, video_id, lambda v: int(str(v.get("progress") or 0)) >= 2)
        owner = client.hget(keys.job(video_id), JobField.WORKER)
        info = json.loads(str(client.get(keys.worker(str(owner)))))
        os.kill(int(info["pid"]), signal.SIGKILL)
        done = wait_video(service.api, video_id, is_final)
        assert (done["status"], done["attempt"]) == ("completed", 2), done
        names = [key.rsplit("/", 1)[1] for key in service.job_keys(video_id)]
        assert sorted(names) == ["attempt-2.mp4", "attempt-2.png", "attempt-2.spritesheet.jpg"]
        mp4 = httpx.get(
            f"{service.api.base_url}/v1/videos/{video_id}/content", headers=auth(), timeout=10
        )
        assert mp4.status_code == 200 and mp4.content[4:8] == b"ftyp"
    finally:
        if owner is not None:
            client.zrem(keys.workers(MODEL), str(owner))
        client.close()
        _replace_dead_workers(service)


def _replace_dead_workers(service: ObjectStoreService) -> None:
    """Keep two live workers for the module's other tests."""
    for process in list(service.workers.workers):
        if process.poll() is not None:
            service.workers.workers.remove(process)
    while len(service.workers.workers) < 2:
        service.workers.start_worker(STEP_DELAY_S, model=MODEL, model_id=MODEL)


def test_the_spritesheet_downloads_through_the_sdk_as_a_jpeg_of_the_stated_grid(
    service: ObjectStoreService,
) -> None:
    sdk = openai.OpenAI(base_url=f"{service.api.base_url}/v1", api_key=API_KEY, max_retries=0)
    seed = 40
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        video = sdk.videos.create_and_poll(
            prompt="a grid",
            size="32x16",  # type: ignore[arg-type]
            extra_body={"num_frames": 7, "num_inference_steps": 1, "seed": seed},
        )
        assert video.status == "completed", video
        sheet = sdk.videos.download_content(video.id, variant="spritesheet")
    image = Image.open(io.BytesIO(sheet.content))
    layout = SpritesheetLayout.for_clip(7, 32, 16)
    assert image.format == "JPEG" and image.size == layout.size == (5 * 32, 2 * 16)
    assert layout.frames == (0, 1, 2, 3, 4, 5, 6)
    # Tile k shows frame k: the no-op engine fills frame t's red channel with seed + 16 t.
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    for position, index in enumerate(layout.frames):
        row, column = divmod(position, layout.columns)
        tile = pixels[row * 16 : (row + 1) * 16, column * 32 : (column + 1) * 32]
        assert abs(tile[..., 0].mean() - (seed + 16 * index)) < 6, (position, tile[..., 0].mean())
    empty = pixels[16:32, 2 * 32 :]  # the three cells after the last tile
    assert empty.mean() < 6


def test_delete_removes_the_jobs_objects(service: ObjectStoreService) -> None:
    video_id = _submit(service)
    assert wait_video(service.api, video_id, is_final)["status"] == "completed"
    assert len(service.job_keys(video_id)) == 3
    url = f"{service.api.base_url}/v1/videos/{video_id}"
    assert httpx.delete(url, headers=auth(), timeout=10).status_code == 200
    assert service.job_keys(video_id) == []


def test_no_process_wrote_a_results_directory(service: ObjectStoreService) -> None:
    """Last in this module, after every job above: the API's and the workers' local results
    directories were never made."""
    assert service.s3.keys(service.bucket)
    assert not service.settings.results_dir.exists()
    assert not service.worker_settings.results_dir.exists()
