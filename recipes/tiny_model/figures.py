"""Pictures and the table of the comparison: what README.md and BENCHMARKS.md show.

- ``grad_norms.png``: the gradient norm of every QAT run per step (``train_log.jsonl``), raw and
  smoothed by a moving average, log scale — the paper's argument that Φ keeps it small;
- ``side_by_side.png``: the picture clips (``compare.PICTURE_CLIPS``), first, middle and last
  frame of each (0, 8, 16 of 17), one column group per model;
- ``comparison.md``: the table, every scorer dimension and its ratio to FP, PSNR and SSIM.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from recipes.tiny_model.compare import FRAMES_FILE, RESULTS_FILE
from training.synthetic.scorer import SCORE_NAMES

logger = logging.getLogger(__name__)

GRAD_NORMS_PNG = "grad_norms.png"
SIDE_BY_SIDE_PNG = "side_by_side.png"
TABLE_MD = "comparison.md"
_SCALE = 2  # pixels per clip pixel in the picture
_GAP = 4


def _read_log(run: Path) -> tuple[np.ndarray, np.ndarray]:
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    if not records:
        raise ValueError(f"{run / 'train_log.jsonl'} is empty")
    return np.array([r["step"] for r in records]), np.array([r["grad_norm"] for r in records])


def plot_grad_norms(runs: dict[str, Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for name, run in runs.items():
        steps, norms = _read_log(run)
        window = max(1, len(norms) // 40)
        smooth = np.convolve(norms, np.ones(window) / window, mode="valid")
        (line,) = ax.plot(steps, norms, alpha=0.2, linewidth=0.8)
        ax.plot(steps[window - 1 :], smooth, color=line.get_color(), label=name, linewidth=1.6)
    ax.set_yscale("log")
    ax.set_xlabel("QAT step")
    ax.set_ylabel("gradient L2 norm (before clipping)")
    ax.set_title("qvgen-tiny QAT: gradient norm, LSQ vs QVGen")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def side_by_side(frames_file: Path, models: list[str], out: Path) -> None:
    data = np.load(frames_file)
    missing = [m for m in models if m not in data.files]
    if missing:
        raise KeyError(f"{frames_file} holds no clips of {missing}; it has {data.files}")
    clips = {m: data[m] for m in models}
    n, t, h, w, _ = clips[models[0]].shape
    shown = (0, t // 2, t - 1)
    tile_w, tile_h = w * _SCALE, h * _SCALE
    group_w = len(shown) * tile_w + _GAP
    label_h = 14
    canvas = Image.new("RGB", (len(models) * group_w, label_h + n * (tile_h + _GAP)), "white")
    draw = ImageDraw.Draw(canvas)
    for g, model in enumerate(models):
        draw.text((g * group_w + 2, 1), model, fill="black")
        for row in range(n):
            for k, frame in enumerate(shown):
                tile = Image.fromarray(clips[model][row, frame]).resize(
                    (tile_w, tile_h), Image.Resampling.NEAREST
                )
                canvas.paste(tile, (g * group_w + k * tile_w, label_h + row * (tile_h + _GAP)))
    canvas.save(out)


def comparison_table(results: dict[str, Any], reference: str = "fp") -> str:
    """Markdown: one row per model, the scorer's dimensions (× FP in brackets), PSNR, SSIM."""
    models = results["models"]
    fp = models[reference]["scores"]
    header = ["model", *SCORE_NAMES, "PSNR vs FP (dB)", "SSIM vs FP"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in models.items():
        cells = [name]
        for key in SCORE_NAMES:
            value = entry["scores"][key]
            ratio = value / fp[key] if fp[key] > 0 else float("nan")
            cells.append(f"{value:.3f}" if name == reference else f"{value:.3f} ({ratio:.2f}×)")
        if name == reference:
            cells += ["—", "—"]
        else:
            cells += [f"{entry['psnr']:.2f}", f"{entry['ssim']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_figures(comparison: Path, runs: dict[str, Path], shown: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((comparison / RESULTS_FILE).read_text())
    (out / TABLE_MD).write_text(comparison_table(results))
    side_by_side(comparison / FRAMES_FILE, shown, out / SIDE_BY_SIDE_PNG)
    if runs:
        plot_grad_norms(runs, out / GRAD_NORMS_PNG)
    logger.info("wrote figures and table to %s", out)
