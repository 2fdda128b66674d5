"""One validation at submit: the API holds a request to the rules the model's workers publish,
answers 400 naming the field the client sent and the nearest allowed values, and what it accepts
runs to completion on a real worker."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.api.schemas import GenerationLimits, VideoCreateParams
from service.api.validation import ParamError, frames_for_seconds, seconds_of, to_generation
from service.engine.rules import (
    EngineRules,
    ModelFamily,
    ModelGeometry,
    ModelLimits,
    check_request,
    default_limits,
)
from service.queue.consumer import Consumer
from service.settings import ServiceSettings
from service.worker.noop_engine import NoopEngine
from service.worker.runner import Worker
from tests.service.worker.running import Running

WAN = EngineRules(
    geometry=ModelGeometry(size_multiple=16, frame_step=4, text_tokens=8),
    limits=default_limits(ModelFamily.WAN),
)
COGVIDEOX = EngineRules(
    geometry=ModelGeometry(size_multiple=16, frame_step=8, text_tokens=8),
    limits=default_limits(ModelFamily.COGVIDEOX),
)


@pytest.fixture
def client(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _publish(settings: ServiceSettings, sync_redis: redis.Redis, rules: EngineRules) -> None:
    Consumer(sync_redis, settings, "tiny", "publisher").publish_rules(rules)


def _refusal(client: TestClient, **fields: object) -> tuple[str, str]:
    response = client.post("/v1/videos", json={"prompt": "a red ball", "fps": 8, **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_value"
    return str(error["param"]), str(error["message"])


@pytest.mark.parametrize(
    ("fields", "param", "quoted"),
    [
        # 12 s at 8 fps is 97 frames, over Wan's 81: 81 frames are 10 s.
        ({"seconds": "12"}, "seconds", "use 10"),
        ({"num_frames": 20}, "num_frames", "use 17 or 21"),
        ({"num_frames": 78}, "num_frames", "use 77 or 81"),
        ({"num_frames": 85}, "num_frames", "use 81"),
        ({"guidance_scale": 0.5}, "guidance_scale", "[1, 20]: the nearest allowed is 1"),
        (
            {"num_inference_steps": 150},
            "num_inference_steps",
            "[1, 100]: the nearest allowed is 100",
        ),
        ({"size": "100x64"}, "size", "use 96x64 or 112x64"),
        ({"size": "64x1296"}, "size", "use 64x1280"),
        ({"prompt": "x" * 2001}, "prompt", "at most 2000"),
        ({"prompt": "   "}, "prompt", "white space"),
    ],
)
def test_requests_outside_the_published_rules_are_refused_at_submit(
    client: TestClient,
    settings: ServiceSettings,
    sync_redis: redis.Redis,
    fields: dict[str, object],
    param: str,
    quoted: str,
) -> None:
    _publish(settings, sync_redis, WAN)
    got_param, message = _refusal(client, **fields)
    assert (got_param, message.split(":")[0]) == (param, param)
    assert quoted in message, message
    assert "'tiny'" in message or param == "prompt"


def test_seconds_errors_offer_the_nearest_seconds_at_the_requests_fps(
    client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    _publish(settings, sync_redis, COGVIDEOX)
    # CogVideoX makes 1 + 8k frames; 1.5 s at 8 fps is 13 frames; 9 and 17 frames are 1 and 2 s.
    param, message = _refusal(client, seconds=1.5)
    assert param == "seconds" and "13 frames" in message and "use 1 or 2" in message
    param, message = _refusal(client, seconds=1.5, fps=12)  # 21 frames; 17 or 25 frames
    assert "use 1.33333 or 2" in message
    again = client.post("/v1/videos", json={"prompt": "x", "seconds": "1.33333", "fps": 12})
    assert again.status_code == 200 and again.json()["seconds"] == "1.33333"
    assert (
        client.post("/v1/videos", json={"prompt": "x", "seconds": 2, "fps": 8}).status_code == 200
    )


def test_without_published_rules_the_static_bounds_still_apply(
    client: TestClient, settings: ServiceSettings
) -> None:
    param, message = _refusal(client, seconds=120, fps=60)  # 7201 frames, over the API's 1025
    assert param == "seconds" and "at most 1025" in message
    accepted = client.post("/v1/videos", json={"prompt": "x", "num_frames": 20})
    assert accepted.status_code == 200  # frame step 1 until a worker says otherwise


def test_seconds_this_api_reports_map_back_to_the_same_frame_count() -> None:
    for fps in range(1, 61):
        for frames in range(5, 400, 4):
            assert frames_for_seconds(float(seconds_of(frames, fps)), fps) == frames, (fps, frames)


def _random_params(rng: random.Random, limits: GenerationLimits) -> VideoCreateParams:
    """Mostly on the limits' grid, often just off it or past a cap."""
    multiple, step = limits.size_multiple, limits.frame_step

    def off() -> int:
        return rng.choice([0, 0, 0, 1, 8])

    def side(maximum: int) -> int:
        return multiple * rng.randrange(1, maximum // multiple + 2) + off()

    fields: dict[str, object] = {"prompt": "p" * rng.choice([1, 50, 50, 50, 2000, 2001])}
    if rng.random() < 0.95:
        fields["size"] = f"{side(limits.max_width)}x{side(limits.max_height)}"
    if rng.random() < 0.5:
        fields["num_frames"] = 1 + step * rng.randrange(0, 120 // step) + off()
    elif rng.random() < 0.8:
        fields["seconds"] = rng.choice([0.1, 0.5, 1, 1.5, 2, 5, 10, 12, 20])
    if rng.random() < 0.8:
        fields["fps"] = rng.choice([1, 4, 8, 12, 16, 24, 30, 60])
    if rng.random() < 0.8:
        fields["num_inference_steps"] = rng.randrange(1, 120)
    if rng.random() < 0.8:
        fields["guidance_scale"] = rng.choice([0.0, 0.5, 1.0, 5.0, 20.0, 25.0])
    return VideoCreateParams.model_validate(fields)


@pytest.mark.parametrize(
    "rules",
    [
        WAN,
        COGVIDEOX,
        EngineRules(
            geometry=ModelGeometry(size_multiple=24, frame_step=6, text_tokens=8),
            limits=ModelLimits(
                max_width=1000, max_height=700, max_frames=90, min_fps=4, max_fps=30
            ),
        ),
    ],
)
def test_what_the_api_accepts_the_engine_runs(
    settings: ServiceSettings, rules: EngineRules
) -> None:
    """Every request the API accepts passes the engine's own check (the worker's guard)."""
    limits = GenerationLimits.for_model(settings, rules)
    rng = random.Random(0)
    accepted = 0
    for _ in range(3000):
        params = _random_params(rng, limits)
        try:
            request, _ = to_generation(params, "tiny", settings, limits)
        except ParamError:
            continue
        check_request(request, rules.geometry, rules.limits)
        accepted += 1
    assert 50 < accepted < 2000, accepted


def test_requests_inside_the_limits_complete_on_a_worker_with_those_rules(
    client: TestClient, settings: ServiceSettings
) -> None:
    worker = Running(Worker(NoopEngine("tiny", rules=WAN), settings, "cpu", metrics_port=0))
    try:
        deadline = time.monotonic() + 10
        while not client.get("/v1/models").json()["data"][0]["limits"]["from_worker"]:
            assert time.monotonic() < deadline, "the worker published no rules"
            time.sleep(0.02)
        small = {"prompt": "a red ball", "size": "16x16", "fps": 8, "num_inference_steps": 2}
        edges = [
            {"seconds": "10"},
            {"num_frames": 21},
            {"guidance_scale": 1.0},
            {"num_inference_steps": 100, "num_frames": 1},
        ]
        ids = []
        for fields in edges:
            response = client.post("/v1/videos", json={**small, **fields})
            assert response.status_code == 200, response.text
            ids.append(response.json()["id"])
        deadline = time.monotonic() + 60
        finals: dict[str, dict[str, object]] = {}
        while len(finals) < len(ids) and time.monotonic() < deadline:
            for video_id in ids:
                video = client.get(f"/v1/videos/{video_id}").json()
                if video["status"] in ("completed", "failed", "cancelled"):
                    finals[video_id] = video
            time.sleep(0.05)
        assert [finals[i]["status"] for i in ids] == ["completed"] * len(ids), finals
        assert finals[ids[0]]["seconds"] == "10"
    finally:
        worker.stop()


def test_noop_rules_are_published_and_applied(
    client: TestClient, settings: ServiceSettings
) -> None:
    worker = Running(Worker(NoopEngine("tiny"), settings, "cpu", metrics_port=0))
    try:
        deadline = time.monotonic() + 10
        while not client.get("/v1/models").json()["data"][0]["limits"]["from_worker"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        param, message = _refusal(client, size="528x16")
        assert param == "size" and "use 512x16" in message
    finally:
        worker.stop()
    assert dataclasses.asdict(NoopEngine("m").rules.limits)["max_width"] == 512


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        # Issue 27: each was accepted (true as 1 frame, "5" as 5, the default model, 64x64).
        ({"num_frames": True}, "num_frames"),
        ({"num_frames": "5"}, "num_frames"),
        ({"num_inference_steps": "3"}, "num_inference_steps"),
        ({"seed": False}, "seed"),
        ({"guidance_scale": "5"}, "guidance_scale"),
        ({"seconds": True}, "seconds"),
        ({"model": ""}, "model"),
        ({"size": "٦٤x٦٤"}, "size"),  # Arabic-Indic digits
        ({"size": "６４x６４"}, "size"),  # fullwidth digits
    ],
)
def test_json_bodies_are_typed_strictly(
    client: TestClient, fields: dict[str, object], param: str
) -> None:
    assert _refusal(client, **fields)[0] == param


def test_seconds_takes_the_string_openai_spells_it_with(client: TestClient) -> None:
    response = client.post("/v1/videos", json={"prompt": "a red ball", "seconds": "1"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("put", "/v1/videos", "GET, POST"),
        ("patch", "/v1/videos/video_x", "DELETE, GET"),
        ("post", "/healthz", "GET"),
        ("delete", "/v1/models", "GET"),
    ],
)
def test_405_names_the_allowed_methods(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
