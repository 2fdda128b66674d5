"""Packed W4A4 pipeline directories made from the tiny pipelines, for engine tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from qvgen.timestep_groups import bind_timestep_groups
from service.engine.diffusers_engine import DiffusersEngine
from training.quant.config import QuantScheme
from training.quant.export import export_packed
from training.quant.quant_linear import QuantLinear
from training.quant.swap import quantize_linears

SCHEME = QuantScheme(4, 4, clip_groups=8, mse_candidates=10)


def fake_quantized_engine(pipeline_dir: Path) -> DiffusersEngine:
    """The CPU pipeline with its block linears fake-quantized W4A4 (no Φ), with per-group clip
    tables moved off their initial value as training would."""
    engine = DiffusersEngine.from_pretrained(pipeline_dir, model_id="fake-quant")
    model = engine.pipeline.transformer
    quantize_linears(model, SCHEME, rank=0)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, QuantLinear):
                noise = torch.randn(layer.act_quantizer.clip_logits.shape, generator=generator)
                layer.act_quantizer.clip_logits.add_(noise)
    bind_timestep_groups(model, SCHEME.clip_groups)
    return engine


def export_packed_pipeline(source_dir: Path, fake_quant: DiffusersEngine, out_dir: Path) -> Path:
    """``source_dir`` with its transformer replaced by the packed export of ``fake_quant``'s."""
    shutil.copytree(source_dir, out_dir)
    shutil.rmtree(out_dir / "transformer")
    export_packed(fake_quant.pipeline.transformer, out_dir / "transformer")
    return out_dir
