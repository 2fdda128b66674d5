"""``python -m benchmarks.prologue_quant``: activation quantization fused into the norm or GELU
that makes the activation, against making the activation and then quantizing it.

At Wan 2.1's shapes (32 760 tokens; width 1536 / FFN 8960 for 1.3B, 5120 / 13 824 for 14B, bf16),
the four producers of a block's quantized inputs (``service/kernels/wan_block_prologues.py``):
norm1 + modulation → q/k/v (three clip tables, as the fused q/k/v layer quantizes), norm2 with
affine → cross-attention q, norm3 + modulation → FFN-up, GELU → FFN-down. Median
``triton.testing.do_bench`` times of:

* ``eager``: diffusers' expressions in eager PyTorch, then ``quantize_activations_shared``;
* ``compiled``: the same under ``torch.compile`` (inductor makes the producer one kernel; the
  quantizer is an opaque custom operator) — what ``w4a4+compile`` runs today;
* ``fused``: ``prologue_quant`` with its default launch, and every candidate launch of
  ``candidate_launches`` (the best is reported with its shape: choose the default from it).

``fused GB/s`` = the bytes the fused kernel must move (x once, the codes once) ÷ its time.
In a compiled block inductor also fuses norm2/norm3 into the residual add before them, which
this isolated producer does not show: the end-to-end peer ``w4a4+compile+fused-norm`` of
``qvgen bench e2e`` is the measurement that counts. Appends a table to BENCHMARKS.md.

Prediction, before any GPU run (bf16, M = 32 760 tokens, the fused kernels at the bandwidth the
plain quantizer reaches, ~3–4 TB/s): against ``w4a4+compile`` a block stops writing and
re-reading each activation. norm1 (its input comes from the previous block's graph): −4 B per
element of M × K; norm2 and norm3 (inductor already fuses each into the residual add before
it, so the fused kernel must read the residual sum back): −2 B each; GELU: −4 B per element of
M × F. Wan 14B (K = 5120, F = 13 824): 8·M·K + 4·M·F = 1.34 + 1.81 = 3.15 GB per block, × 40
blocks × 2 calls = 252 GB per guided step ≈ 60–75 ms of 4860 ms (1.3–1.5 %). Wan 1.3B
(K = 1536, F = 8960): 0.40 + 1.17 = 1.58 GB per block, × 30 × 2 = 95 GB ≈ 24–30 ms of
1023 ms (2.3–2.9 %). Isolated (this script), from bytes alone: norm1 → q/k/v ~1.8×,
norm2/norm3 ~2.3×, GELU ~2.3× faster than ``compiled``.
"""

from __future__ import annotations

import argparse
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.models.normalization import FP32LayerNorm

from benchmarks.kernels import BENCHMARKS_HEADER, environment
from qvgen.provenance import git_commit
from service.kernels.activation_quant import QuantLaunch, quantize_activations_shared
from service.kernels.prologue import GeluTanh, NormModulation
from service.kernels.prologue_quant import (
    gelu_launch,
    gelu_quantize,
    norm_launch,
    norm_modulation_quantize,
)
from service.kernels.weight_layout import DEFAULT_BLOCK_K, padded_width

logger = logging.getLogger(__name__)

TOKENS = 32760
BITS = 4


class Producer(enum.Enum):
    NORM_MODULATION = "norm+modulation"
    NORM_AFFINE = "norm (affine)"
    GELU = "gelu"


@dataclass(frozen=True)
class Case:
    model: str
    site: str
    producer: Producer
    width: int
    tables: int

    @property
    def label(self) -> str:
        return f"{self.model} {self.site} ({self.producer.value}, K={self.width}, C={self.tables})"


def wan_cases(tokens: int) -> list[Case]:
    cases = []
    for model, dim, ffn in (("wan2.1-1.3b", 1536, 8960), ("wan2.1-14b", 5120, 13824)):
        cases += [
            Case(model, "norm1→q/k/v", Producer.NORM_MODULATION, dim, 3),
            Case(model, "norm2→attn2.q", Producer.NORM_AFFINE, dim, 1),
            Case(model, "norm3→ffn-up", Producer.NORM_MODULATION, dim, 1),
            Case(model, "gelu→ffn-down", Producer.GELU, ffn, 1),
        ]
    return cases


@dataclass
class CaseResult:
    case: Case
    tokens: int
    times_ms: dict[str, float] = field(default_factory=dict)
    best_launch: str = ""

    def fused_bytes(self) -> int:
        k_pad = padded_width(self.case.width, DEFAULT_BLOCK_K)
        return self.tokens * (2 * self.case.width + self.case.tables * k_pad)


def candidate_launches(case: Case, tokens: int) -> list[QuantLaunch]:
    """The default launch first, then whole rows with 4, 8, 16 warps and 1024-wide chunks."""
    k_pad = padded_width(case.width, DEFAULT_BLOCK_K)
    default = (gelu_launch if case.producer is Producer.GELU else norm_launch)(k_pad, tokens)
    full = 1 << (k_pad - 1).bit_length()
    candidates = [default]
    for warps in (4, 8, 16):
        candidates.append(QuantLaunch(block_m=1, chunk=full, num_warps=warps))
    for rows in (1, 4):
        candidates.append(QuantLaunch(block_m=rows, chunk=min(1024, k_pad & -k_pad), num_warps=4))
    return list(dict.fromkeys(candidates))


def _inputs(case: Case, tokens: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    k = case.width

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g, device=device)

    return {
        "x": (3 * draw(1, tokens, k)).bfloat16(),
        "shift": 0.3 * draw(1, 1, k),
        "scale": 0.3 * draw(1, 1, k),
        "clips": torch.full((case.tables, tokens, 2), 0.9, device=device),
    }


def _variants(case: Case, tokens: int, device: torch.device) -> dict[str, Callable[[], object]]:
    t = _inputs(case, tokens, device)
    x, clips = t["x"], t["clips"]
    k = case.width
    norm = FP32LayerNorm(k, eps=1e-6, elementwise_affine=case.producer is Producer.NORM_AFFINE)
    norm = norm.to(device)

    def produce(x: torch.Tensor) -> torch.Tensor:
        if case.producer is Producer.GELU:
            return GeluTanh(x).materialize()
        if case.producer is Producer.NORM_AFFINE:
            return NormModulation(x, norm).materialize()
        return NormModulation(x, norm, t["shift"], t["scale"]).materialize()

    def unfused(x: torch.Tensor) -> object:
        return quantize_activations_shared(produce(x).reshape(-1, k), clips, BITS, DEFAULT_BLOCK_K)

    compiled = torch.compile(unfused)

    def fused(launch: QuantLaunch) -> Callable[[], object]:
        x2d = x.reshape(-1, k)
        if case.producer is Producer.GELU:
            return lambda: gelu_quantize(x2d, clips, BITS, DEFAULT_BLOCK_K, launch)
        mod = case.producer is Producer.NORM_MODULATION
        shift, scale = (t["shift"], t["scale"]) if mod else (None, None)
        return lambda: norm_modulation_quantize(
            x2d, norm.weight, norm.bias, norm.eps, shift, scale, clips, BITS, DEFAULT_BLOCK_K,
            launch,
        )  # fmt: skip

    variants: dict[str, Callable[[], object]] = {
        "eager": lambda: unfused(x),
        "compiled": lambda: compiled(x),
    }
    for launch in candidate_launches(case, tokens):
        variants[f"fused {launch.block_m}×{launch.chunk}/{launch.num_warps}w"] = fused(launch)
    return variants


def measure(cases: list[Case], tokens: int, warmup_ms: int, rep_ms: int) -> list[CaseResult]:
    import triton.testing

    device = torch.device("cuda")
    results = []
    for case in cases:
        result = CaseResult(case, tokens)
        variants = _variants(case, tokens, device)
        default_name = next(n for n in variants if n.startswith("fused"))
        for name, fn in variants.items():
            fn()  # compiles outside the timed region
            result.times_ms[name] = float(
                triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
            )
        fused = {n: v for n, v in result.times_ms.items() if n.startswith("fused")}
        result.times_ms["fused"] = fused[default_name]
        result.best_launch = min(fused, key=fused.__getitem__)
        logger.info("%s: %s", case.label, result.times_ms)
        results.append(result)
        torch.cuda.empty_cache()
    return results


def table(results: list[CaseResult]) -> str:
    head = (
        "| producer → consumer | eager ms | compiled ms | fused ms (default) | fused GB/s | "
        "compiled ÷ fused | best launch (ms) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        t = r.times_ms
        lines.append(
            f"| {r.case.label} | {t['eager']:.3f} | {t['compiled']:.3f} | {t['fused']:.3f} | "
            f"{r.fused_bytes() / (t['fused'] * 1e-3) / 1e9:.0f} | "
            f"{t['compiled'] / t['fused']:.2f}× | {r.best_launch} ({t[r.best_launch]:.3f}) |"
        )
    return "\n".join(lines)


def append_section(path: Path, env: dict[str, str], text: str, tokens: int) -> None:
    body = "" if path.exists() else BENCHMARKS_HEADER
    body += (
        f"\n## Quantization fused into norm / GELU (`python -m benchmarks.prologue_quant`), "
        f"{env['card']}, {env['date']}, commit {env['commit']}\n\n"
        f"torch {env['torch']}, Triton {env['triton']}, {env['capability']}. {tokens} tokens, bf16, "
        "W4A4 codes; median `triton.testing.do_bench`. eager / compiled = diffusers' producer "
        "then the activation quantizer; fused = one kernel (`service/kernels/prologue_quant.py`)."
        f"\n\n{text}\n"
    )
    with path.open("a", encoding="utf-8") as f:
        f.write(body)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prologue_quant")
    parser.add_argument("--tokens", type=int, default=TOKENS)
    parser.add_argument("--models", nargs="+", default=["wan2.1-1.3b", "wan2.1-14b"])
    parser.add_argument("--warmup-ms", type=int, default=25)
    parser.add_argument("--rep-ms", type=int, default=100)
    parser.add_argument("--benchmarks", default="BENCHMARKS.md", help="markdown file to append to")
    parser.add_argument("--commit", default=None, help="commit to record (default: git HEAD)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not torch.cuda.is_available():
        logger.error("benchmarks.prologue_quant needs a CUDA GPU")
        return 2
    env = environment(args.commit or git_commit())
    cases = [c for c in wan_cases(args.tokens) if c.model in args.models]
    with torch.inference_mode():
        results = measure(cases, args.tokens, args.warmup_ms, args.rep_ms)
    text = table(results)
    print(f"{env['card']} {env['date']} commit {env['commit']}")
    print(text)
    append_section(Path(args.benchmarks), env, text, args.tokens)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
