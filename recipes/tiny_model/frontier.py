"""Quality against transformer passes for the pass-saving policies, on qvgen-tiny.

``qvgen tiny frontier --model NAME=DIR --out DIR`` generates the comparison's evaluation pairs
(``compare.evaluation_set``: prompt i with seed 10 000 + i, 17×64×64, 20 steps, guidance 5) one
request at a time through the service's engine — as a worker serves them, so every skip decision
is one clip's own — once per ``Setting``: the plain run, then each policy at several thresholds,
the early guidance stop, and combinations. Per setting it keeps the passes run per clip, the
wall time per clip, the synthetic scorer's dimensions and the PSNR to the plain run's clip, all
per pair, so that ``qvgen tiny frontier-table`` can give every setting's difference from the plain
run paired over the same clips (``error_bars.PairedDifference``).

MagCache needs the model's ratios for 20 steps (``cache_calibration.json``: the shipped tiny
models carry them, measured with ``qvgen calibrate-cache`` on training-vocabulary prompts and
seeds 0–7, never an evaluation pair).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.metrics import psnr
from recipes.tiny_model.compare import TINY_EVAL, evaluation_set
from recipes.tiny_model.error_bars import PairedDifference
from service.engine.types import CachePolicy, GenerationRequest
from training.synthetic.scorer import SCORE_NAMES, score_clip

logger = logging.getLogger(__name__)

RESULTS_FILE = "frontier.json"
# The dimensions the table reports, with PSNR to the plain run's clip.
REPORTED = ("prompt_accuracy", "shape", "temporal_consistency")


@dataclass(frozen=True)
class Setting:
    """One way to run the evaluation set; ``name`` labels it in the table."""

    name: str
    cache: CachePolicy = CachePolicy.NONE
    threshold: float | None = None
    guidance_stop: float = 1.0

    def request(self, prompt: str, seed: int) -> GenerationRequest:
        return GenerationRequest(
            prompt=prompt,
            negative_prompt="",
            seed=seed,
            cache=self.cache,
            cache_threshold=self.threshold,
            guidance_stop=self.guidance_stop,
            **TINY_EVAL.request_fields(),
        )


PLAIN = Setting("none")
SETTINGS: tuple[Setting, ...] = (
    PLAIN,
    *(Setting(f"first-block {t}", CachePolicy.FIRST_BLOCK, t) for t in (0.1, 0.2, 0.3)),
    *(
        Setting(f"first-block-pooled {t}", CachePolicy.FIRST_BLOCK_POOLED, t)
        for t in (0.1, 0.2, 0.3)
    ),
    *(Setting(f"magcache {t}", CachePolicy.MAGCACHE, t) for t in (0.1, 0.25, 0.5)),
    Setting("guidance_stop 0.5", guidance_stop=0.5),
    Setting("first-block-pooled 0.2 + guidance_stop 0.5", CachePolicy.FIRST_BLOCK_POOLED, 0.2, 0.5),
    Setting("magcache 0.25 + guidance_stop 0.5", CachePolicy.MAGCACHE, 0.25, 0.5),
    Setting("magcache 0.1 + guidance_stop 0.5", CachePolicy.MAGCACHE, 0.1, 0.5),
)


def run_settings(
    model_dir: Path, settings: tuple[Setting, ...], count: int, device: str
) -> dict[str, Any]:
    """Every setting's per-pair values on the first ``count`` evaluation pairs."""
    from service.engine.diffusers_engine import DiffusersEngine

    if settings[0] != PLAIN:
        raise ValueError("the first setting must be the plain run: the others are paired with it")
    engine = DiffusersEngine.from_pretrained(model_dir, device=device)
    pairs = evaluation_set(count)
    plain_clips: list[np.ndarray] = []
    results: dict[str, Any] = {}
    for setting in settings:
        passes, seconds, scores, psnrs = [], [], [], []
        for index, (prompt, seed) in enumerate(pairs):
            started = time.perf_counter()
            video = engine.generate(setting.request(prompt, seed))
            seconds.append(time.perf_counter() - started)
            passes.append(video.stats.transformer_passes)
            scores.append(astuple(score_clip(video.frames, prompt)))
            if setting == PLAIN:
                plain_clips.append(video.frames)
            psnrs.append(psnr(plain_clips[index], video.frames))
        table = np.asarray(scores, dtype=np.float64)
        results[setting.name] = {
            "setting": {**asdict(setting), "cache": setting.cache.value},
            "passes": passes,
            "seconds": [round(s, 4) for s in seconds],
            "scores": {k: table[:, i].round(6).tolist() for i, k in enumerate(SCORE_NAMES)},
            "psnr_to_plain": [round(p, 4) for p in psnrs],
        }
        logger.info(
            "%s %s: %.1f passes, %.3f s a clip, prompt accuracy %.3f, shape %.3f",
            model_dir.name,
            setting.name,
            np.mean(passes),
            np.mean(seconds),
            table[:, SCORE_NAMES.index("prompt_accuracy")].mean(),
            table[:, SCORE_NAMES.index("shape")].mean(),
        )
    return {
        "model": str(model_dir),
        "count": count,
        "device": device,
        "request": TINY_EVAL.request_fields(),
        "settings": results,
    }


def write_run(out: Path, run: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    path.write_text(json.dumps(run, indent=1) + "\n")
    return path


@dataclass(frozen=True)
class FrontierRow:
    """One setting against the plain run of its model: means and paired differences."""

    setting: str
    passes: float
    seconds: float
    means: dict[str, float]
    differences: dict[str, PairedDifference]
    psnr: float
    psnr_stderr: float


def frontier_rows(run: dict[str, Any]) -> list[FrontierRow]:
    plain = run["settings"][PLAIN.name]
    rows = []
    for name, entry in run["settings"].items():
        means = {k: float(np.mean(entry["scores"][k])) for k in REPORTED}
        differences = {
            k: PairedDifference.of(entry["scores"][k], plain["scores"][k]) for k in REPORTED
        }
        psnrs = np.asarray(entry["psnr_to_plain"], dtype=np.float64)
        rows.append(
            FrontierRow(
                setting=name,
                passes=float(np.mean(entry["passes"])),
                seconds=float(np.mean(entry["seconds"])),
                means=means,
                differences=differences,
                psnr=float(psnrs.mean()) if name != PLAIN.name else float("inf"),
                psnr_stderr=float(psnrs.std(ddof=1) / np.sqrt(len(psnrs)))
                if name != PLAIN.name
                else 0.0,
            )
        )
    return rows


def _difference(d: PairedDifference) -> str:
    return f"{d.mean:+.3f} ± {d.stderr:.3f}"


def frontier_table(runs: dict[str, dict[str, Any]]) -> str:
    """Markdown: per model and setting, passes per clip, seconds per clip, each reported
    dimension's mean and paired difference (± SE) from the model's plain run, PSNR to it."""
    lines = [
        "| model | setting | passes / clip | s / clip | prompt accuracy (Δ ± SE) | shape (Δ ± SE) "
        "| temporal consistency (Δ ± SE) | PSNR to plain, dB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, run in runs.items():
        for row in frontier_rows(run):
            cells = [
                f"{row.means[k]:.3f} ({_difference(row.differences[k])})"
                if row.setting != PLAIN.name
                else f"{row.means[k]:.3f}"
                for k in REPORTED
            ]
            psnr_cell = (
                "–" if row.setting == PLAIN.name else f"{row.psnr:.2f} ± {row.psnr_stderr:.2f}"
            )
            lines.append(
                f"| {model} | {row.setting} | {row.passes:.1f} | {row.seconds:.3f} | "
                + " | ".join(cells)
                + f" | {psnr_cell} |"
            )
    return "\n".join(lines)
