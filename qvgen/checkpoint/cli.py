"""``qvgen import-release``: convert the QVGen authors' released checkpoints to format v1."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def _run(args: argparse.Namespace) -> int:
    # Imported here: the importer pulls in diffusers, which every other command would pay for.
    from qvgen.checkpoint.import_release import ReleaseImport, WeightArithmetic, import_release

    try:
        options = ReleaseImport(
            weight_bits=args.w_bits,
            activation_bits=args.a_bits,
            clip_ratio=args.clip_ratio,
            arithmetic=WeightArithmetic(args.weight_arithmetic),
        )
    except ValueError as err:
        logger.error("qvgen import-release: %s", err)
        return 2
    out = import_release(args.checkpoint, args.config, args.out, options)
    logger.info("wrote format v1 to %s", out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import-release",
        help="convert a QVGen release checkpoint (latent weights + quantizer parameters) to format v1",
    )
    p.add_argument(
        "--checkpoint", required=True, help="the release's diffusion_pytorch_model.safetensors"
    )
    p.add_argument("--config", required=True, help="the transformer's diffusers config.json")
    p.add_argument(
        "--out", required=True, help="directory to write (config.json + qvgen_packed.safetensors)"
    )
    p.add_argument(
        "--w-bits", type=int, default=4, help="weight bits the checkpoint was trained at (2–8)"
    )
    p.add_argument(
        "--a-bits", type=int, default=4, help="activation bits the checkpoint was trained at (2–8)"
    )
    p.add_argument(
        "--clip-ratio",
        type=float,
        default=0.95,
        help="the release's activation clip ratio (its inference scripts: 0.95), in (0, 1]",
    )
    p.add_argument(
        "--weight-arithmetic",
        choices=["bf16", "fp32"],
        default="bf16",
        help="dtype their model computed the weight codes in (inference scripts: bf16)",
    )
    p.set_defaults(handler=_run)
