"""Memory per GPU of a QVGen QAT run under FSDP2, from the model's configuration.

``python -m benchmarks.qat_memory_plan [--frames 81 --height 480 --width 832 --rank 32]``
prints, for Wan 2.1 1.3B and 14B and 1, 2, 4, 8 GPUs, what each GPU holds at batch 1 per GPU:

    sharded (÷ N):   student latent weights fp32 (4 B/param), their gradients (4 B), AdamW's
                     two moments (8 B); Φ = L·R at the initial rank, 16 B/param the same way;
                     the frozen bf16 teacher (2 B/param, sharded like the student)
    per GPU:         activations of one sample with gradient checkpointing, a fixed workspace,
                     and under FSDP two gathered blocks (the one computing, the one prefetched)

Activations and workspace come from the one-GPU measurement of the 1.3B model (BENCHMARKS.md,
QAT step on an H200: 29.6 GiB at batch 1 and 31.5 at batch 2 for 17×480×832): the batch-2 step
costs 1.9 GiB more, which is one sample's activations at 7 800 tokens, and the rest of the
measured peak beyond the states is workspace. Activations are scaled by tokens × width ×
blocks (checkpointing keeps each block's input and recomputes one block at a time).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from accelerate import init_empty_weights
from diffusers import WanTransformer3DModel

from benchmarks.random_models import WAN_2_1_1_3B, WAN_2_1_14B, WAN_2_1_VAE, WanArchitecture
from qvgen.layer_policy import LayerPolicy

GIB = 2**30
# The 1.3B measurement the plan is calibrated on (BENCHMARKS.md, NVIDIA H200).
MEASURED_ARCH = WAN_2_1_1_3B
MEASURED_TOKENS = 7800  # 17×480×832
MEASURED_PEAK_GIB = 29.6  # batch 1
MEASURED_SAMPLE_GIB = 31.5 - 29.6  # batch 2 − batch 1
MEASURED_RANK = 32
GPU_GIB = 139.0  # an H200 as the device tool reports it


@dataclass(frozen=True)
class ModelCounts:
    """Parameter counts of one architecture."""

    arch: WanArchitecture
    params: int
    block_params: int  # one transformer block
    phi_params: int  # Φ at the given rank over the quantized linears

    @classmethod
    def of(cls, arch: WanArchitecture, rank: int) -> ModelCounts:
        with init_empty_weights():
            # Any: mypy resolves diffusers' model classes to their dummy placeholders.
            model: Any = WanTransformer3DModel(**arch.config())
        layers = [model.get_submodule(n) for n in LayerPolicy().select(model)]
        phi = sum(
            min(rank, m.in_features, m.out_features) * (m.in_features + m.out_features)
            for m in layers
        )
        block = sum(p.numel() for p in model.blocks[0].parameters())
        return cls(arch, sum(p.numel() for p in model.parameters()), block, phi)

    def state_bytes(self) -> int:
        """What FSDP shards: student (weights, grads, 2 moments: 16 B), Φ (16 B), teacher (2 B)."""
        return 16 * self.params + 16 * self.phi_params + 2 * self.params


def tokens(frames: int, height: int, width: int) -> int:
    latent_frames = (frames - 1) // WAN_2_1_VAE.temporal_factor + 1
    side = WAN_2_1_VAE.spatial_factor * 2
    return latent_frames * (height // side) * (width // side)


def _activation_gib(counts: ModelCounts, n_tokens: int) -> float:
    ref = MEASURED_ARCH
    scale = (
        (n_tokens / MEASURED_TOKENS)
        * (counts.arch.dim / ref.dim)
        * (counts.arch.num_layers / ref.num_layers)
    )
    return MEASURED_SAMPLE_GIB * scale


def _workspace_gib() -> float:
    measured = ModelCounts.of(MEASURED_ARCH, MEASURED_RANK)
    return MEASURED_PEAK_GIB - measured.state_bytes() / GIB - MEASURED_SAMPLE_GIB


def per_gpu_gib(counts: ModelCounts, gpus: int, n_tokens: int) -> float:
    """Peak GiB on each of ``gpus`` GPUs at batch 1 per GPU."""
    gathered = 0.0 if gpus == 1 else 2 * counts.block_params * (4 + 2) / GIB
    return (
        counts.state_bytes() / gpus / GIB
        + _activation_gib(counts, n_tokens)
        + _workspace_gib()
        + gathered
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args(argv)
    n_tokens = tokens(args.frames, args.height, args.width)
    print(f"tokens per sample: {n_tokens}; workspace {_workspace_gib():.1f} GiB (calibrated)")
    print(
        "| model | params | Φ params | sharded state GiB | activations GiB | 1 GPU | 2 GPUs | 4 GPUs | 8 GPUs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for arch in (WAN_2_1_1_3B, WAN_2_1_14B):
        counts = ModelCounts.of(arch, args.rank)
        cells = []
        for gpus in (1, 2, 4, 8):
            gib = per_gpu_gib(counts, gpus, n_tokens)
            cells.append(f"{gib:.1f}" + ("" if gib <= GPU_GIB else " ✗"))
        print(
            f"| {arch.name} | {counts.params / 1e9:.2f} B | {counts.phi_params / 1e6:.0f} M | "
            f"{counts.state_bytes() / GIB:.1f} | {_activation_gib(counts, n_tokens):.1f} | "
            + " | ".join(cells)
            + " |"
        )
    fewest = next(
        g
        for g in (1, 2, 4, 8)
        if per_gpu_gib(ModelCounts.of(WAN_2_1_14B, args.rank), g, n_tokens) <= GPU_GIB
    )
    print(
        f"fewest {GPU_GIB:.0f} GiB GPUs for Wan 2.1 14B QAT at this size: {fewest} (✗: over {GPU_GIB:.0f} GiB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
