"""The official ``openai`` SDK against the running service: uvicorn API, worker processes,
real Redis, real MP4 files — with the no-op engine and with a tiny diffusers Wan pipeline."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import openai
import pytest
from openai.types import Video, VideoDeleteResponse

from benchmarks.service import Cluster
from qvgen.video_io import probe_video
from service.settings import ServiceSettings
from service.worker.engines import EngineKind
from tests.service.cluster_fixtures import (
    API_KEY,
    JOB_TIMEOUT_S,
    MODEL,
    cluster,
    result_files,
    wait_ready,
)
from tests.service.redis_fixtures import redis_server

__all__ = ["cluster", "redis_server"]

# The SDK marks the Videos API deprecated (Sora's shutdown); the shape is what we serve.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _client(cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster.base_url}/v1", api_key=API_KEY, max_retries=0)


def _sdk_round_trip(
    cluster: Cluster, settings: ServiceSettings, tmp_path: Path, extra: dict[str, object]
) -> None:
    client = _client(cluster)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        video = client.videos.create_and_poll(
            prompt="a red ball rolls",
            size="32x32",
            extra_body=extra,  # type: ignore[arg-type]
        )
        assert video.status == "completed", video
        assert video.progress == 100 and video.model == MODEL and video.size == "32x32"
        assert video.completed_at is not None and video.expires_at is not None
        assert client.videos.retrieve(video.id).id == video.id
        listed = client.videos.list(limit=10)
        assert [item.id for item in listed.data] == [video.id]
        content = client.videos.download_content(video.id)
        target = tmp_path / "downloaded.mp4"
        content.write_to_file(target)
        info = probe_video(target)
        assert (info.width, info.height) == (32, 32)
        thumbnail = client.videos.download_content(video.id, variant="thumbnail")
        assert thumbnail.content.startswith(b"\x89PNG")
        assert len(result_files(settings, video.id)) == 1
        deleted = client.videos.delete(video.id)
        assert deleted.deleted and deleted.id == video.id and deleted.object == "video.deleted"
        with pytest.raises(openai.NotFoundError):
            client.videos.retrieve(video.id)
        assert not (settings.results_dir / video.id).exists()


def test_openai_sdk_end_to_end_with_noop_engine(
    cluster: tuple[Cluster, ServiceSettings], tmp_path: Path
) -> None:
    running, settings = cluster
    running.start_worker(0.01, model=MODEL, model_id=MODEL)
    wait_ready(running)
    _sdk_round_trip(running, settings, tmp_path, {"num_inference_steps": 3, "num_frames": 5})


def test_openai_sdk_remix_and_delete_behave_as_its_types_say(
    cluster: tuple[Cluster, ServiceSettings], tmp_path: Path
) -> None:
    running, _ = cluster
    running.start_worker(0.05, model=MODEL, model_id=MODEL)
    wait_ready(running)
    client = _client(running)
    small = {"num_inference_steps": 2, "num_frames": 5, "seed": 77}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        source = client.videos.create_and_poll(
            prompt="a red ball",
            size="32x32",
            extra_body=small,  # type: ignore[arg-type]
        )
        assert source.status == "completed" and source.remixed_from_video_id is None
        remix = client.videos.remix(source.id, prompt="a blue ball")
        assert isinstance(remix, Video) and remix.status == "queued"
        assert (remix.remixed_from_video_id, remix.prompt) == (source.id, "a blue ball")
        assert (remix.size, remix.seconds, remix.model) == (source.size, source.seconds, MODEL)
        done = client.videos.poll(remix.id)
        assert done.status == "completed" and done.remixed_from_video_id == source.id
        client.videos.download_content(done.id).write_to_file(tmp_path / "remix.mp4")
        info = probe_video(tmp_path / "remix.mp4")
        assert (info.frame_count, info.width, info.height) == (5, 32, 32)
        with pytest.raises(openai.NotFoundError):
            client.videos.remix("video_" + "0" * 32, prompt="x")
        with pytest.raises(openai.BadRequestError) as bad:
            client.videos.remix(source.id, prompt="")
        assert bad.value.body["param"] == "prompt"  # type: ignore[index]

        # DELETE of a running job: one call, and it is gone; the worker is free at once.
        endless = {"num_inference_steps": 500, "num_frames": 5}  # 25 s at 0.05 s a step
        job = client.videos.create(prompt="long", size="16x16", extra_body=endless)  # type: ignore[arg-type]
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while client.videos.retrieve(job.id).progress == 0:
            assert time.monotonic() < deadline, "the long job never made progress"
            time.sleep(0.05)
        deleted = client.videos.delete(job.id)
        assert isinstance(deleted, VideoDeleteResponse)
        assert (deleted.id, deleted.deleted, deleted.object) == (job.id, True, "video.deleted")
        with pytest.raises(openai.NotFoundError):
            client.videos.retrieve(job.id)
        with pytest.raises(openai.NotFoundError):
            client.videos.delete(job.id)
        assert job.id not in [video.id for video in client.videos.list(limit=100).data]
        after = client.videos.create_and_poll(
            prompt="next",
            size="32x32",
            extra_body=small,  # type: ignore[arg-type]
        )
        assert after.status == "completed"


def test_openai_sdk_errors_map_to_sdk_exceptions(cluster: tuple[Cluster, ServiceSettings]) -> None:
    running, _ = cluster
    client = _client(running)
    with pytest.raises(openai.BadRequestError) as bad:
        client.videos.create(prompt="x", size="33x32")  # type: ignore[arg-type]
    assert bad.value.body["param"] == "size"  # type: ignore[index]
    unauthorised = openai.OpenAI(base_url=f"{running.base_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        unauthorised.videos.list()


@pytest.mark.slow
def test_openai_sdk_end_to_end_with_tiny_wan_pipeline(
    cluster: tuple[Cluster, ServiceSettings], tmp_path: Path, tiny_wan_dir: Path
) -> None:
    running, settings = cluster
    running.start_worker(model=str(tiny_wan_dir), engine=EngineKind.DIFFUSERS, model_id=MODEL)
    wait_ready(running, timeout_s=180)
    extra = {"num_inference_steps": 2, "num_frames": 5, "guidance_scale": 1.0}
    _sdk_round_trip(running, settings, tmp_path, extra)
