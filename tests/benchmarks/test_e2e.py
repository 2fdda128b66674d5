"""``qvgen bench e2e`` on CPU: the real configs' shapes, a tiny end-to-end run, the report."""

from __future__ import annotations

import dataclasses
import math
import weakref
from pathlib import Path

import pytest
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan
from torch import nn

from benchmarks import e2e as bench_e2e
from benchmarks.e2e import (
    E2ESettings,
    GenerationResult,
    ModelResult,
    ModelVariant,
    PeerResult,
    VideoSize,
    measure_variant,
    run_benchmark,
    to_json,
)
from benchmarks.e2e_report import (
    GIB,
    append_section,
    generations_table,
    goal_checks,
    peers_table,
    results_table,
    section_text,
)
from benchmarks.peers import CompileSettings, Peer
from benchmarks.random_models import (
    WAN_2_1_1_3B,
    WAN_2_1_14B,
    WAN_2_1_VAE,
    WanArchitecture,
    _meta_transformer,
)
from qvgen.layer_policy import LayerPolicy
from qvgen.tiny_pipelines import TextEncoderSize
from service.engine.environment import resolve_target
from tests.benchmarks.tiny_architectures import TINY_VAE, TINY_WAN

TINY_VIDEO = VideoSize(frames=9, height=16, width=16)


@pytest.mark.parametrize(
    ("arch", "params", "quantized"),
    [(WAN_2_1_1_3B, 1.42e9, 30 * 10), (WAN_2_1_14B, 14.29e9, 40 * 10)],
)
def test_real_configs_have_the_released_sizes(
    arch: WanArchitecture, params: float, quantized: int
) -> None:
    model = _meta_transformer(arch)
    count = sum(p.numel() for p in model.parameters())
    assert math.isclose(count, params, rel_tol=0.01), count
    selected = [
        n for n, m in model.named_modules() if type(m) is nn.Linear and LayerPolicy().selects(n)
    ]
    # q/k/v/out of self- and cross-attention and the two FFN linears of every block.
    assert len(selected) == quantized


def test_video_size_gives_the_wan_480p_token_count() -> None:
    video = VideoSize()
    assert video.latent_shape(WAN_2_1_14B, WAN_2_1_VAE) == (16, 21, 60, 104)
    assert video.tokens(WAN_2_1_14B, WAN_2_1_VAE) == 32760
    with pytest.raises(ValueError, match=r"--frames must be 4·k \+ 1 .* got 80"):
        VideoSize(frames=80).tokens(WAN_2_1_14B, WAN_2_1_VAE)
    with pytest.raises(ValueError, match=r"--width must be a multiple of 16 .* got 830"):
        VideoSize(width=830).tokens(WAN_2_1_14B, WAN_2_1_VAE)


def test_default_vae_architecture_is_the_class_default() -> None:
    with init_empty_weights():
        default = AutoencoderKLWan()
    for key, value in WAN_2_1_VAE.config().items():
        assert default.config[key] == value, key


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="timed_steps must be ≥ 1, got 0"):
        E2ESettings(timed_steps=0)
    with pytest.raises(ValueError, match=r"unknown models \[.nope.\]"):
        E2ESettings(generation=(("nope", Peer.W4A4),))
    with pytest.raises(ValueError, match=r"must include \['bf16'\]"):
        E2ESettings(peers=(Peer.W4A4,))
    with pytest.raises(ValueError, match=r"not measured: \['fp8\+compile'\]"):
        E2ESettings(peers=(Peer.BF16, Peer.W4A4), generation=(("wan2.1-14b", Peer.FP8_COMPILE),))


def test_tiny_benchmark_runs_every_peer_on_cpu() -> None:
    settings = E2ESettings(
        architectures=(TINY_WAN,),
        video=TINY_VIDEO,
        vae=TINY_VAE,
        text_encoder=TextEncoderSize(),
        # aot_eager: dynamo's capture without inductor's CPU code generation (minutes here).
        compile=CompileSettings(backend="aot_eager"),
        generation=(("tiny-wan", Peer.W4A4_COMPILE), ("tiny-wan", Peer.BF16)),
        timed_steps=2,
        generation_steps=1,
    )
    [result] = run_benchmark(settings, "cpu")
    assert (result.model, result.tokens) == ("tiny-wan", 3 * 2 * 2)
    assert result.attention_ms_per_step > 0
    assert [p.peer for p in result.peers] == list(Peer)
    for peer in result.peers:
        assert peer.error is None, peer.error
        assert len(peer.step_ms) == 2
        assert all(math.isfinite(t) and t > 0 for t in peer.step_ms)
        assert peer.quantized_layers == (10 if peer.peer.ours else 0)
        assert peer.weight_bytes > 0
        assert (peer.generation is not None) == (peer.peer in (Peer.W4A4_COMPILE, Peer.BF16))
    fp8 = result.result(Peer.FP8_COMPILE)
    assert fp8 is not None and fp8.fp8_impl is not None
    assert fp8.weight_bytes < result.bf16.weight_bytes
    for peer in (Peer.W4A4_COMPILE, Peer.BF16):
        found = result.result(peer)
        assert found is not None and found.generation is not None
        generation = found.generation
        assert generation.error is None
        assert generation.frames_shape == (9, 16, 16, 3)
        assert generation.peak_bytes is None  # no CUDA memory on CPU
        assert generation.start_bytes is None
        assert generation.model_bytes > found.weight_bytes  # transformer + VAE
    assert result.w4a4.weight_bytes < result.bf16.weight_bytes
    json_rows = to_json([result])
    assert json_rows[0]["peers"][list(Peer).index(Peer.W4A4)]["peer"] == "w4a4"
    assert "| tiny-wan | 12 |" in results_table([result])
    assert "fp8+compile ms" in peers_table([result])
    assert "| tiny-wan | w4a4+compile | 1 |" in generations_table([result])


def test_a_failing_peer_is_reported_and_the_others_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: object) -> str:
        raise RuntimeError("no fp8 here")

    monkeypatch.setattr("benchmarks.peers.to_fp8_rowwise", fail)
    settings = E2ESettings(
        architectures=(TINY_WAN,),
        video=TINY_VIDEO,
        vae=TINY_VAE,
        text_encoder=TextEncoderSize(),
        peers=(Peer.BF16, Peer.FP8_COMPILE, Peer.W4A4),
        compile=CompileSettings(backend="aot_eager"),
        generation=(),
        timed_steps=1,
    )
    [result] = run_benchmark(settings, "cpu")
    failed = result.result(Peer.FP8_COMPILE)
    assert failed is not None and failed.step_ms == () and "no fp8 here" in str(failed.error)
    assert result.w4a4.step_ms and result.bf16.step_ms
    assert "| failed |" in peers_table([result])


def test_model_measured_with_a_generation_is_freed_before_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pipeline's reference cycles must not keep a measured model alive into the next
    model's peak (an H200 run counted the bf16 14B transformer in the W4A4 peak)."""
    built: list[weakref.ref[nn.Module]] = []
    build = bench_e2e._build

    def spy(*args: object) -> nn.Module:
        model = build(*args)  # type: ignore[arg-type]
        built.append(weakref.ref(model))
        return model

    monkeypatch.setattr(bench_e2e, "_build", spy)
    settings = E2ESettings(
        architectures=(TINY_WAN,),
        video=TINY_VIDEO,
        vae=TINY_VAE,
        text_encoder=TextEncoderSize(),
        peers=(Peer.BF16, Peer.W4A4),
        generation=(("tiny-wan", Peer.BF16),),
        timed_steps=1,
        generation_steps=1,
    )
    target = resolve_target("cpu")
    [result] = measure_variant(ModelVariant.BF16, TINY_WAN, settings, target)
    assert result.generation is not None and result.generation.error is None
    bench_e2e._reset_peak(target)
    assert built and built[0]() is None


def _result(
    bf16_ms: float, w4a4_ms: float, attention_ms: float, peak_gib: float, fp8_ms: float = 0.0
) -> ModelResult:
    generation = GenerationResult(
        2, 10.0, int(peak_gib * GIB), (81, 480, 832, 3), int(7.2 * GIB), int(7.2 * GIB)
    )
    peers = [
        PeerResult(Peer.BF16, (bf16_ms,), 28 * GIB, 0),
        PeerResult(Peer.W4A4, (w4a4_ms,), 7 * GIB, 400, generation),
    ]
    if fp8_ms:
        peers.append(PeerResult(Peer.FP8_COMPILE, (fp8_ms,), 14 * GIB, 0, fp8_impl="x"))
    return ModelResult(
        model="wan2.1-14b", tokens=32760, attention_ms_per_step=attention_ms, peers=tuple(peers)
    )


def test_goals_report_misses_with_the_reason() -> None:
    checks = goal_checks([_result(1000.0, 900.0, 580.0, 25.0, fp8_ms=750.0)])
    lines = [c.line() for c in checks]
    assert [c.met for c in checks] == [False, False, True, False]
    # 1000 / 1.8 = 556 ms < 580 ms of attention: no speed of the rest reaches 1.8×.
    assert "fastest ours (w4a4) ≥ 1.8× bf16: 1.11×" in lines[0]
    assert "58%" in lines[0] and "at most 1.72×" in lines[0] and "out of reach" in lines[0]
    # 750 / 900 = 0.83× against the 1.3× goal.
    assert "≥ 1.3× fp8+compile: 0.83×" in lines[1] and "56.0% short" in lines[1]
    assert "w4a4 480p generation (2 steps) peak < 12 GiB" in lines[3]
    assert "13.00 GiB over" in lines[3]
    # 1000 / 1.5 = 667 ms: the rest must go from 420 to 87 ms, 4.85× faster.
    small = dataclasses.replace(_result(1000.0, 900.0, 580.0, 25.0), model="wan2.1-1.3b")
    lines = [c.line() for c in goal_checks([small])]
    assert len(lines) == 2 and "4.85× would be needed" in lines[0]
    # No FP8 peer: ours only has to beat the fastest peer that ran (bf16 eager here).
    assert "≥ 1.0× bf16: 1.11×" in lines[1] and lines[1].startswith("met")
    assert all(c.met for c in goal_checks([_result(1000.0, 500.0, 200.0, 10.0, fp8_ms=700.0)]))
    assert goal_checks([]) == []


def test_section_appends_under_one_header(tmp_path: Path) -> None:
    env = {"torch": "t", "triton": "tr", "capability": "sm_90", "card": "GPU", "date": "d",
           "commit": "abc"}  # fmt: skip
    text = section_text([_result(1000.0, 800.0, 580.0, 12.0)], E2ESettings(), env)
    path = tmp_path / "BENCHMARKS.md"
    append_section(path, text, "# Benchmarks\n")
    append_section(path, text, "# Benchmarks\n")
    content = path.read_text()
    assert content.count("# Benchmarks\n") == 1
    assert content.count("commit abc") == 2
    assert "the text encoder" in content and "excluded" in content


def test_cli_registers_beside_bench_kernels() -> None:
    from qvgen.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["bench", "e2e", "--models", "wan2.1-14b", "--generation-models"])
    assert args.models == ["wan2.1-14b"] and args.generation_models == []
    assert parser.parse_args(["bench", "kernels"]).handler is not args.handler
