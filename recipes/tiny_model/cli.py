"""``qvgen tiny``: the embedded model's recipe and its comparison.

qvgen tiny train-base --out DIR [--seed 0 --vae-steps … --flow-steps … --device cuda]
    [--vae-only | --vae-from DIR | --resume-transformer DIR] [--piece-seconds S]
qvgen tiny compare --model fp=DIR --model rtn-w4a4=DIR --model qvgen-w4a4-seed0=DIR …
    --reference fp --out DIR
qvgen tiny figures --comparison DIR [--comparison DIR …] --run lsq-w4a4-seed0=RUN … --out DIR
qvgen tiny median --comparison DIR --group qvgen-w4a4
qvgen tiny frontier --model DIR --out DIR [--count 200 --setting NAME …]
qvgen tiny frontier-table --run NAME=OUT …
qvgen tiny residual-noise --model NAME=DIR … [--count 8]

Names ``<method>-seed<k>`` are runs of one method that differ in their QAT seed: the table shows
their mean ± SD, the gradient-norm plot their mean (``recipes.tiny_model.error_bars``).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from pathlib import Path

import torch

from recipes.tiny_model.config import RecipeConfig, RunScope, SpecName

logger = logging.getLogger(__name__)

_DEFAULTS = RecipeConfig()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_train_base(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train-base",
        help="train the full-precision qvgen-tiny pipeline (VAE, then transformer) from scratch, "
        "in one command or in pieces",
    )
    p.add_argument("--out", type=Path, required=True, help="a new run directory")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    for field in fields(RecipeConfig):
        default = getattr(_DEFAULTS, field.name)
        if field.name == "spec":
            p.add_argument("--spec", default=default.value, choices=[s.value for s in SpecName])
            continue
        p.add_argument(_flag(field.name), type=type(default), default=default)
    pieces = p.add_argument_group(
        "in pieces", "split the recipe over several commands (each writes a new --out)"
    )
    pieces.add_argument(
        "--vae-only",
        action="store_true",
        help="train the VAE stage alone; OUT/encoders is then for a later --vae-from",
    )
    pieces.add_argument(
        "--vae-from",
        type=Path,
        help="skip the VAE stage: take the VAE (latent mean/std included), text encoder and "
        "tokenizer of this run directory or pipeline directory (e.g. models/qvgen-tiny)",
    )
    pieces.add_argument(
        "--resume-transformer",
        type=Path,
        help="continue the transformer stage of this earlier run directory (its "
        "transformer_state/ and encoders/); repeat the recipe flags of its first piece",
    )
    pieces.add_argument(
        "--piece-seconds",
        type=float,
        help="pause the transformer stage after this many seconds, saving OUT/transformer_state "
        "for --resume-transformer; the schedule stays planned over --flow-steps",
    )
    p.set_defaults(handler=_run_train_base)


def _run_train_base(args: argparse.Namespace) -> int:
    from recipes.tiny_model.recipe import train_base

    values = {f.name: getattr(args, f.name) for f in fields(RecipeConfig)}
    values["spec"] = SpecName(values["spec"])
    try:
        config = RecipeConfig(**values)
        scope = RunScope(
            vae_from=args.vae_from,
            resume_transformer=args.resume_transformer,
            vae_only=args.vae_only,
            piece_seconds=args.piece_seconds,
        )
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        train_base(config, args.out, device, scope)
    except ValueError as err:
        logger.error("qvgen tiny train-base: %s", err)
        return 2
    return 0


def _add_finetune_decoder(commands: argparse._SubParsersAction) -> None:
    from recipes.tiny_model.decoder_stage import DecoderFinetune

    d = DecoderFinetune()
    p = commands.add_parser(
        "finetune-decoder",
        help="repair a VAE decoder on whole clips with the encoder frozen (transformer stays valid)",
    )
    p.add_argument("--vae", type=Path, required=True, help="the pipeline's vae/ directory")
    p.add_argument("--out", type=Path, required=True, help="where to save the fine-tuned VAE")
    p.add_argument("--device", default="cpu")
    for field in fields(DecoderFinetune):
        p.add_argument(
            _flag(field.name), type=type(getattr(d, field.name)), default=getattr(d, field.name)
        )
    p.set_defaults(handler=_run_finetune_decoder)


def _run_finetune_decoder(args: argparse.Namespace) -> int:
    from recipes.tiny_model.decoder_stage import DecoderFinetune, finetune_decoder

    try:
        run = DecoderFinetune(**{f.name: getattr(args, f.name) for f in fields(DecoderFinetune)})
    except ValueError as err:
        logger.error("qvgen tiny finetune-decoder: %s", err)
        return 2
    finetune_decoder(args.vae, args.out, run, torch.device(args.device))
    return 0


def _named_path(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def _add_compare(commands: argparse._SubParsersAction) -> None:
    from recipes.tiny_model.compare import DEFAULT_BATCH, DEFAULT_COUNT, TINY_EVAL

    d = TINY_EVAL
    p = commands.add_parser(
        "compare",
        help="generate the fixed evaluation set with every model; scores, PSNR/SSIM against FP",
    )
    p.add_argument("--model", type=_named_path, action="append", required=True, help="NAME=DIR")
    p.add_argument("--reference", required=True, help="NAME of the full-precision model")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1, help="scoring processes")
    p.add_argument("--count", type=int, default=DEFAULT_COUNT, help="evaluation pairs (≤ 270)")
    p.add_argument("--steps", type=int, default=d.num_inference_steps)
    p.add_argument("--guidance", type=float, default=d.guidance_scale)
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="clips per pipeline call")
    p.add_argument(
        "--int8-attention",
        action="append",
        default=[],
        metavar="NAME",
        help="run this model's self-attention on the 8-bit kernel (a Triton device; repeatable)",
    )
    p.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from recipes.tiny_model.compare import TINY_EVAL, compare
    from service.engine.types import AttentionKernel

    try:
        settings = replace(TINY_EVAL, num_inference_steps=args.steps, guidance_scale=args.guidance)
        compare(
            dict(args.model),
            args.reference,
            args.out,
            settings,
            args.device,
            args.workers,
            count=args.count,
            batch=args.batch,
            attention=dict.fromkeys(args.int8_attention, AttentionKernel.INT8),
        )
    except ValueError as err:
        logger.error("qvgen tiny compare: %s", err)
        return 2
    return 0


def _add_figures(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "figures", help="gradient-norm curves, frames side by side and the comparison table"
    )
    p.add_argument(
        "--comparison",
        type=Path,
        action="append",
        required=True,
        help="a qvgen tiny compare --out; repeat to merge several (same settings)",
    )
    p.add_argument("--run", type=_named_path, action="append", default=[], help="NAME=RUN_DIR")
    p.add_argument("--side-by-side", nargs="+", default=["fp", "qvgen-w4a4", "rtn-w4a4"])
    p.add_argument("--out", type=Path, required=True, help="directory for the PNG files")
    p.set_defaults(handler=_run_figures)


def _run_figures(args: argparse.Namespace) -> int:
    from recipes.tiny_model.figures import write_figures

    try:
        write_figures(args.comparison, dict(args.run), args.side_by_side, args.out)
    except (ValueError, KeyError) as err:
        logger.error("qvgen tiny figures: %s", err)
        return 2
    return 0


def _add_median(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "median",
        help="print the model name of a seed group's median run (by a score, default prompt "
        "accuracy): the run to ship",
    )
    p.add_argument("--comparison", type=Path, required=True, help="a qvgen tiny compare --out")
    p.add_argument("--group", required=True, help="e.g. qvgen-w4a4 (runs qvgen-w4a4-seed<k>)")
    p.add_argument("--by", default="prompt_accuracy", help="a scorer dimension")
    p.set_defaults(handler=_run_median)


def _run_median(args: argparse.Namespace) -> int:
    import json

    from recipes.tiny_model.compare import RESULTS_FILE
    from recipes.tiny_model.error_bars import group_by_seed, median_run
    from training.synthetic.scorer import SCORE_NAMES

    models = json.loads((args.comparison / RESULTS_FILE).read_text())["models"]
    groups = group_by_seed(models)
    if args.group not in groups:
        logger.error("qvgen tiny median: --group %r is not one of %s", args.group, sorted(groups))
        return 2
    if args.by not in SCORE_NAMES:
        logger.error("qvgen tiny median: --by %r is not one of %s", args.by, SCORE_NAMES)
        return 2
    # The answer is the command's output (reproduce.sh reads it), not a log line.
    print(median_run({n: models[n]["scores"][args.by] for n in groups[args.group]}))
    return 0


def _add_frontier(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "frontier",
        help="the evaluation set under every pass-saving setting, one request at a time",
    )
    p.add_argument("--model", type=Path, required=True, help="pipeline directory")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--count", type=int, default=200, help="evaluation pairs (≤ 270)")
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        help="only these settings (names as in the table; the plain run always runs)",
    )
    p.set_defaults(handler=_run_frontier)


def _run_frontier(args: argparse.Namespace) -> int:
    from recipes.tiny_model.frontier import PLAIN, SETTINGS, run_settings, write_run

    known = {s.name: s for s in SETTINGS}
    unknown = sorted(set(args.setting) - set(known))
    if unknown:
        logger.error("qvgen tiny frontier: unknown --setting %s; known: %s", unknown, list(known))
        return 2
    chosen = tuple(s for s in SETTINGS if s is PLAIN or not args.setting or s.name in args.setting)
    run = run_settings(args.model, chosen, args.count, args.device)
    logger.info("wrote %s", write_run(args.out, run))
    return 0


def _add_frontier_table(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("frontier-table", help="the Markdown table of frontier runs")
    p.add_argument("--run", type=_named_path, action="append", required=True, help="NAME=OUT")
    p.set_defaults(handler=_run_frontier_table)


def _run_frontier_table(args: argparse.Namespace) -> int:
    import json

    from recipes.tiny_model.frontier import RESULTS_FILE, frontier_table

    runs = {name: json.loads((out / RESULTS_FILE).read_text()) for name, out in args.run}
    # The table is the command's output, for BENCHMARKS.md.
    print(frontier_table(runs))
    return 0


def _add_residual_noise(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "residual-noise",
        help="the first block's step-to-step residual change by pooling window, per model",
    )
    p.add_argument("--model", type=_named_path, action="append", required=True, help="NAME=DIR")
    p.add_argument("--count", type=int, default=8, help="evaluation pairs")
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=_run_residual_noise)


def _run_residual_noise(args: argparse.Namespace) -> int:
    from recipes.tiny_model.residual_noise import noise_table, residual_changes

    rows = {name: residual_changes(path, args.count, args.device) for name, path in args.model}
    # The table is the command's output, for BENCHMARKS.md.
    print(noise_table(rows))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tiny`` with its subcommands."""
    tiny = subparsers.add_parser("tiny", help="the embedded qvgen-tiny model: recipe, comparison")
    commands = tiny.add_subparsers(dest="tiny_command", metavar="TINY_COMMAND", required=True)
    _add_train_base(commands)
    _add_finetune_decoder(commands)
    _add_compare(commands)
    _add_figures(commands)
    _add_median(commands)
    _add_frontier(commands)
    _add_frontier_table(commands)
    _add_residual_noise(commands)
