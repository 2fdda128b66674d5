"""Cache policies and the early guidance stop on the shipped W4A4 pipeline (reference backend).

What must hold for every policy: a seed gives one video; every pass that runs uses the clip
group the plain run uses at that step and guidance branch (both timestep mappings); progress and
cancel count denoising steps as before; ``cache=none`` is the plain pipeline's video; the passes
reported are the passes run; a policy the model cannot run is refused before any work; and
compiled blocks are not recompiled as passes are skipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import fx, nn

from qvgen.checkpoint.cache_calibration import (
    CALIBRATION_FILE,
    read_calibration,
    write_calibration,
)
from qvgen.timestep_groups import TimestepMapping, bind_timestep_groups
from service.engine.caching.calibration import measure_magcache
from service.engine.caching.offer import CacheDefaults
from service.engine.compilation import CompileOptions
from service.engine.diffusers_engine import DiffusersEngine
from service.engine.types import (
    CachePolicy,
    CompilePolicy,
    GenerationCancelled,
    GenerationRequest,
    InvalidRequest,
)
from service.kernels.lowbit_linear import LowBitLinear

pytestmark = pytest.mark.usefixtures("reference_backend")

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "qvgen-tiny-w4a4"
REQUEST = GenerationRequest(
    prompt="a red circle moves to the right",
    width=32,
    height=32,
    num_frames=9,
    num_inference_steps=8,
    guidance_scale=5.0,
    seed=5,
)
# Thresholds high enough to skip passes in 8 steps of this model (each test checks it did).
SKIPPING = {
    CachePolicy.FIRST_BLOCK: 0.3,
    CachePolicy.FIRST_BLOCK_POOLED: 0.3,
    CachePolicy.MAGCACHE: 0.5,
}


def with_(request: GenerationRequest, **changes: Any) -> GenerationRequest:
    return dataclasses.replace(request, **changes)


@pytest.fixture(scope="module")
def calibrated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped W4A4 pipeline with MagCache ratios for REQUEST's step count."""
    import shutil

    root = tmp_path_factory.mktemp("calibrated") / "qvgen-tiny-w4a4"
    shutil.copytree(SHIPPED, root)
    engine = DiffusersEngine.from_pretrained(root)
    prompts = ["a red circle moves to the right", "a blue square moves up"]
    requests = [with_(REQUEST, prompt=p, seed=i) for i, p in enumerate(prompts)]
    entry = measure_magcache(engine, requests)
    write_calibration(root, read_calibration(root).with_magcache(entry))
    return root


@pytest.fixture(scope="module")
def engine(calibrated_dir: Path) -> DiffusersEngine:
    return DiffusersEngine.from_pretrained(calibrated_dir)


@pytest.fixture(scope="module")
def plain(engine: DiffusersEngine) -> np.ndarray:
    return engine.generate(REQUEST).frames


def test_calibration_file_round_trips(calibrated_dir: Path) -> None:
    entry = read_calibration(calibrated_dir).magcache[REQUEST.num_inference_steps]
    assert entry.prompts == 2 and set(entry.ratios) == {"cond", "uncond"}
    assert len(entry.mag_ratios) == REQUEST.num_inference_steps
    assert entry.mag_ratios[0] == 1.0 and all(0.3 < r < 3 for r in entry.mag_ratios)


def test_rules_offer_what_the_model_runs(engine: DiffusersEngine) -> None:
    caching = engine.rules.caching
    assert set(caching.thresholds) == {
        CachePolicy.FIRST_BLOCK,
        CachePolicy.FIRST_BLOCK_POOLED,
        CachePolicy.MAGCACHE,
    }
    # The shipped model's own ratios (20 steps) and the ones measured here.
    assert caching.magcache_steps == (REQUEST.num_inference_steps, 20)
    assert caching.guidance_stop


def test_no_policy_is_the_plain_pipeline_call(engine: DiffusersEngine, plain: np.ndarray) -> None:
    """``cache=none`` runs the pipeline exactly as it ran before policies existed."""
    pipeline = engine.pipeline
    positive, negative = engine._encode(REQUEST)
    frames = pipeline(
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        height=REQUEST.height,
        width=REQUEST.width,
        num_frames=REQUEST.num_frames,
        num_inference_steps=REQUEST.num_inference_steps,
        guidance_scale=REQUEST.guidance_scale,
        generator=torch.Generator().manual_seed(REQUEST.seed),
        output_type="np",
    ).frames
    expected = np.clip(np.rint(np.asarray(frames)[0] * 255.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(plain, expected)
    video = engine.generate(REQUEST)
    assert video.stats.transformer_passes == 2 * REQUEST.num_inference_steps
    assert video.stats.transformer_passes_saved == 0


@pytest.mark.parametrize("policy", list(SKIPPING))
def test_each_policy_saves_passes_deterministically(
    engine: DiffusersEngine, plain: np.ndarray, policy: CachePolicy
) -> None:
    request = with_(REQUEST, cache=policy, cache_threshold=SKIPPING[policy])
    first, second = engine.generate(request), engine.generate(request)
    np.testing.assert_array_equal(first.frames, second.frames)
    stats = first.stats
    assert 0 < stats.transformer_passes < 2 * REQUEST.num_inference_steps
    assert stats.transformer_passes + stats.transformer_passes_saved == 16
    assert not np.array_equal(first.frames, plain)
    # The hooks are gone afterwards: the next plain request is the plain video again.
    np.testing.assert_array_equal(engine.generate(REQUEST).frames, plain)


def test_a_zero_threshold_skips_nothing(engine: DiffusersEngine, plain: np.ndarray) -> None:
    for policy in (CachePolicy.FIRST_BLOCK, CachePolicy.FIRST_BLOCK_POOLED):
        video = engine.generate(with_(REQUEST, cache=policy, cache_threshold=0.0))
        assert video.stats.transformer_passes_saved == 0
        np.testing.assert_array_equal(video.frames, plain)


def test_guidance_stop_runs_one_pass_per_late_step(engine: DiffusersEngine) -> None:
    video = engine.generate(with_(REQUEST, guidance_stop=0.5))
    # Steps 0-3 guided (8 passes), steps 4-7 conditional only (4 passes).
    assert (video.stats.transformer_passes, video.stats.transformer_passes_saved) == (12, 4)
    both = engine.generate(
        with_(REQUEST, guidance_stop=0.5, cache=CachePolicy.FIRST_BLOCK_POOLED, cache_threshold=0.3)
    )
    assert both.stats.transformer_passes < 12


class _GroupLog:
    """(timestep, call position within it) → clip group, recorded when a layer of the last
    block runs: only passes that ran every block appear."""

    def __init__(self, layer: LowBitLinear, transformer: nn.Module) -> None:
        self.groups: dict[tuple[float, int], int] = {}
        self._call: tuple[float, int] = (0.0, 0)
        self._pending: int | None = None
        self._handles = [
            transformer.register_forward_pre_hook(self._on_call, with_kwargs=True),
            layer.register_forward_pre_hook(self._on_layer),
        ]
        self._set = layer.set_clip_group
        layer.set_clip_group = self._on_group  # type: ignore[method-assign]
        self._layer = layer

    def _on_call(self, _m: nn.Module, _a: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        t = float(kwargs["timestep"].reshape(-1)[0])
        self._call = (t, self._call[1] + 1 if self._call[0] == t else 0)

    def _on_group(self, groups: torch.Tensor) -> None:
        self._pending = int(groups.reshape(-1)[0])
        self._set(groups)

    def _on_layer(self, _m: nn.Module, _a: tuple[Any, ...]) -> None:
        assert self._pending is not None
        self.groups.setdefault(self._call, self._pending)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        del self._layer.set_clip_group


def _last_block_layer(engine: DiffusersEngine) -> LowBitLinear:
    last = engine.pipeline.transformer.blocks[-1]
    return next(m for m in last.modules() if isinstance(m, LowBitLinear))


@pytest.fixture(params=[TimestepMapping.UNIFORM_BINS, TimestepMapping.CALL_COUNTDOWN])
def mapped_engine(
    request: pytest.FixtureRequest, calibrated_dir: Path
) -> Iterator[DiffusersEngine]:
    engine = DiffusersEngine.from_pretrained(calibrated_dir)
    transformer = engine.pipeline.transformer
    if request.param is TimestepMapping.CALL_COUNTDOWN:
        transformer._forward_pre_hooks.clear()  # the loader's UNIFORM_BINS hook
        bind_timestep_groups(transformer, 50, mapping=TimestepMapping.CALL_COUNTDOWN)
    yield engine


@pytest.mark.parametrize(
    "changes",
    [
        {"cache": CachePolicy.FIRST_BLOCK, "cache_threshold": 0.3},
        {"cache": CachePolicy.FIRST_BLOCK_POOLED, "cache_threshold": 0.3},
        {"cache": CachePolicy.MAGCACHE, "cache_threshold": 0.5},
        {"guidance_stop": 0.5},
        {"guidance_stop": 0.0, "cache": CachePolicy.FIRST_BLOCK_POOLED, "cache_threshold": 0.3},
    ],
    ids=lambda c: "+".join(f"{k}={getattr(v, 'value', v)}" for k, v in c.items()),
)
def test_every_pass_that_runs_uses_the_plain_runs_clip_group(
    mapped_engine: DiffusersEngine, changes: dict[str, Any]
) -> None:
    layer = _last_block_layer(mapped_engine)
    logs = []
    for request in (REQUEST, with_(REQUEST, **changes)):
        log = _GroupLog(layer, mapped_engine.pipeline.transformer)
        try:
            mapped_engine.generate(request)
        finally:
            log.close()
        logs.append(log.groups)
    plain, policy = logs
    assert len(plain) == 2 * REQUEST.num_inference_steps
    assert 0 < len(policy) < len(plain), "the policy skipped nothing: the check checks nothing"
    assert {call: plain[call] for call in policy} == policy


@pytest.mark.parametrize("policy", list(SKIPPING))
def test_progress_counts_steps_and_cancel_stops(
    engine: DiffusersEngine, policy: CachePolicy
) -> None:
    request = with_(REQUEST, cache=policy, cache_threshold=SKIPPING[policy], guidance_stop=0.5)
    steps: list[tuple[int, int]] = []
    engine.generate(request, on_step=lambda done, total: steps.append((done, total)))
    assert steps == [(i, 8) for i in range(1, 9)]
    seen: list[int] = []
    with pytest.raises(GenerationCancelled) as stopped:
        engine.generate(
            request, on_step=lambda d, _t: seen.append(d), should_cancel=lambda: 3 in seen
        )
    assert stopped.value.steps_done == 3 and seen == [1, 2, 3]
    # A cancelled generation leaves no hook behind.
    assert engine.pipeline.transformer._cache_config is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cache": CachePolicy.MAGCACHE, "num_inference_steps": 9}, "cache"),
        ({"cache": CachePolicy.FIRST_BLOCK, "cache_threshold": 1.5}, "cache_threshold"),
        ({"cache": CachePolicy.FIRST_BLOCK, "cache_threshold": float("nan")}, "cache_threshold"),
        ({"cache_threshold": 0.1}, "cache_threshold"),
        ({"guidance_stop": 1.5}, "guidance_stop"),
        ({"guidance_stop": -0.1}, "guidance_stop"),
    ],
)
def test_requests_the_model_cannot_run_are_refused_before_any_work(
    engine: DiffusersEngine, changes: dict[str, Any], field: str
) -> None:
    steps: list[int] = []
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(with_(REQUEST, **changes), on_step=lambda d, _t: steps.append(d))
    assert refused.value.field == field and steps == []


def test_an_unknown_policy_name_names_the_field() -> None:
    with pytest.raises(InvalidRequest) as refused:
        GenerationRequest(prompt="x", cache="teacache")  # type: ignore[arg-type]
    assert refused.value.field == "cache" and "first-block-pooled" in str(refused.value)


def test_magcache_without_calibration_is_not_offered(tmp_path: Path) -> None:
    import shutil

    uncalibrated = tmp_path / "qvgen-tiny-w4a4"
    shutil.copytree(SHIPPED, uncalibrated)
    (uncalibrated / CALIBRATION_FILE).unlink()
    engine = DiffusersEngine.from_pretrained(uncalibrated)
    assert CachePolicy.MAGCACHE not in engine.rules.caching.thresholds
    with pytest.raises(InvalidRequest, match="not offered") as refused:
        engine.check(with_(REQUEST, cache=CachePolicy.MAGCACHE))
    assert refused.value.field == "cache"
    with pytest.raises(ValueError, match="not offered"):
        DiffusersEngine.from_pretrained(
            uncalibrated, cache_defaults=CacheDefaults(CachePolicy.MAGCACHE)
        )


def test_cogvideox_offers_caching_but_not_the_guidance_stop(tiny_cogvideox_dir: Path) -> None:
    engine = DiffusersEngine.from_pretrained(tiny_cogvideox_dir)
    assert not engine.rules.caching.guidance_stop
    request = GenerationRequest(
        prompt="a red cat", width=16, height=16, num_frames=9, num_inference_steps=4, seed=1
    )
    with pytest.raises(InvalidRequest) as refused:
        engine.check(with_(request, guidance_stop=0.5))
    assert refused.value.field == "guidance_stop"
    cached = engine.generate(
        with_(request, cache=CachePolicy.FIRST_BLOCK_POOLED, cache_threshold=1.0)
    )
    # One batched call of both guidance passes a step; the first always runs in full.
    assert cached.stats.transformer_passes + cached.stats.transformer_passes_saved == 8
    assert cached.stats.transformer_passes_saved > 0


_compiles: list[int] = []


def _counting(gm: fx.GraphModule, _inputs: list[torch.Tensor]) -> Callable[..., Any]:
    _compiles.append(1)
    return gm.forward


torch._dynamo.register_backend(_counting, name="qvgen_test_caching_counting")


def test_compiled_blocks_are_not_recompiled_as_passes_are_skipped(calibrated_dir: Path) -> None:
    """The hooks wrap each block's compiled ``forward``: skipping runs no graph and compiles
    none; a skipped and a computed pass reuse the one graph of the blocks."""
    torch._dynamo.reset()
    _compiles.clear()
    options = CompileOptions(policy=CompilePolicy.ON, backend="qvgen_test_caching_counting")
    engine = DiffusersEngine.from_pretrained(calibrated_dir, compile_options=options)
    eager = DiffusersEngine.from_pretrained(calibrated_dir)
    engine.warm_up(REQUEST)
    graphs = len(_compiles)
    assert graphs >= 1
    requests = [with_(REQUEST, cache=p, cache_threshold=t) for p, t in SKIPPING.items()]
    requests.append(with_(REQUEST, guidance_stop=0.25))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for request in requests:
            video = engine.generate(request)
            assert video.stats.transformer_passes_saved > 0
            np.testing.assert_array_equal(video.frames, eager.generate(request).frames)
    assert len(_compiles) == graphs
    torch._dynamo.reset()
