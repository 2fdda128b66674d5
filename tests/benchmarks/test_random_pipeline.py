"""A random packed Wan pipeline directory loads through the engine's own loader and generates."""

from __future__ import annotations

from pathlib import Path

from benchmarks.random_models import count_quantized
from benchmarks.random_pipeline import write_random_wan
from qvgen.checkpoint import read_packed
from qvgen.tiny_pipelines import TextEncoderSize
from service.engine.diffusers_engine import DiffusersEngine
from service.worker.engines import warm_up_request
from tests.benchmarks.tiny_architectures import TINY_VAE, tiny_wan

TINY_WAN = tiny_wan(num_layers=2)


def test_random_wan_directory_loads_packed_and_generates(tmp_path: Path) -> None:
    out = write_random_wan(TINY_WAN, tmp_path / "wan", TINY_VAE, TextEncoderSize(d_model=16))
    stored = read_packed(out / "transformer")
    # q/k/v/out of self- and cross-attention and the two FFN linears of every block.
    assert len(stored.layers) == TINY_WAN.num_layers * 10
    assert stored.config["num_layers"] == TINY_WAN.num_layers
    engine = DiffusersEngine.from_pretrained(out, device="cpu")
    assert count_quantized(engine.pipeline.transformer) == len(stored.layers)
    video = engine.generate(warm_up_request(16, 16, 5, 4.0))
    assert video.frames.shape == (5, 16, 16, 3)
