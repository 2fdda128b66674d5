"""``qvgen eval``: generate with a full-precision and a quantized pipeline, compare the videos.

For every (prompt, seed) both pipelines generate with the same request through the service's
engine (``service.engine.DiffusersEngine``, the code that serves them), so the comparison is of
what users would get. Reported per video and as means: PSNR and SSIM of the quantized video
against the full-precision one (``metrics``), and, if a task scorer is given, its scores of both
pipelines' videos (e.g. the synthetic task's ``training.synthetic.scorer:score_clips``).

A task scorer is any function ``score(clips: list[(frames uint8 [T, H, W, 3], prompt)]) ->
dict[str, float]``, named ``module:function``; ``synthetic`` is short for the synthetic task's.
"""

from __future__ import annotations

import importlib
import json
import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from evaluation.metrics import psnr, ssim
from evaluation.settings import EvalSettings
from service.engine.diffusers_engine import DiffusersEngine
from service.engine.types import GenerationRequest

logger = logging.getLogger(__name__)

TaskScorer = Callable[[list[tuple[np.ndarray, str]]], dict[str, float]]
NAMED_SCORERS = {"synthetic": "training.synthetic.scorer:score_clips"}


def load_scorer(spec: str) -> TaskScorer:
    """``synthetic`` or ``module:function``."""
    target = NAMED_SCORERS.get(spec, spec)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"--scorer must be one of {sorted(NAMED_SCORERS)} or 'module:function', got {spec!r}"
        )
    scorer = getattr(importlib.import_module(module_name), attr, None)
    if not callable(scorer):
        raise ValueError(f"--scorer {spec!r}: {target} is not a function")
    return scorer


@dataclass
class EvalReport:
    reference: str
    quantized: str
    settings: EvalSettings
    videos: list[dict[str, Any]] = field(default_factory=list)
    mean: dict[str, float] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        rows = ["| prompt | seed | PSNR dB | SSIM |", "|---|---|---|---|"]
        rows += [
            f"| {v['prompt']} | {v['seed']} | {v['psnr_db']:.2f} | {v['ssim']:.4f} |"
            for v in self.videos
        ]
        rows.append(f"| **mean** | | {self.mean['psnr_db']:.2f} | {self.mean['ssim']:.4f} |")
        if self.scores:
            rows += ["", "| task score | full precision | quantized |", "|---|---|---|"]
            fp, q = self.scores["full_precision"], self.scores["quantized"]
            rows += [f"| {name} | {fp[name]:.4f} | {q[name]:.4f} |" for name in fp]
        return "\n".join(rows)


def _generate_all(
    model_dir: str, requests: Sequence[GenerationRequest], device: str, label: str
) -> list[np.ndarray]:
    engine = DiffusersEngine.from_pretrained(model_dir, device=device)
    videos = [
        engine.generate(r).frames
        for r in tqdm(requests, desc=f"generating ({label})", unit="video")
    ]
    del engine
    return videos


def evaluate(
    reference: str,
    quantized: str,
    prompts: Sequence[str],
    seeds: Sequence[int],
    settings: EvalSettings,
    device: str = "cpu",
    scorer: TaskScorer | None = None,
) -> EvalReport:
    if not prompts or not seeds:
        raise ValueError(f"need ≥ 1 prompt and ≥ 1 seed, got {len(prompts)} and {len(seeds)}")
    requests = [
        GenerationRequest(prompt=p, seed=s, **settings.request_fields())
        for p in prompts
        for s in seeds
    ]
    fp_videos = _generate_all(reference, requests, device, "full precision")
    q_videos = _generate_all(quantized, requests, device, "quantized")
    report = EvalReport(reference, quantized, settings)
    for request, fp, q in zip(requests, fp_videos, q_videos, strict=True):
        report.videos.append(
            {
                "prompt": request.prompt,
                "seed": request.seed,
                "psnr_db": psnr(fp, q),
                "ssim": ssim(fp, q),
            }
        )
    report.mean = {
        key: statistics.fmean(v[key] for v in report.videos) for key in ("psnr_db", "ssim")
    }
    if scorer is not None:
        prompts_of = [r.prompt for r in requests]
        report.scores = {
            "full_precision": scorer(list(zip(fp_videos, prompts_of, strict=True))),
            "quantized": scorer(list(zip(q_videos, prompts_of, strict=True))),
        }
    return report


def write_report(report: EvalReport, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return out
