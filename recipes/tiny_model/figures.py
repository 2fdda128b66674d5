"""Pictures and the tables of the comparison: what README.md and BENCHMARKS.md show.

- ``grad_norms.png``: the gradient norm per step (``train_log.jsonl``) of every QAT method, the
  mean over its seeds (runs named ``<method>-seed<k>``, ``error_bars.group_by_seed``) with the
  band from the lowest to the highest seed at each step, raw and smoothed by a moving average,
  log scale — the paper's argument that Φ keeps it small;
- ``side_by_side.png``: the picture clips (``compare.PICTURE_CLIPS``), first, middle and last
  frame of each (0, 8, 16 of 17), one column group per model;
- ``comparison.md``: three tables. Over seeds: every scorer dimension as mean ± SD over a
  method's seeds and its ratio to FP, PSNR and SSIM likewise. Single runs: every model's values
  ± the standard error of one run over the n pairs (``error_bars``). Paired: at each bit width,
  QVGen minus each other method on the same pairs (seeds averaged per pair), in values and in
  paired standard errors — the error bar that decides whether one method is ahead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from recipes.tiny_model.compare import FRAMES_FILE, RESULTS_FILE
from recipes.tiny_model.error_bars import (
    PairedDifference,
    Spread,
    binomial_stderr,
    group_by_seed,
    mean_over_seeds,
)
from training.synthetic.scorer import SCORE_NAMES

logger = logging.getLogger(__name__)

GRAD_NORMS_PNG = "grad_norms.png"
SIDE_BY_SIDE_PNG = "side_by_side.png"
TABLE_MD = "comparison.md"
FIDELITY = ("psnr", "ssim")
_COLUMNS = (*SCORE_NAMES, *FIDELITY)
_HEADER = ["model", *SCORE_NAMES, "PSNR vs FP (dB)", "SSIM vs FP"]
_SCALE = 2  # pixels per clip pixel in the picture
_GAP = 4


def _read_log(run: Path) -> tuple[np.ndarray, np.ndarray]:
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    if not records:
        raise ValueError(f"{run / 'train_log.jsonl'} is empty")
    return np.array([r["step"] for r in records]), np.array([r["grad_norm"] for r in records])


def seed_curves(runs: Sequence[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, low, high) of the gradient norm over ``runs`` at the steps all of them
    logged (a run stopped early by its deadline shortens the curve, it does not skew it)."""
    logs = [_read_log(run) for run in runs]
    steps = logs[0][0]
    for other, _ in logs[1:]:
        steps = np.intersect1d(steps, other)
    if not len(steps):
        raise ValueError(f"the runs {[str(r) for r in runs]} logged no step in common")
    norms = np.stack([norm[np.isin(step, steps)] for step, norm in logs])
    return steps, norms.mean(axis=0), norms.min(axis=0), norms.max(axis=0)


def plot_grad_norms(runs: dict[str, Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for group, names in group_by_seed(runs).items():
        steps, mean, low, high = seed_curves([runs[n] for n in names])
        window = max(1, len(mean) // 40)
        smooth = np.convolve(mean, np.ones(window) / window, mode="valid")
        (line,) = ax.plot(steps, mean, alpha=0.25, linewidth=0.8)
        if len(names) > 1:
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        label = group if len(names) == 1 else f"{group} (mean of {len(names)} seeds)"
        ax.plot(steps[window - 1 :], smooth, color=line.get_color(), label=label, linewidth=1.6)
    ax.set_yscale("log")
    ax.set_xlabel("QAT step")
    ax.set_ylabel("gradient L2 norm (before clipping)")
    ax.set_title("qvgen-tiny QAT gradient norm (band: lowest to highest seed)")
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


def run_stderr(entry: dict[str, Any], n: int) -> dict[str, float | None]:
    """The standard error of one run over n pairs: binomial from the means of the scorer's
    dimensions; PSNR/SSIM's from ``entry["stderr"]``, None in a comparison written before it."""
    stderr: dict[str, float | None] = {
        key: binomial_stderr(min(max(entry["scores"][key], 0.0), 1.0), n) for key in SCORE_NAMES
    }
    stored = entry.get("stderr", {})
    stderr |= {key: stored.get(key) for key in FIDELITY}
    return stderr


def _value(entry: dict[str, Any], key: str) -> float:
    return float(entry[key] if key in FIDELITY else entry["scores"][key])


def group_spreads(results: dict[str, Any]) -> dict[str, dict[str, Spread]]:
    """Per seed group of ``results["models"]``, every dimension's ``Spread`` over its runs."""
    models = results["models"]
    return {
        group: {key: Spread.of([_value(models[n], key) for n in names]) for key in _COLUMNS}
        for group, names in group_by_seed(models).items()
    }


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _digits(key: str) -> int:
    return 2 if key == "psnr" else 3


def seeds_table(results: dict[str, Any], reference: str = "fp") -> str:
    """Markdown: one row per seed group, mean ± SD over its seeds (× FP), PSNR, SSIM."""
    spreads = group_spreads(results)
    fp = spreads[reference]
    lines = [_row([*_HEADER, "seeds"]), "|" + "---|" * (len(_HEADER) + 1)]
    for group, spread in spreads.items():
        cells = [group]
        for key in _COLUMNS:
            s, d = spread[key], _digits(key)
            if group == reference and key in FIDELITY:
                cells.append("—")
                continue
            text = f"{s.mean:.{d}f}" + ("" if s.std is None else f" ± {s.std:.{d}f}")
            if group != reference and key in SCORE_NAMES:
                ratio = s.mean / fp[key].mean if fp[key].mean > 0 else float("nan")
                text += f" ({ratio:.2f}×)"
            cells.append(text)
        cells.append(str(spread[_COLUMNS[0]].runs))
        lines.append(_row(cells))
    return "\n".join(lines) + "\n"


def runs_table(results: dict[str, Any], reference: str = "fp") -> str:
    """Markdown: one row per model, each value ± the standard error of one run."""
    n = int(results["settings"]["count"])
    lines = [_row(_HEADER), "|" + "---|" * len(_HEADER)]
    for name, entry in results["models"].items():
        stderr = run_stderr(entry, n)
        cells = [name]
        for key in _COLUMNS:
            d, se = _digits(key), stderr[key]
            if name == reference and key in FIDELITY:
                cells.append("—")
            else:
                cells.append(
                    f"{_value(entry, key):.{d}f}" + ("" if se is None else f" ± {se:.{d}f}")
                )
        lines.append(_row(cells))
    return "\n".join(lines) + "\n"


def paired_differences(
    results: dict[str, Any], lead: str = "qvgen", reference: str = "fp"
) -> dict[tuple[str, str], dict[str, PairedDifference]]:
    """For each group ``<lead>-<width>`` and each other group ``<method>-<width>`` of the same
    width (the reference excluded): every dimension's ``PairedDifference`` of lead − other,
    each group's per-pair values averaged over its seeds. Empty where a run stored no per-pair
    values (comparisons written before ``compare`` kept them)."""
    models = results["models"]
    if not all("per_pair" in entry for entry in models.values()):
        return {}
    groups = group_by_seed(models)

    def per_pair(group: str, key: str) -> list[float]:
        return mean_over_seeds([models[name]["per_pair"][key] for name in groups[group]])

    prefix = f"{lead}-"
    differences: dict[tuple[str, str], dict[str, PairedDifference]] = {}
    for group in (g for g in groups if g.startswith(prefix)):
        width = group[len(prefix) :]
        for other in groups:
            if other in (group, reference) or not other.endswith(f"-{width}"):
                continue
            differences[(group, other)] = {
                key: PairedDifference.of(per_pair(group, key), per_pair(other, key))
                for key in _COLUMNS
            }
    return differences


def paired_table(results: dict[str, Any], lead: str = "qvgen", reference: str = "fp") -> str:
    """Markdown: one row per ``paired_differences`` contrast, each cell d̄ (d̄/SE); empty string
    when there is none."""
    differences = paired_differences(results, lead, reference)
    if not differences:
        return ""
    lines = [_row(["contrast", *_HEADER[1:]]), "|" + "---|" * len(_HEADER)]
    for (group, other), by_key in differences.items():
        cells = [f"{group} − {other}"]
        for key in _COLUMNS:
            diff, d = by_key[key], _digits(key)
            cells.append(f"{diff.mean:+.{d}f} ({diff.in_stderrs:+.1f} SE)")
        lines.append(_row(cells))
    return "\n".join(lines) + "\n"


def comparison_table(results: dict[str, Any], reference: str = "fp") -> str:
    """Markdown: ``seeds_table``, ``runs_table`` and (with per-pair values) ``paired_table``,
    each under a line saying what it shows."""
    n = int(results["settings"]["count"])
    text = (
        "Mean ± SD over seeds (runs `<method>-seed<k>`; no ± for a single run), × FP:\n\n"
        + seeds_table(results, reference)
        + f"\nEvery run ± the standard error of one run over its {n} pairs (scorer: binomial "
        "√(p(1−p)/n); PSNR/SSIM: of the mean):\n\n" + runs_table(results, reference)
    )
    paired = paired_table(results, reference=reference)
    if paired:
        text += (
            f"\nPaired over the same {n} pairs, each method's seeds averaged per pair: the mean "
            "difference and, in brackets, that difference in paired standard errors "
            "(s_d/√n):\n\n" + paired
        )
    return text


def merge_comparisons(comparisons: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One comparison of several ``compare`` outputs of the same settings (e.g. one command per
    bit width): the first one's entries win for a name two of them hold (the FP reference)."""
    first = comparisons[0]
    merged = {**first, "models": dict(first["models"])}
    for other in comparisons[1:]:
        if other["settings"] != first["settings"]:
            raise ValueError(
                f"comparisons of different settings: {first['settings']} vs {other['settings']}"
            )
        for name, entry in other["models"].items():
            merged["models"].setdefault(name, entry)
    return merged


def write_figures(
    comparisons: Sequence[Path], runs: dict[str, Path], shown: list[str], out: Path
) -> None:
    """The table of the merged ``comparisons``, the frames of the first that holds all of
    ``shown``, the gradient norms of ``runs``."""
    if not comparisons:
        raise ValueError("--comparison: give at least one qvgen tiny compare --out")
    out.mkdir(parents=True, exist_ok=True)
    results = merge_comparisons([json.loads((c / RESULTS_FILE).read_text()) for c in comparisons])
    (out / TABLE_MD).write_text(comparison_table(results))
    frames = [c / FRAMES_FILE for c in comparisons]
    holding = [f for f in frames if set(shown) <= set(np.load(f).files)]
    side_by_side(holding[0] if holding else frames[0], shown, out / SIDE_BY_SIDE_PNG)
    if runs:
        plot_grad_norms(runs, out / GRAD_NORMS_PNG)
    logger.info("wrote figures and table to %s", out)
