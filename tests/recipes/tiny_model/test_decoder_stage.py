"""The decoder repair stage trains the decoder only, so the latents (and the transformer) stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan

from recipes.tiny_model.decoder_stage import DecoderFinetune, finetune_decoder


def test_only_the_decoder_changes(tiny_wan_dir: Path, tmp_path: Path) -> None:
    run = DecoderFinetune(steps=2, batch=1, clips=2, frames=9, side=64, lr=1e-2)
    finetune_decoder(tiny_wan_dir / "vae", tmp_path / "vae", run, torch.device("cpu"))
    before = AutoencoderKLWan.from_pretrained(tiny_wan_dir / "vae").state_dict()
    after = AutoencoderKLWan.from_pretrained(tmp_path / "vae").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "the decoder did not train"
    assert all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed), sorted(changed)[:5]


def test_bad_settings_name_the_flag() -> None:
    with pytest.raises(ValueError, match="--steps must be ≥ 1, got 0"):
        DecoderFinetune(steps=0)
