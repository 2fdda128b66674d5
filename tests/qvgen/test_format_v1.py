from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from qvgen.checkpoint import PACKED_FILE, CheckpointError, read_packed, write_packed
from qvgen.checkpoint.format_v1 import METADATA_KEY
from service.kernels.packed_transformer import load_packed_transformer
from tests.training.quant.tiny_transformers import tiny_wan
from training.quant.config import QuantScheme
from training.quant.export import packed_checkpoint
from training.quant.swap import quantize_linears


@pytest.fixture
def packed_dir(tmp_path: Path) -> Path:
    model = tiny_wan()
    quantize_linears(model, QuantScheme(clip_groups=8), rank=0)
    write_packed(packed_checkpoint(model), tmp_path / "transformer")
    return tmp_path / "transformer"


def _tensors_and_meta(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    with safe_open(str(path / PACKED_FILE), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = json.loads((f.metadata() or {})[METADATA_KEY])
    return tensors, meta


def _rewrite(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, object]) -> None:
    save_file(tensors, str(path / PACKED_FILE), metadata={METADATA_KEY: json.dumps(meta)})


def test_save_load_is_bit_exact(packed_dir: Path, tmp_path: Path) -> None:
    first = read_packed(packed_dir)
    write_packed(first, tmp_path / "again")
    second = read_packed(tmp_path / "again")
    assert first.scheme == second.scheme and first.config == second.config
    assert first.layers.keys() == second.layers.keys()
    for name, layer in first.layers.items():
        other = second.layers[name]
        for field in ("qweight", "weight_scale", "weight_zero_point", "act_clip", "bias"):
            assert torch.equal(getattr(layer, field), getattr(other, field)), f"{name}.{field}"
    assert all(torch.equal(v, second.tensors[k]) for k, v in first.tensors.items())
    assert (packed_dir / PACKED_FILE).read_bytes() == (
        tmp_path / "again" / PACKED_FILE
    ).read_bytes()


def test_metadata_records_scheme_and_layer_lists(packed_dir: Path) -> None:
    _, meta = _tensors_and_meta(packed_dir)
    assert meta["format"] == "qvgen-packed" and meta["format_version"] == 1
    assert meta["scheme"]["weight_bits"] == 4 and meta["scheme"]["clip_groups"] == 8  # type: ignore[index]
    names = [m["name"] for m in meta["quantized_modules"]]  # type: ignore[attr-defined]
    assert "blocks.0.attn1.to_q" in names and "proj_out" in meta["full_precision_modules"]  # type: ignore[operator]


def test_unknown_format_version_rejected(packed_dir: Path) -> None:
    tensors, meta = _tensors_and_meta(packed_dir)
    _rewrite(packed_dir, tensors, {**meta, "format_version": 2})
    with pytest.raises(CheckpointError, match="format_version 2 is not supported"):
        read_packed(packed_dir)


def test_unknown_scheme_key_rejected(packed_dir: Path) -> None:
    tensors, meta = _tensors_and_meta(packed_dir)
    meta["scheme"] = {**meta["scheme"], "group_size": 128}  # type: ignore[dict-item]
    _rewrite(packed_dir, tensors, meta)
    with pytest.raises(CheckpointError, match=r"scheme: unknown keys \['group_size'\]"):
        read_packed(packed_dir)


def test_missing_layer_tensor_named(packed_dir: Path) -> None:
    tensors, meta = _tensors_and_meta(packed_dir)
    del tensors["blocks.1.ffn.net.2.weight_scale"]
    _rewrite(packed_dir, tensors, meta)
    with pytest.raises(
        CheckpointError,
        match=r"blocks\.1\.ffn\.net\.2: missing tensors \['blocks\.1\.ffn\.net\.2\.weight_scale'\]",
    ):
        read_packed(packed_dir)


def test_shape_mismatch_named(packed_dir: Path) -> None:
    tensors, meta = _tensors_and_meta(packed_dir)
    tensors["blocks.0.attn1.to_k.weight_zero_point"] = torch.zeros(3)
    _rewrite(packed_dir, tensors, meta)
    with pytest.raises(
        CheckpointError,
        match=r"blocks\.0\.attn1\.to_k\.weight_zero_point: expected torch\.float32 \(16,\)",
    ):
        read_packed(packed_dir)


def test_nan_in_weights_named(packed_dir: Path) -> None:
    tensors, meta = _tensors_and_meta(packed_dir)
    tensors["blocks.0.attn1.to_v.weight_scale"][3] = float("nan")
    _rewrite(packed_dir, tensors, meta)
    with pytest.raises(
        CheckpointError, match=r"blocks\.0\.attn1\.to_v\.weight_scale holds NaN or inf"
    ):
        read_packed(packed_dir)


def test_bits_outside_range_in_metadata_rejected(packed_dir: Path) -> None:
    tensors, meta = _tensors_and_meta(packed_dir)
    meta["scheme"] = {**meta["scheme"], "weight_bits": 9}  # type: ignore[dict-item]
    _rewrite(packed_dir, tensors, meta)
    with pytest.raises(ValueError, match=r"scheme\.weight_bits must be an integer in \[2, 8\]"):
        read_packed(packed_dir)


def test_loader_lists_missing_and_unexpected_keys(packed_dir: Path) -> None:
    tensors, meta = _tensors_and_meta(packed_dir)
    tensors["proj_out.weight_extra"] = tensors.pop("proj_out.weight")
    _rewrite(packed_dir, tensors, meta)
    with pytest.raises(
        CheckpointError,
        match=r"missing keys \['proj_out\.weight'\], unexpected keys \['proj_out\.weight_extra'\]",
    ):
        load_packed_transformer(packed_dir)


def test_writer_rejects_group_count_disagreement(packed_dir: Path, tmp_path: Path) -> None:
    checkpoint = read_packed(packed_dir)
    wrong = replace(checkpoint, scheme=replace(checkpoint.scheme, clip_groups=9))
    with pytest.raises(CheckpointError, match="act_clip has 8 groups, scheme has 9"):
        write_packed(wrong, tmp_path / "wrong")
