"""The paper's comparison at small scale: generate a fixed evaluation set with every model and
score it — the synthetic task's scorer on each clip, PSNR and SSIM against the FP model's clip.

Evaluation set: every one of the task's 270 prompts (``all_prompts()``) once, prompt i with
generation seed ``EVAL_SEED_BASE + i``. Training saw rendered clips and its own noise draws,
never these (prompt, seed) pairs: a generation from seed s starts from the noise of
``torch.Generator(device).manual_seed(s)``, as ``qvgen generate --seed s`` does.

PSNR and SSIM are ``qvgen eval``'s (``evaluation.metrics``: PSNR over the clip, SSIM
on luma). Generation differs from ``qvgen eval`` only in being batched — ``qvgen eval`` runs one
engine request at a time and regenerates FP per quantized model, 2 × 6 × 270 generations where
this needs 7 batched passes, which is what fits a GPU lent by the minute. ``WanPipeline``
draws each sample's initial noise from that sample's own generator, so clip i is the clip a
single request with seed s_i gives (up to the batch's floating-point reduction order). Defaults are the service's: 17×64×64, 20 steps, guidance 5,
negative prompt "".

A model can run its self-attention on the 8-bit kernel (``AttentionKernel.INT8``,
``service.kernels.wan_attention``), as a worker with ``QVGEN_ATTENTION_KERNEL=int8`` serves it:
the same directory under two names, one per kernel, measures what the kernel costs. Where the
kernel cannot run (no Triton device, a head dim it does not take) the comparison is refused
rather than scoring SDPA under the kernel's name.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import astuple
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from evaluation.metrics import psnr, ssim
from evaluation.settings import EvalSettings
from qvgen.triton_support import triton_unavailable_reason
from recipes.tiny_model.error_bars import binomial_stderr, mean_stderr
from service.engine.environment import resolve_target
from service.engine.loading import load_pipeline
from service.engine.types import AttentionKernel
from training.synthetic.scorer import SCORE_NAMES, score_clip
from training.synthetic.vocabulary import all_prompts

logger = logging.getLogger(__name__)

EVAL_SEED_BASE = 10_000
RESULTS_FILE = "comparison.json"
FRAMES_FILE = "frames.npz"
# Clips kept for pictures: one per motion and shape, on all three backgrounds.
PICTURE_CLIPS = (0, 61, 122, 183, 244)


# The comparison's clips: 17 frames of 64×64, 20 steps, guidance 5, as the default model serves.
TINY_EVAL = EvalSettings(
    width=64, height=64, num_frames=17, num_inference_steps=20, guidance_scale=5.0
)
DEFAULT_COUNT = 270
DEFAULT_BATCH = 54


def evaluation_set(count: int) -> list[tuple[str, int]]:
    """(prompt, seed) pairs: the first ``count`` prompts in enum order, seeds from the base."""
    if not 1 <= count <= len(all_prompts()):
        raise ValueError(f"--count must lie in [1, {len(all_prompts())}], got {count}")
    return [(p.text, EVAL_SEED_BASE + i) for i, p in enumerate(all_prompts()[:count])]


def int8_attention_refusal(model_dir: Path, device: str) -> str | None:
    """Why the 8-bit kernel cannot run the transformer of ``model_dir`` on ``device`` (the CPU
    runs pipelines in fp32, which the kernel does not take); None if it can."""
    reason = triton_unavailable_reason(torch.device(device))
    if reason is not None:
        return reason
    # Imported here: the kernel module needs Triton, which the check above found.
    from service.kernels.attention_int8 import input_refusal

    config = json.loads((model_dir / "transformer" / "config.json").read_text())
    head_dim = int(config["attention_head_dim"])
    dtype = resolve_target(device).dtype
    # The kernel's own check, on a query of this model's head dim and dtype (no data).
    reason = input_refusal(torch.empty((1, 1, 1, head_dim), dtype=dtype, device="meta"))
    if reason is None:
        return None
    return f"{reason}; the pipeline runs in {dtype} on {device}, head dim {head_dim}"


@torch.no_grad()
def generate_set(
    model_dir: Path,
    settings: EvalSettings,
    count: int,
    batch: int,
    device: str,
    attention: AttentionKernel = AttentionKernel.SDPA,
) -> tuple[np.ndarray, float]:
    """uint8 [N, T, H, W, 3] clips of the first ``count`` evaluation pairs, ``batch`` clips per
    pipeline call, and the seconds generation took; ``attention`` runs the self-attention."""
    if batch < 1:
        raise ValueError(f"--batch must be ≥ 1, got {batch}")
    pipeline = load_pipeline(model_dir, device)
    if attention is AttentionKernel.INT8:
        # Imported here: the kernel module needs Triton (compare checked it is there).
        from service.kernels.wan_attention import use_int8_self_attention

        blocks = use_int8_self_attention(pipeline.transformer)
        logger.info("%s: self-attention of %d blocks on the 8-bit kernel", model_dir, blocks)
    pairs = evaluation_set(count)
    length = int(pipeline.tokenizer.model_max_length)
    clips = []
    started = time.perf_counter()
    for start in tqdm(range(0, len(pairs), batch), desc=model_dir.name, unit="batch"):
        chunk = pairs[start : start + batch]
        positive, negative = pipeline.encode_prompt(
            prompt=[p for p, _ in chunk],
            negative_prompt=[""] * len(chunk),
            do_classifier_free_guidance=settings.guidance_scale > 1.0,
            max_sequence_length=length,
            device=pipeline.device,
            dtype=pipeline.transformer.dtype,
        )
        generators = [torch.Generator(pipeline.device).manual_seed(s) for _, s in chunk]
        frames = pipeline(
            prompt_embeds=positive,
            negative_prompt_embeds=negative,
            height=settings.height,
            width=settings.width,
            num_frames=settings.num_frames,
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            generator=generators,
            output_type="np",
        ).frames
        clips.append(np.clip(np.rint(np.asarray(frames) * 255.0), 0, 255).astype(np.uint8))
    return np.concatenate(clips), time.perf_counter() - started


def _score_one(args: tuple[np.ndarray, str]) -> tuple[float, ...]:
    return astuple(score_clip(*args))


def score_sets(
    sets: dict[str, np.ndarray], prompts: list[str], workers: int
) -> dict[str, np.ndarray]:
    """Per set, every clip's scores: float64 [N, len(SCORE_NAMES)], columns in ``SCORE_NAMES``.

    All sets go through one process pool: the scorer is pure numpy, one clip a task.
    """
    jobs = [
        (clip, prompt)
        for clips in sets.values()
        for clip, prompt in zip(clips, prompts, strict=True)
    ]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(_score_one, jobs, chunksize=16))
    else:
        rows = [_score_one(job) for job in jobs]
    table = np.asarray(rows, dtype=np.float64).reshape(len(sets), len(prompts), len(SCORE_NAMES))
    return {name: table[i] for i, name in enumerate(sets)}


def model_entry(
    scores: np.ndarray, psnrs: np.ndarray, ssims: np.ndarray, seconds: float
) -> dict[str, Any]:
    """One model's ``comparison.json`` entry from its per-pair values (n pairs, n ≥ 2).

    ``scores``, ``psnr``, ``ssim``: means over the pairs; ``stderr``: the standard error of one
    run (``error_bars``: binomial for the scorer's dimensions, of the mean for PSNR/SSIM);
    ``per_pair``: the values themselves, for error bars computed later.
    """
    n = len(scores)
    means = {key: float(v) for key, v in zip(SCORE_NAMES, scores.mean(axis=0), strict=True)}
    stderr = {key: binomial_stderr(min(max(v, 0.0), 1.0), n) for key, v in means.items()}
    stderr["psnr"] = mean_stderr(psnrs.tolist())
    stderr["ssim"] = mean_stderr(ssims.tolist())
    per_pair = {key: scores[:, i].round(6).tolist() for i, key in enumerate(SCORE_NAMES)}
    per_pair |= {"psnr": psnrs.round(4).tolist(), "ssim": ssims.round(6).tolist()}
    return {
        "scores": means,
        "psnr": float(psnrs.mean()),
        "ssim": float(ssims.mean()),
        "stderr": stderr,
        "generation_seconds": seconds,
        "per_pair": per_pair,
    }


def compare(
    models: dict[str, Path],
    reference: str,
    out: Path,
    settings: EvalSettings,
    device: str,
    workers: int,
    count: int = DEFAULT_COUNT,
    batch: int = DEFAULT_BATCH,
    attention: dict[str, AttentionKernel] | None = None,
) -> dict[str, Any]:
    """Generate the first ``count`` evaluation pairs with every model and score them;
    ``reference`` names the FP model of ``models``; ``attention`` the self-attention kernel of
    a model by name (default SDPA).

    Writes ``comparison.json`` (settings, device, per model: ``model_entry``; runs of one method
    named ``<method>-seed<k>`` are grouped by ``figures``) and
    ``frames.npz`` (the ``PICTURE_CLIPS`` of every model) to ``out``.
    """
    if count < 2:
        raise ValueError(f"--count must be ≥ 2 for a standard error over pairs, got {count}")
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the models {sorted(models)}")
    attention = attention or {}
    unknown = sorted(set(attention) - set(models))
    if unknown:
        raise ValueError(f"--int8-attention names no model: {unknown} (models: {sorted(models)})")
    # Before any generation: a refusal after an hour of other models would waste the hour.
    for name, kernel in attention.items():
        reason = (
            int8_attention_refusal(models[name], device) if kernel is AttentionKernel.INT8 else None
        )
        if reason is not None:
            raise ValueError(f"--int8-attention {name}: the 8-bit kernel cannot run: {reason}")
    out.mkdir(parents=True, exist_ok=True)
    prompts = [p for p, _ in evaluation_set(count)]
    generated = {
        name: generate_set(
            path, settings, count, batch, device, attention.get(name, AttentionKernel.SDPA)
        )
        for name, path in models.items()
    }
    fp_clips = generated[reference][0]
    results: dict[str, Any] = {
        "settings": {**settings.request_fields(), "count": count, "batch": batch},
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "eval_seed_base": EVAL_SEED_BASE,
        "models": {},
    }
    scores = score_sets({name: clips for name, (clips, _) in generated.items()}, prompts, workers)
    for name, (clips, seconds) in generated.items():
        pairs = list(zip(fp_clips, clips, strict=True))
        psnrs = np.asarray([psnr(r, c) for r, c in pairs], dtype=np.float64)
        ssims = np.asarray([ssim(r, c) for r, c in pairs], dtype=np.float64)
        entry = model_entry(scores[name], psnrs, ssims, seconds)
        entry["attention"] = attention.get(name, AttentionKernel.SDPA).value
        results["models"][name] = entry
        logger.info("%s: %s", name, json.dumps({k: v for k, v in entry.items() if k != "per_pair"}))
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    keep = [i for i in PICTURE_CLIPS if i < count]
    arrays: dict[str, Any] = {name: clips[keep] for name, (clips, _) in generated.items()}
    arrays["prompts"] = np.asarray([prompts[i] for i in keep])
    np.savez_compressed(out / FRAMES_FILE, **arrays)
    return results
