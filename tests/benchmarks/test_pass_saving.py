"""``benchmarks.pass_saving`` on the CPU with the tiniest Wan: every measurement runs, the
schedule's pass count is what the hooks ran, and the policies leave no hook behind."""

from __future__ import annotations

import math

from benchmarks.e2e import VideoSize
from benchmarks.pass_saving import PassSettings, Schedule, report, run_benchmark
from benchmarks.peers import CompileSettings, Peer
from qvgen.tiny_pipelines import TextEncoderSize
from tests.benchmarks.tiny_architectures import TINY_VAE, tiny_wan


def test_schedule_counts_its_full_passes() -> None:
    schedule = Schedule(keep_first=0.2, every=2, guidance_stop=0.5)
    computed = [i for i in range(10) if schedule.computes(i, 10)]
    assert computed == [0, 1, 2, 4, 6, 8, 9]
    # Guided steps 0-4 run both branches where they compute: 0, 1, 2, 4.
    assert schedule.full_passes(10) == len(computed) + 4


def test_tiny_benchmark_measures_every_configuration_on_cpu() -> None:
    settings = PassSettings(
        architectures=(tiny_wan(3),),
        peers=(Peer.W4A4, Peer.W4A4_COMPILE, Peer.BF16_COMPILE),
        generation_peers=(Peer.W4A4_COMPILE,),
        steps=5,
        repeats=2,
        video=VideoSize(frames=9, height=16, width=16),
        vae=TINY_VAE,
        text_encoder=TextEncoderSize(),
        compile=CompileSettings(backend="aot_eager"),
    )
    results = run_benchmark(settings, "cpu")
    assert [(r.model, r.peer) for r in results] == [
        ("tiny-wan", "w4a4"),
        ("tiny-wan", "w4a4+compile"),
        ("tiny-wan", "bf16+compile"),
    ]
    for result in results:
        assert result.error is None, result.error
        assert result.passes is not None
        assert result.passes.full > 0 and result.passes.cached_magcache > 0
        assert set(result.passes.overhead) == {"first-block", "first-block-pooled", "magcache"}
        assert all(math.isfinite(v) for v in result.passes.overhead.values())
    generation = results[1].generation
    assert generation is not None and results[0].generation is None
    assert generation.plain_s and generation.scheduled_s
    assert generation.full_passes == settings.schedule.full_passes(5) < generation.plain_passes
    table = report(results, settings)
    assert "| tiny-wan | w4a4+compile | 5 |" in table
