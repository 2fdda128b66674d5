"""``python -m benchmarks.attention``: the 8-bit self-attention kernel against bf16 SDPA.

At Wan's video shapes (default 32 760 tokens, 12 heads = Wan 1.3B and 40 heads = Wan 14B, head
dim 128, batch 1), median ``triton.testing.do_bench`` times of:

* ``sdpa``: ``F.scaled_dot_product_attention`` in bf16 (whatever backend torch picks);
* ``kernel``: the kernel alone, on operands quantized beforehand, for every tile configuration
  of ``SWEEP`` (the tiles are also the quantization blocks, so each gets its own operands);
* ``int8``: ``int8_attention`` as a model calls it with the fastest tiles — the quantization of
  q, k, v (eager here; compiled into the producers under ``torch.compile``) plus the kernel;
* ``int8 compiled``: the same under ``torch.compile`` (quantization fused by inductor).

TFLOPS = 4·B·H·S²·D / time (the two matmuls). Error: ‖Δ‖/‖ref‖ and cosine of the output rows
of ``check_queries`` queries against float32 attention over all keys, for both SDPA and ours.
Prints the tables and appends them to BENCHMARKS.md with the card, date and commit.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from benchmarks.kernels import BENCHMARKS_HEADER, environment
from qvgen.provenance import git_commit
from service.kernels.attention_int8 import (
    TILES,
    AttentionTiles,
    int8_attention,
    quantize_inputs,
    run_kernel,
)

logger = logging.getLogger(__name__)


# Tile configurations the sweep times: the default (64 queries × 128 keys, 4 warps), the first
# default (128 × 64, 8 warps), wider key blocks (fewer softmax rescales per query, more
# registers), fewer warps, deeper pipelining.
SWEEP = (
    TILES,
    AttentionTiles(128, 64, 8, 3),
    AttentionTiles(128, 128, 8, 3),
    AttentionTiles(128, 128, 8, 2),
    AttentionTiles(128, 64, 4, 3),
    AttentionTiles(128, 64, 8, 4),
    AttentionTiles(128, 32, 4, 4),
    AttentionTiles(64, 64, 4, 3),
    AttentionTiles(64, 128, 4, 4),
    AttentionTiles(64, 128, 8, 3),
)


@dataclass(frozen=True)
class AttentionRow:
    heads: int
    tokens: int
    head_dim: int
    sdpa_ms: float
    kernel_ms: dict[AttentionTiles, float]
    int8_ms: float
    compiled_ms: float | None
    sdpa_error: float
    int8_error: float
    int8_cosine: float

    @property
    def best(self) -> AttentionTiles:
        return min(self.kernel_ms, key=self.kernel_ms.__getitem__)

    def tflops(self, ms: float) -> float:
        return 4 * self.heads * self.tokens**2 * self.head_dim / (ms * 1e-3) / 1e12


def _error(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    out, ref = out.float().flatten(), ref.float().flatten()
    return float((out - ref).norm() / ref.norm()), float(F.cosine_similarity(out, ref, dim=0))


def _time_tiles(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pv_fp8: bool, tiles: AttentionTiles
) -> float:
    import triton

    _, tokens, heads, _ = q.shape
    operands = quantize_inputs(q, k, v, pv_fp8, tiles)
    try:
        return float(
            triton.testing.do_bench(
                lambda: run_kernel(operands, tokens, tokens, heads, q.dtype, tiles)
            )
        )
    except Exception as error:  # a tile that does not fit (shared memory, registers) is skipped
        logger.warning("tiles %s failed: %s", tiles.label(), str(error)[:200])
        return float("inf")


def measure(heads: int, tokens: int, head_dim: int, check_queries: int, seed: int) -> AttentionRow:
    import triton

    g = torch.Generator(device="cuda").manual_seed(seed)
    shape = (1, tokens, heads, head_dim)
    q, k, v = (torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16) for _ in "qkv")
    k = k + 2 * torch.randn((1, 1, heads, head_dim), generator=g, device="cuda").bfloat16()
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))

    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(qt, kt, vt)

    pv_fp8 = torch.cuda.get_device_capability() >= (8, 9)
    sdpa_ms = float(triton.testing.do_bench(sdpa))
    kernel_ms = {tiles: _time_tiles(q, k, v, pv_fp8, tiles) for tiles in SWEEP}
    best = min(kernel_ms, key=kernel_ms.__getitem__)
    int8_ms = float(triton.testing.do_bench(lambda: int8_attention(q, k, v, best)))
    compiled_ms = None
    try:
        compiled = torch.compile(lambda a, b, c: int8_attention(a, b, c, best))
        compiled_ms = float(triton.testing.do_bench(lambda: compiled(q, k, v)))
    except Exception as error:
        logger.warning("compiled int8 attention failed: %s", str(error)[:300])
    rows = slice(0, check_queries)
    ref = F.scaled_dot_product_attention(qt[:, :, rows].float(), kt.float(), vt.float())
    sdpa_error, _ = _error(sdpa()[:, :, rows], ref)
    out = int8_attention(q, k, v, best).transpose(1, 2)[:, :, rows]
    int8_error, int8_cosine = _error(out, ref)
    return AttentionRow(
        heads, tokens, head_dim, sdpa_ms, kernel_ms, int8_ms, compiled_ms,
        sdpa_error, int8_error, int8_cosine,
    )  # fmt: skip


def table(rows: list[AttentionRow]) -> str:
    head = (
        "| heads × tokens × dim | SDPA bf16 ms (TFLOPS) | fastest tiles | kernel ms (TFLOPS) "
        "| int8 eager ms | int8 compiled ms (TFLOPS) | compiled × SDPA | ‖Δ‖/‖ref‖ SDPA "
        "| ‖Δ‖/‖ref‖ int8 | cosine int8 |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        kernel = r.kernel_ms[r.best]
        whole = r.compiled_ms if r.compiled_ms is not None else r.int8_ms
        compiled = "failed" if r.compiled_ms is None else f"{whole:.2f} ({r.tflops(whole):.0f})"
        lines.append(
            f"| {r.heads} × {r.tokens} × {r.head_dim} | {r.sdpa_ms:.2f} ({r.tflops(r.sdpa_ms):.0f})"
            f" | {r.best.label()} | {kernel:.2f} ({r.tflops(kernel):.0f}) | {r.int8_ms:.2f} "
            f"| {compiled} | {r.sdpa_ms / whole:.2f} | {r.sdpa_error:.4f} "
            f"| {r.int8_error:.4f} | {r.int8_cosine:.5f} |"
        )
    return "\n".join(lines)


def sweep_table(rows: list[AttentionRow]) -> str:
    """Kernel-alone TFLOPS of every tile configuration (columns: the shapes)."""
    head = "| tiles | " + " | ".join(f"{r.heads} heads ms (TFLOPS)" for r in rows) + " |"
    lines = [head, "|---|" + "---|" * len(rows)]
    for tiles in SWEEP:
        cells = []
        for r in rows:
            ms = r.kernel_ms[tiles]
            cells.append("failed" if ms == float("inf") else f"{ms:.2f} ({r.tflops(ms):.0f})")
        lines.append(f"| {tiles.label()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attention")
    parser.add_argument("--tokens", type=int, default=32760)
    parser.add_argument("--heads", type=int, nargs="+", default=[12, 40])
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--check-queries", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--benchmarks", default="BENCHMARKS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not torch.cuda.is_available():
        logger.error("the attention benchmark needs a CUDA GPU")
        return 2
    rows = [
        measure(h, args.tokens, args.head_dim, args.check_queries, args.seed) for h in args.heads
    ]
    env = environment(git_commit())
    text = f"{table(rows)}\n\nKernel alone by tile configuration:\n\n{sweep_table(rows)}"
    print(f"{env['card']} {env['date']} commit {env['commit']}\n{text}")
    path = Path(args.benchmarks)
    header = "" if path.exists() else BENCHMARKS_HEADER
    with path.open("a", encoding="utf-8") as f:
        f.write(header)
        f.write(
            f"\n## 8-bit self-attention (`python -m benchmarks.attention`), {env['card']}, "
            f"{env['date']}, commit {env['commit']}\n\ntorch {env['torch']}, Triton "
            f"{env['triton']}, {env['capability']}. Batch 1, random bf16 q, k, v (k with a "
            "per-channel offset); median `triton.testing.do_bench`; TFLOPS = 4·H·S²·D / time; "
            "int8 includes the quantization of q, k, v (eager, then under torch.compile), with "
            "the fastest tiles of the sweep below; error of the first "
            f"{args.check_queries} query rows against float32 attention.\n\n{text}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
