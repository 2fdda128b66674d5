"""``qvgen train`` through the fused fake-quant kernels (the GPU path, here in Triton's CPU
interpreter) against the eager path: the same run, the same first step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qvgen.triton_support import interpreting, triton_installed
from tests.training.trainer.runs import read_log, tiny_config
from training.quant.kernels import autograd
from training.quant.kernels.dispatch import FakeQuantBackend, fake_quant_backend
from training.trainer.train import train

pytestmark = pytest.mark.skipif(
    not (triton_installed() and interpreting()), reason="needs Triton with TRITON_INTERPRET=1"
)
STEPS = 3


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_fused_and_eager_training_agree(
    family: str,
    monkeypatch: pytest.MonkeyPatch,
    tiny_wan_dir: Path,
    tiny_cogvideox_dir: Path,
    video_folder: Path,
    cache_root: Path,
    tmp_path: Path,
) -> None:
    model = tiny_wan_dir if family == "wan" else tiny_cogvideox_dir
    launches = {"tokens": 0, "weights": 0}

    def counted(name: str, kernel: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            launches[name] += 1
            return kernel(*args, **kwargs)

        return run

    monkeypatch.setattr(
        autograd, "fake_quant_tokens_forward", counted("tokens", autograd.fake_quant_tokens_forward)
    )
    monkeypatch.setattr(
        autograd,
        "fake_quant_weight_forward",
        counted("weights", autograd.fake_quant_weight_forward),
    )
    logs = {}
    for backend in (FakeQuantBackend.EAGER, FakeQuantBackend.TRITON):
        out = tmp_path / backend.value
        config = tiny_config(model, out, video_folder, cache_root, steps=STEPS, phase_steps=1)
        with fake_quant_backend(backend):
            train(config, device="cpu")
        logs[backend] = read_log(out)
        if backend is FakeQuantBackend.EAGER:
            assert launches == {"tokens": 0, "weights": 0}
    assert launches["tokens"] > 0 and launches["weights"] > 0  # the fused run used the kernels
    eager, fused = logs[FakeQuantBackend.EAGER], logs[FakeQuantBackend.TRITON]
    assert [r["phi_rank"] for r in fused] == [r["phi_rank"] for r in eager]
    # Step 0 runs the same forward values (bit for bit) and gradients to float32 rounding; the
    # later steps start from weights that differ in the last bits.
    assert fused[0]["loss"] == eager[0]["loss"]
    assert fused[0]["grad_norm"] == pytest.approx(eager[0]["grad_norm"], rel=1e-4)
    for mine, theirs in zip(fused[1:], eager[1:], strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-2)
