"""The qvgen-tiny recipe at toy scale: both stages run, log, and save a loadable pipeline."""

from __future__ import annotations

import itertools
import json
import time
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import WanPipeline
from safetensors import safe_open

from recipes.tiny_model import flow_stage, vae_stage
from recipes.tiny_model.config import RecipeConfig, SpecName
from recipes.tiny_model.flow_stage import noised
from recipes.tiny_model.progress import LOG_FILE, StepBudget, warmup_cosine
from recipes.tiny_model.recipe import PIPELINE_DIR, train_base
from recipes.tiny_model.spec import tiny_spec, toy_spec
from recipes.tiny_model.vae_stage import pixel_weights
from training.synthetic.vocabulary import all_prompts

TOY = RecipeConfig(
    spec=SpecName.TOY,
    clips=6,
    frames=9,
    vae_steps=2,
    vae_batch=1,
    vae_frames=5,
    flow_steps=3,
    flow_batch=2,
    warmup_steps=1,
)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("recipe")
    train_base(TOY, out, torch.device("cpu"))
    return out


def test_recipe_writes_a_loadable_pipeline_and_logs_both_stages(toy_run: Path) -> None:
    records = [json.loads(line) for line in (toy_run / LOG_FILE).read_text().splitlines()]
    stages = [r["stage"] for r in records]
    assert stages == ["vae"] * TOY.vae_steps + ["transformer"] * TOY.flow_steps
    assert all(r["grad_norm"] >= 0 and r["loss"] > 0 for r in records)
    saved = json.loads((toy_run / "recipe.json").read_text())
    assert saved["flow_steps"] == TOY.flow_steps and saved["spec"] == "toy"
    pipeline = WanPipeline.from_pretrained(toy_run / PIPELINE_DIR)
    for component in ("transformer", "vae", "text_encoder"):
        for path in (toy_run / PIPELINE_DIR / component).glob("*.safetensors"):
            with safe_open(str(path), "pt") as f:  # shipped precision: bfloat16 on disk
                assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # noqa: SIM118
    vae_config = pipeline.vae.config
    assert len(vae_config.latents_std) == vae_config.z_dim and min(vae_config.latents_std) > 0
    ids = pipeline.tokenizer(all_prompts()[0].text).input_ids
    assert pipeline.tokenizer.unk_token_id not in ids  # the task's words are the vocabulary


def test_recipe_refuses_an_existing_run(toy_run: Path) -> None:
    with pytest.raises(ValueError, match="exists"):
        train_base(TOY, toy_run, torch.device("cpu"))


def test_every_task_prompt_tokenizes_without_unknown_words() -> None:
    for spec in (tiny_spec(), toy_spec()):
        words = set(spec.text_encoder.words)
        for prompt in all_prompts():
            assert set(prompt.text.split()) <= words, prompt.text


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [("frames", 16, "--frames"), ("vae_frames", 13, "--vae-frames"), ("side", 40, "--side"),
     ("flow_lr", 0.0, "--flow-lr"), ("clips", 0, "--clips")],
)  # fmt: skip
def test_config_errors_name_the_flag(field: str, value: float, flag: str) -> None:
    values = TOY.to_dict() | {field: value, "spec": SpecName.TOY}
    with pytest.raises(ValueError, match=flag):
        RecipeConfig(**values)


def test_step_budget_cuts_once_after_the_probe() -> None:
    budget = StepBudget(steps=1000, seconds=10.0, probe=4)
    assert not budget.observe(0, 0.0)
    times = {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 5.0}  # 1 s per step → 10 steps fit
    cuts = [budget.observe(step, now) for step, now in times.items()]
    assert cuts == [False, False, False, False, True] and budget.total == 10
    generous = StepBudget(steps=8, seconds=1e6, probe=2)
    assert not any(generous.observe(s, float(s)) for s in range(5)) and generous.total == 8


def test_step_budget_scales_the_probe_by_its_cost_and_expires_at_its_seconds() -> None:
    budget = StepBudget(steps=1000, seconds=10.0, probe=2, probe_cost=2.0)
    cuts = [budget.observe(step, float(step)) for step in range(4)]  # 1 s per probed step
    assert cuts == [False, False, False, True] and budget.total == 5  # 10 s / (2 × 1 s)
    assert not budget.expired(9.99) and budget.expired(10.0)
    assert budget.elapsed(4.0) == pytest.approx(4.0)
    assert not StepBudget(steps=5, seconds=1.0).expired(1e9)  # no step began: no clock yet


def test_stages_stop_at_their_deadline_and_the_pipeline_is_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clock that advances 1 s per step: the probe (20 steps) never ends, so only the
    # deadline can stop a stage that asks for 1000 steps.
    for module in (vae_stage, flow_stage):
        clock = map(float, itertools.count())
        fake = types.SimpleNamespace(monotonic=clock.__next__, perf_counter=time.perf_counter)
        monkeypatch.setattr(module, "time", fake)
    config = replace(TOY, vae_steps=1000, vae_seconds=5.0, flow_steps=1000, flow_seconds=3.0)
    train_base(config, tmp_path, torch.device("cpu"))
    records = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    vae = [r["frames"] for r in records if r["stage"] == "vae" and "step" in r]
    flow = [r for r in records if r["stage"] == "transformer" and "step" in r]
    stops = [(r["stage"], r["stopped_at_deadline"]) for r in records if "stopped_at_deadline" in r]
    assert len(vae) == 5 and len(flow) == 3
    assert stops == [("vae", 5), ("transformer", 3)]
    # the whole-clip phase came by the clock (1000 steps never reach its step threshold): its
    # planned share of 5 s is 0.3 × 9/5 / (1 + 0.3 × 4/5) = 44 %, so from 2.8 s on, steps 3 and 4
    assert vae == [TOY.vae_frames] * 3 + [TOY.frames] * 2
    assert (tmp_path / PIPELINE_DIR / "model_index.json").is_file()


def test_warmup_cosine_rises_then_decays_to_a_tenth() -> None:
    factors = [warmup_cosine(s, 100, 10) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))


def test_noising_interpolates_between_data_and_noise() -> None:
    x0 = torch.randn(64, 2, 2, 4, 4)
    x_t, t, velocity = noised(x0, 3.0, torch.Generator().manual_seed(0))
    sigma = (t / 1000).view(-1, 1, 1, 1, 1)
    eps = velocity + x0
    torch.testing.assert_close(x_t, (1 - sigma) * x0 + sigma * eps)
    # shift 3 moves the median noise level from 0.5 to 0.75
    assert 0.6 < float(sigma.median()) < 0.9


def test_pixel_weights_mark_the_object_only() -> None:
    x = -torch.ones(1, 3, 1, 8, 8)  # black background
    x[:, 0, :, 2:4, 2:4] = 1.0  # a red 2×2 object
    w = pixel_weights(x, 5.0)
    assert float(w.sum()) == pytest.approx(4 * 5.0 + 60 * 1.0)
