"""The engine compiles its transformer where asked, warms up, keeps the compiled code on disk,
and falls back to eager with one log line when compiling fails — never failing the job.

Runs the shipped packed pipeline (``models/qvgen-tiny-w4a4``, reference backend) on the CPU.
Exactness is checked with the ``aot_eager`` backend (dynamo's capture, eager kernels): inductor
rounds float ops differently, which moves a W4A4 model's codes (see
``test_compiled_transformer.py``); the inductor run checks the cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import fx

from service.engine.compilation import (
    CompileOptions,
    CompileScope,
    is_compiled,
    repeated_blocks,
)
from service.engine.diffusers_engine import DiffusersEngine
from service.engine.types import CompilePolicy, CompileStatus, GenerationRequest
from service.worker.engines import EngineKind, EngineStart, build_engine, warm_up_request

# What these tests check is the engine's wiring, not the Triton kernels.
pytestmark = pytest.mark.usefixtures("reference_backend")

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "qvgen-tiny-w4a4"
REQUEST = GenerationRequest(
    prompt="a red square moves to the right",
    negative_prompt="static",
    width=32,
    height=32,
    num_frames=9,
    num_inference_steps=2,
    guidance_scale=4.0,
    seed=3,
)
OTHER_SHAPE = GenerationRequest(**{**REQUEST.__dict__, "width": 48, "num_inference_steps": 3})

_compiles: list[int] = []


def _failing(gm: fx.GraphModule, inputs: list[torch.Tensor]) -> Callable[..., Any]:
    _compiles.append(1)
    raise RuntimeError("forced compile failure")


def _failing_after_first(gm: fx.GraphModule, inputs: list[torch.Tensor]) -> Callable[..., Any]:
    """Compiles (eagerly) the first graph, fails every later one (a new shape)."""
    _compiles.append(1)
    if len(_compiles) > 1:
        raise RuntimeError("forced failure of a recompilation")
    return gm.forward


def _counting(gm: fx.GraphModule, inputs: list[torch.Tensor]) -> Callable[..., Any]:
    _compiles.append(1)
    return gm.forward


for _backend in (_failing, _failing_after_first, _counting):
    torch._dynamo.register_backend(_backend, name=f"qvgen_test{_backend.__name__}")


@pytest.fixture(autouse=True)
def fresh_dynamo() -> None:
    torch._dynamo.reset()
    _compiles.clear()


def engine(policy: CompilePolicy, backend: str = "aot_eager", **kw: object) -> DiffusersEngine:
    options = CompileOptions(policy=policy, backend=backend, **kw)  # type: ignore[arg-type]
    return DiffusersEngine.from_pretrained(SHIPPED, device="cpu", compile_options=options)


def compiled_modules(e: DiffusersEngine) -> list[torch.nn.Module]:
    transformer = e.pipeline.transformer
    return [m for m in transformer.modules() if is_compiled(m)]


@pytest.fixture(scope="module")
def eager_frames() -> dict[str, np.ndarray]:
    e = DiffusersEngine.from_pretrained(SHIPPED, device="cpu")
    return {"request": e.generate(REQUEST).frames, "other": e.generate(OTHER_SHAPE).frames}


def test_policy_by_device() -> None:
    assert CompileOptions().wanted(is_cuda=True)
    assert not CompileOptions().wanted(is_cuda=False)
    assert CompileOptions(policy=CompilePolicy.ON).wanted(is_cuda=False)
    assert not CompileOptions(policy=CompilePolicy.OFF).wanted(is_cuda=True)


def test_cpu_default_is_eager() -> None:
    e = DiffusersEngine.from_pretrained(SHIPPED, device="cpu")
    assert e.compile_status is CompileStatus.EAGER
    assert compiled_modules(e) == []


def test_compiled_blocks_generate_the_eager_video(eager_frames: dict[str, np.ndarray]) -> None:
    e = engine(CompilePolicy.ON)
    blocks = repeated_blocks(e.pipeline.transformer)
    assert compiled_modules(e) == blocks and len(blocks) == 6
    e.warm_up(REQUEST)
    assert e.compile_status is CompileStatus.COMPILED
    np.testing.assert_array_equal(e.generate(REQUEST).frames, eager_frames["request"])


def test_whole_scope_compiles_the_transformer(eager_frames: dict[str, np.ndarray]) -> None:
    e = engine(CompilePolicy.ON, scope=CompileScope.WHOLE)
    assert compiled_modules(e) == [e.pipeline.transformer]
    np.testing.assert_array_equal(e.generate(REQUEST).frames, eager_frames["request"])


def test_failure_at_warm_up_falls_back_with_one_log_line(
    eager_frames: dict[str, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    e = engine(CompilePolicy.ON, backend="qvgen_test_failing")
    with caplog.at_level(logging.ERROR, logger="service.engine.diffusers_engine"):
        e.warm_up(REQUEST)
    assert _compiles, "the failing backend never ran"
    assert e.compile_status is CompileStatus.FALLBACK
    assert compiled_modules(e) == []
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1 and "torch.compile failed" in lines[0] and "eagerly" in lines[0]
    np.testing.assert_array_equal(e.generate(REQUEST).frames, eager_frames["request"])


def test_failure_at_a_new_shape_runs_that_job_eagerly(eager_frames: dict[str, np.ndarray]) -> None:
    e = engine(CompilePolicy.ON, backend="qvgen_test_failing_after_first")
    e.warm_up(REQUEST)
    assert e.compile_status is CompileStatus.COMPILED
    steps: list[int] = []
    video = e.generate(OTHER_SHAPE, on_step=lambda done, _total: steps.append(done))
    assert e.compile_status is CompileStatus.FALLBACK
    assert steps == [1, 2, 3]  # progress reported once per step, never restarted
    np.testing.assert_array_equal(video.frames, eager_frames["other"])


def test_worker_engine_is_compiled_and_warm_before_it_returns() -> None:
    """A worker registers only once ``build_engine`` returns: by then the warm-up compiled."""
    start = EngineStart(
        compile=CompilePolicy.ON,
        compile_backend="qvgen_test_counting",
        warm_up=warm_up_request(32, 32, 9, 4.0),
    )
    built = build_engine(EngineKind.DIFFUSERS, str(SHIPPED), "cpu", "tiny", start=start)
    assert built.compile_status is CompileStatus.COMPILED
    assert _compiles, "build_engine returned before the warm-up compiled anything"


def test_inductor_code_is_cached_on_disk(tmp_path: Path) -> None:
    e = engine(CompilePolicy.ON, backend="inductor", cache_dir=tmp_path)
    e.warm_up(REQUEST)
    assert e.compile_status is CompileStatus.COMPILED
    assert any((tmp_path / "inductor").rglob("*.py")), "no generated code under the cache dir"
    # A restarted worker: fresh dynamo state, same cache directory; inductor's FX-graph cache
    # serves the generated code instead of building it again.
    torch._dynamo.reset()
    hits = torch._dynamo.utils.counters["inductor"]["fxgraph_cache_hit"]
    again = engine(CompilePolicy.ON, backend="inductor", cache_dir=tmp_path)
    again.warm_up(REQUEST)
    assert torch._dynamo.utils.counters["inductor"]["fxgraph_cache_hit"] > hits
