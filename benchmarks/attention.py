"""``python -m benchmarks.attention``: the 8-bit self-attention kernel against bf16 SDPA.

At Wan's video shapes (default 32 760 tokens, 12 heads = Wan 1.3B and 40 heads = Wan 14B, head
dim 128, batch 1), median ``triton.testing.do_bench`` times of:

* ``sdpa``: ``F.scaled_dot_product_attention`` in bf16 (whatever backend torch picks);
* ``int8``: ``int8_attention`` as a model calls it — the quantization of q, k, v (eager here;
  compiled into the producers under ``torch.compile``) plus the kernel;
* ``int8-kernel``: the kernel alone, on operands quantized beforehand.

TFLOPS = 4·B·H·S²·D / time (the two matmuls). Error: ‖Δ‖/‖ref‖ and cosine of the output rows
of ``check_queries`` queries against float32 attention over all keys, for both SDPA and ours.
Prints a table and appends it to BENCHMARKS.md with the card, date and commit.
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
from service.kernels.attention_int8 import _attention_op, int8_attention, quantize_inputs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttentionRow:
    heads: int
    tokens: int
    head_dim: int
    sdpa_ms: float
    int8_ms: float
    kernel_ms: float
    sdpa_error: float
    int8_error: float
    int8_cosine: float

    def tflops(self, ms: float) -> float:
        return 4 * self.heads * self.tokens**2 * self.head_dim / (ms * 1e-3) / 1e12


def _error(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    out, ref = out.float().flatten(), ref.float().flatten()
    return float((out - ref).norm() / ref.norm()), float(F.cosine_similarity(out, ref, dim=0))


def measure(heads: int, tokens: int, head_dim: int, check_queries: int, seed: int) -> AttentionRow:
    import triton

    g = torch.Generator(device="cuda").manual_seed(seed)
    shape = (1, tokens, heads, head_dim)
    q, k, v = (torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16) for _ in "qkv")
    k = k + 2 * torch.randn((1, 1, heads, head_dim), generator=g, device="cuda").bfloat16()
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))

    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(qt, kt, vt)

    operands = quantize_inputs(q, k, v, pv_fp8=torch.cuda.get_device_capability() >= (8, 9))
    sdpa_ms = triton.testing.do_bench(sdpa)
    int8_ms = triton.testing.do_bench(lambda: int8_attention(q, k, v))
    kernel_ms = triton.testing.do_bench(
        lambda: _attention_op(*operands, tokens, tokens, heads, torch.bfloat16)
    )
    rows = slice(0, check_queries)
    ref = F.scaled_dot_product_attention(qt[:, :, rows].float(), kt.float(), vt.float())
    sdpa_error, _ = _error(sdpa()[:, :, rows], ref)
    int8_error, int8_cosine = _error(int8_attention(q, k, v).transpose(1, 2)[:, :, rows], ref)
    return AttentionRow(
        heads, tokens, head_dim, sdpa_ms, int8_ms, kernel_ms, sdpa_error, int8_error, int8_cosine
    )


def table(rows: list[AttentionRow]) -> str:
    head = (
        "| heads × tokens × dim | SDPA bf16 ms (TFLOPS) | int8 ms (TFLOPS) | kernel alone ms "
        "(TFLOPS) | × SDPA | ‖Δ‖/‖ref‖ SDPA | ‖Δ‖/‖ref‖ int8 | cosine int8 |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r.heads} × {r.tokens} × {r.head_dim} | {r.sdpa_ms:.2f} ({r.tflops(r.sdpa_ms):.0f})"
            f" | {r.int8_ms:.2f} ({r.tflops(r.int8_ms):.0f}) | {r.kernel_ms:.2f} "
            f"({r.tflops(r.kernel_ms):.0f}) | {r.sdpa_ms / r.int8_ms:.2f} | {r.sdpa_error:.4f} "
            f"| {r.int8_error:.4f} | {r.int8_cosine:.5f} |"
        )
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
    text = table(rows)
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
            "int8 includes the eager quantization of q, k, v; error of the first "
            f"{args.check_queries} query rows against float32 attention.\n\n{text}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
