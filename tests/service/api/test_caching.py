"""The pass-saving fields of a create request (``cache``, ``cache_threshold``, ``guidance_stop``)
through the API: sent as JSON or as the ``openai`` SDK's form fields, filled in from the model's
published defaults (the threshold stored explicitly), refused at submit with the field and the
allowed values, echoed by the video object with the passes a completed job ran. FastAPI's
TestClient against a real Redis; a real worker loop (the no-op engine) for the pass counts."""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Iterator

import openai
import pytest
import redis
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.api.schemas import GenerationLimits, VideoCreateParams
from service.api.validation import ParamError, to_generation
from service.engine.caching.offer import THRESHOLDS
from service.engine.rules import (
    CachingRules,
    EngineRules,
    ModelFamily,
    ModelGeometry,
    ThresholdRange,
    check_request,
    default_limits,
)
from service.engine.types import CachePolicy
from service.queue.consumer import Consumer
from service.queue.keys import Keys
from service.queue.records import JobField, request_from_json
from service.settings import ServiceSettings
from service.worker.noop_engine import NoopEngine
from service.worker.runner import Worker
from tests.service.worker.running import WAIT_S, Running

FIRST_BLOCK, POOLED = CachePolicy.FIRST_BLOCK, CachePolicy.FIRST_BLOCK_POOLED
MAGCACHE, NONE = CachePolicy.MAGCACHE, CachePolicy.NONE
# Wan: every policy, MagCache calibrated for 8 and 20 steps, guidance may stop early.
WAN_CACHING = CachingRules(thresholds=dict(THRESHOLDS), magcache_steps=(8, 20), guidance_stop=True)
WAN = EngineRules(
    geometry=ModelGeometry(size_multiple=16, frame_step=4, text_tokens=8),
    limits=default_limits(ModelFamily.WAN),
    caching=WAN_CACHING,
)
# CogVideoX without calibration: first-block policies only, guidance in every step.
COGVIDEOX = EngineRules(
    geometry=ModelGeometry(size_multiple=16, frame_step=8, text_tokens=8),
    limits=default_limits(ModelFamily.COGVIDEOX),
    caching=CachingRules(thresholds={p: THRESHOLDS[p] for p in (FIRST_BLOCK, POOLED)}),
)
# A model whose first-block threshold range is narrower than the API's [0, 1].
NARROW = EngineRules(
    geometry=WAN.geometry,
    limits=WAN.limits,
    caching=CachingRules(thresholds={FIRST_BLOCK: ThresholdRange(low=0.0, high=0.2, default=0.1)}),
)
RULES = {"wan": WAN, "cogvideox": COGVIDEOX, "narrow": NARROW}


@pytest.fixture
def client(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _publish(settings: ServiceSettings, sync_redis: redis.Redis, rules: EngineRules) -> None:
    Consumer(sync_redis, settings, "tiny", "publisher").publish_rules(rules)


def _with_defaults(
    rules: EngineRules, cache: CachePolicy, threshold: float | None, guidance_stop: float
) -> EngineRules:
    caching = CachingRules(
        thresholds=rules.caching.thresholds,
        magcache_steps=rules.caching.magcache_steps,
        guidance_stop=rules.caching.guidance_stop,
        default_cache=cache,
        default_cache_threshold=threshold,
        default_guidance_stop=guidance_stop,
    )
    return EngineRules(geometry=rules.geometry, limits=rules.limits, caching=caching)


def _create(client: TestClient, **fields: object) -> dict[str, object]:
    response = client.post("/v1/videos", json={"prompt": "a red ball", "size": "16x16", **fields})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _stored(settings: ServiceSettings, sync_redis: redis.Redis, video_id: object) -> tuple:
    """What the job's stored request runs with: (cache, cache_threshold, guidance_stop)."""
    text = sync_redis.hget(Keys(settings.key_prefix).job(str(video_id)), JobField.REQUEST)
    request = request_from_json(str(text))
    return request.cache, request.cache_threshold, request.guidance_stop


def _limits(client: TestClient) -> dict[str, object]:
    (model,) = client.get("/v1/models").json()["data"]
    limits: dict[str, object] = model["limits"]
    return limits


def test_models_publish_the_offered_policies_with_their_ranges_and_defaults(
    client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    static = _limits(client)
    assert static["from_worker"] is False
    assert static["cache_policies"] == {
        "none": None,
        "first-block": {"low": 0.0, "high": 1.0, "default": 0.1},
        "first-block-pooled": {"low": 0.0, "high": 1.0, "default": 0.1},
        "magcache": {"low": 0.0, "high": 1.0, "default": 0.1},
    }
    assert (static["magcache_steps"], static["min_guidance_stop"]) == (None, 0.0)
    assert (static["default_cache"], static["default_cache_threshold"]) == ("none", None)
    assert static["default_guidance_stop"] == 1.0

    _publish(settings, sync_redis, _with_defaults(WAN, FIRST_BLOCK, 0.1, 0.5))
    wan = _limits(client)
    assert wan["from_worker"] is True and wan["cache_policies"] == static["cache_policies"]
    assert (wan["magcache_steps"], wan["min_guidance_stop"]) == ([8, 20], 0.0)
    assert (wan["default_cache"], wan["default_cache_threshold"]) == ("first-block", 0.1)
    assert wan["default_guidance_stop"] == 0.5

    _publish(settings, sync_redis, COGVIDEOX)
    cogvideox = _limits(client)
    assert list(cogvideox["cache_policies"]) == ["none", "first-block", "first-block-pooled"]  # type: ignore[call-overload]
    assert (cogvideox["magcache_steps"], cogvideox["min_guidance_stop"]) == ([], 1.0)
    assert (cogvideox["default_cache"], cogvideox["default_guidance_stop"]) == ("none", 1.0)


def test_json_fields_reach_the_stored_request_and_the_video_object(
    client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    _publish(settings, sync_redis, WAN)
    fields = {"cache": "magcache", "cache_threshold": 0.25, "guidance_stop": 0.5}
    video = _create(client, num_inference_steps=8, **fields)
    assert _stored(settings, sync_redis, video["id"]) == (MAGCACHE, 0.25, 0.5)
    assert {name: video[name] for name in fields} == fields
    assert (video["transformer_passes"], video["transformer_passes_saved"]) == (None, None)
    again = client.get(f"/v1/videos/{video['id']}").json()
    assert {name: again[name] for name in fields} == fields


def test_the_openai_sdks_extra_form_fields_reach_the_stored_request(
    client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    _publish(settings, sync_redis, WAN)
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    extra = {"cache": "first-block-pooled", "cache_threshold": 0.125, "guidance_stop": 0.75}
    with warnings.catch_warnings():  # the SDK marks the Videos API deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        video = sdk.videos.create(prompt="a red ball", size="16x16", extra_body=extra)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.videos.create(prompt="x", size="16x16", extra_body={"guidance_stop": 1.5})  # type: ignore[arg-type]
    # Multipart: every field arrived as a string and was read as the number it spells.
    assert _stored(settings, sync_redis, video.id) == (POOLED, 0.125, 0.75)
    assert {name: getattr(video, name) for name in extra} == extra
    assert refused.value.body["param"] == "guidance_stop"  # type: ignore[index]


@pytest.mark.parametrize(
    ("rules", "fields", "param", "quoted"),
    [
        ("wan", {"cache": "fast"}, "cache", "'none', 'first-block', 'first-block-pooled' or "),
        ("wan", {"cache": "first-block", "cache_threshold": "1.5"}, "cache_threshold", "≤ 1"),
        ("wan", {"cache": "first-block", "cache_threshold": "nan"}, "cache_threshold", "finite"),
        ("wan", {"cache": "first-block", "cache_threshold": "-inf"}, "cache_threshold", "finite"),
        (
            "narrow",
            {"cache": "first-block", "cache_threshold": "0.5"},
            "cache_threshold",
            "[0.0, 0.2]",
        ),
        ("wan", {"cache": "none", "cache_threshold": "0.1"}, "cache_threshold", "other than none"),
        ("wan", {"cache_threshold": "0.1"}, "cache_threshold", "other than none"),
        (
            "cogvideox",
            {"cache": "magcache"},
            "cache",
            "'magcache' is not offered by this model; use none, first-block or first-block-pooled",
        ),
        (
            "wan",
            {"cache": "magcache", "num_inference_steps": "10"},
            "cache",
            "calibrated for num_inference_steps in (8, 20) on this model, not 10",
        ),
        ("wan", {"guidance_stop": "1.5"}, "guidance_stop", "≤ 1"),
        ("wan", {"guidance_stop": "-0.1"}, "guidance_stop", "≥ 0"),
        ("wan", {"guidance_stop": "inf"}, "guidance_stop", "finite"),
        ("cogvideox", {"guidance_stop": "0.5"}, "guidance_stop", "batches both passes); use 1"),
    ],
)
def test_bad_values_are_refused_at_submit_naming_the_field_and_what_is_allowed(
    client: TestClient,
    settings: ServiceSettings,
    sync_redis: redis.Redis,
    rules: str,
    fields: dict[str, str],
    param: str,
    quoted: str,
) -> None:
    _publish(settings, sync_redis, RULES[rules])
    # As the SDK sends them: form fields, every value a string.
    form = {name: (None, value) for name, value in {"prompt": "x", **fields}.items()}
    response = client.post("/v1/videos", files=form)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, "invalid_value")
    message = str(error["message"]).replace("less than or equal to ", "≤ ")
    message = message.replace("greater than or equal to ", "≥ ")
    assert message.startswith(f"{param}: ") and quoted in message, message
    assert client.get("/v1/videos").json()["data"] == []  # nothing was queued


def test_left_out_fields_get_the_models_defaults_and_the_threshold_is_stored(
    client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    _publish(settings, sync_redis, _with_defaults(WAN, FIRST_BLOCK, 0.12, 0.5))
    cases: list[tuple[dict[str, object], tuple]] = [
        ({}, (FIRST_BLOCK, 0.12, 0.5)),
        ({"cache": "first-block"}, (FIRST_BLOCK, 0.12, 0.5)),  # the model's own default
        ({"cache": "first-block-pooled"}, (POOLED, 0.1, 0.5)),  # the policy's range default
        ({"cache": "magcache", "num_inference_steps": 8}, (MAGCACHE, 0.1, 0.5)),
        ({"cache_threshold": 0.15}, (FIRST_BLOCK, 0.15, 0.5)),
        ({"cache": "none", "guidance_stop": 1}, (NONE, None, 1.0)),
    ]
    for fields, expected in cases:
        video = _create(client, **fields)
        assert _stored(settings, sync_redis, video["id"]) == expected, fields
        assert (video["cache"], video["cache_threshold"]) == (expected[0], expected[1])

    # A default the request's step count does not suit is refused as the model's default. (A
    # new API process: one holds the rules it read for a while.)
    _publish(settings, sync_redis, _with_defaults(WAN, MAGCACHE, None, 1.0))
    with TestClient(create_app(settings)) as fresh:
        video = _create(fresh, num_inference_steps=20)
        assert _stored(settings, sync_redis, video["id"]) == (MAGCACHE, 0.1, 1.0)
        refused = fresh.post("/v1/videos", json={"prompt": "x", "num_inference_steps": 10})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "cache"
    assert "(left out, cache is the default of model 'tiny')" in error["message"]


def test_without_published_rules_every_policy_passes_and_defaults_are_none(
    client: TestClient, settings: ServiceSettings, sync_redis: redis.Redis
) -> None:
    assert _stored(settings, sync_redis, _create(client)["id"]) == (NONE, None, 1.0)
    # Any step count: the worker's engine guards MagCache's calibration (the static design).
    video = _create(client, cache="magcache", num_inference_steps=13, guidance_stop=0.25)
    assert _stored(settings, sync_redis, video["id"]) == (MAGCACHE, 0.1, 0.25)


def _random_params(rng: random.Random) -> VideoCreateParams:
    fields: dict[str, object] = {"prompt": "p", "size": "32x32", "num_frames": 9}
    fields["num_inference_steps"] = rng.choice([4, 8, 10, 20])
    if rng.random() < 0.8:
        fields["cache"] = rng.choice(list(CachePolicy))
    if rng.random() < 0.5:
        fields["cache_threshold"] = rng.choice([0.0, 0.05, 0.2, 0.5, 1.0])
    if rng.random() < 0.5:
        fields["guidance_stop"] = rng.choice([0.0, 0.5, 1.0])
    return VideoCreateParams.model_validate(fields)


@pytest.mark.parametrize(
    "rules", [WAN, COGVIDEOX, NARROW, _with_defaults(NARROW, FIRST_BLOCK, 0.15, 1.0)]
)
def test_what_the_api_accepts_the_engine_runs_and_what_it_refuses_the_engine_would(
    settings: ServiceSettings, rules: EngineRules
) -> None:
    limits = GenerationLimits.for_model(settings, rules)
    rng = random.Random(0)
    accepted = 0
    for _ in range(400):
        params = _random_params(rng)
        try:
            request, _ = to_generation(params, "tiny", settings, limits)
        except ParamError as error:
            assert error.param in ("cache", "cache_threshold", "guidance_stop"), error
            continue
        check_request(request, rules.geometry, rules.limits, rules.caching)
        assert request.cache is NONE or request.cache_threshold is not None
        accepted += 1
    assert 20 < accepted < 380, accepted


def test_a_completed_job_reports_its_transformer_passes_and_the_worker_counts_them(
    client: TestClient, settings: ServiceSettings
) -> None:
    run = Running(Worker(NoopEngine("tiny", rules=WAN), settings, "cpu", metrics_port=0))
    try:
        deadline = time.monotonic() + WAIT_S
        while not _limits(client)["from_worker"]:
            assert time.monotonic() < deadline, "the worker published no rules"
            time.sleep(0.02)
        guided = _create(client, num_inference_steps=3, guidance_scale=5.0, cache="first-block")
        assert guided["status"] == "queued"
        assert (guided["transformer_passes"], guided["transformer_passes_saved"]) == (None, None)
        plain = _create(client, num_inference_steps=4, guidance_scale=1.0)
        finals = [_wait_final(client, video["id"]) for video in (guided, plain)]
        assert [video["status"] for video in finals] == ["completed"] * 2, finals
        # The no-op engine counts a plain run: 2 passes a step with guidance, 1 without.
        assert [(v["transformer_passes"], v["transformer_passes_saved"]) for v in finals] == [
            (6, 0),
            (4, 0),
        ]
        assert (finals[0]["cache"], finals[0]["cache_threshold"]) == ("first-block", 0.1)
        registry = run.worker.metrics.registry
        labels = {"model": "tiny"}
        assert registry.get_sample_value("qvgen_transformer_passes_total", labels) == 10.0
        assert registry.get_sample_value("qvgen_transformer_passes_saved_total", labels) == 0.0
    finally:
        run.stop()


def _wait_final(client: TestClient, video_id: object) -> dict[str, object]:
    deadline = time.monotonic() + WAIT_S
    while True:
        video: dict[str, object] = client.get(f"/v1/videos/{video_id}").json()
        if video["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return video
        time.sleep(0.05)
