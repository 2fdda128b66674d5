"""End-to-end QAT on tiny real pipelines: loss, rank decay, checkpoints, export parity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from qvgen.checkpoint import PACKED_FILE
from service.kernels.packed_transformer import load_packed_transformer
from tests.training.trainer.runs import read_log, tiny_config
from training.export_pipeline import export_pipeline
from training.quant.rank_decay import quant_linears
from training.trainer import distributed as D
from training.trainer.config import Method, TrainConfig
from training.trainer.denoiser import run_transformer
from training.trainer.loop import prepare, train_step
from training.trainer.models import freeze, load_transformer
from training.trainer.state import STUDENT_FILE, latest_checkpoint, rebuild_student
from training.trainer.train import train

REL_TOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


def test_loss_falls_on_a_fixed_batch(
    tiny_wan_dir: Path, video_folder: Path, cache_root: Path, tmp_path: Path
) -> None:
    config = tiny_config(
        tiny_wan_dir, tmp_path / "run", video_folder, cache_root,
        method=Method.LSQ, rank=0, phase_steps=None, steps=100, warmup=0.0,
        caption_dropout=0.0, lr=3e-4, w_bits=3, a_bits=3,
    )  # fmt: skip
    config.save(tmp_path)
    run, _ = prepare(config, D.init_distributed("cpu"), resume=False)
    # Step 0's clips, noise and timestep every time: a fixed batch.
    losses = [train_step(run, 0)["loss"] for _ in range(25)]
    assert losses[0] > 0
    # Straight-through QAT is noisy step to step: compare the mean of the last five.
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0], losses


@pytest.mark.parametrize("pipeline", ["tiny_wan_dir", "tiny_cogvideox_dir"])
def test_rank_reaches_zero_at_the_planned_step_and_export_matches_student(
    pipeline: str, request: pytest.FixtureRequest, video_folder: Path, cache_root: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    model_dir: Path = request.getfixturevalue(pipeline)
    config = tiny_config(model_dir, tmp_path / "run", video_folder, cache_root, steps=8)
    assert config.schedule().phi_free_step == 6
    train(config, device="cpu")

    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(8))
    assert [r["phi_rank"] for r in log] == [4, 4, 2, 2, 1, 1, 0, 0]
    assert all(r["grad_norm"] > 0 and r["lr"] > 0 for r in log)

    checkpoint = latest_checkpoint(tmp_path / "run")
    assert checkpoint is not None and checkpoint.name == "step-00000008"
    with safe_open(str(checkpoint / STUDENT_FILE), "pt") as f:
        assert not [k for k in f.keys() if ".phi." in k]  # noqa: SIM118 (safe_open is not iterable)

    out = export_pipeline(tmp_path / "run", tmp_path / "exported")
    for component in ("model_index.json", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (out / component).exists(), component
    with safe_open(str(out / "transformer" / PACKED_FILE), "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "phi" in k]

    teacher = freeze(load_transformer(model_dir))
    student = rebuild_student(teacher, config, checkpoint, 8).eval()
    packed = load_packed_transformer(out / "transformer")
    run, _ = prepare(config, D.init_distributed("cpu"), resume=True)
    for step in (0, 5):  # two timesteps, so two clip groups
        batch = _step_batch(run, step)
        with torch.no_grad():
            fake = run_transformer(run.family, student, batch)
            real = run_transformer(run.family, packed, batch)
        assert _rel(real, fake) <= REL_TOL, (step, _rel(real, fake))
    assert len(quant_linears(student)) > 0


def _step_batch(run, step: int):  # type: ignore[no-untyped-def]
    from qvgen.family import ModelFamily
    from training.trainer.denoiser import cogvideox_rotary

    samples = [run.cache.load(i) for i in run.order.clip_indices(step, 0)]
    batch = run.noiser.noisy_batch(samples, run.order.generators(step, 0), run.cache.empty_text)
    if run.family is ModelFamily.COGVIDEOX:
        _, frames, _, h, w = batch.hidden_states.shape
        batch.rotary = cogvideox_rotary(run.student, frames, h, w)
    return batch


def test_config_is_saved_resume_refuses_changed_flags_and_early_export_is_refused(
    tiny_wan_dir: Path, video_folder: Path, cache_root: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_wan_dir, tmp_path / "run", video_folder, cache_root, steps=6)
    train(config, device="cpu")
    assert TrainConfig.load(tmp_path / "run") == config
    with pytest.raises(ValueError, match="already holds a run"):
        train(config, device="cpu")
    changed = tiny_config(
        tiny_wan_dir, tmp_path / "run", video_folder, cache_root, steps=6, lr=1e-4
    )
    with pytest.raises(ValueError, match=r"lr: 0\.001 != 0\.0001"):
        train(changed, resume=True, device="cpu")
    early = tmp_path / "run" / "checkpoints" / "step-00000004"
    assert early.is_dir()
    with pytest.raises(
        ValueError, match=r"Φ still has rank 1 after 4 steps; it is gone from step 6"
    ):
        export_pipeline(early, tmp_path / "exported")


def test_rtn_writes_an_exportable_checkpoint_without_training(
    tiny_wan_dir: Path, tmp_path: Path
) -> None:
    config = TrainConfig(
        model=str(tiny_wan_dir), out=str(tmp_path / "run"), method=Method.RTN, rank=0
    )
    train(config, device="cpu")
    assert not (tmp_path / "run" / "train_log.jsonl").exists()
    out = export_pipeline(tmp_path / "run", tmp_path / "exported")
    assert (out / "transformer" / PACKED_FILE).is_file()
