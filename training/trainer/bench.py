"""Benchmark: one QVGen QAT step vs one plain bf16 fine-tuning step of the same transformer.

``python -m training.trainer.bench`` builds the Wan 2.1 1.3B transformer configuration with random
weights (no download), at a 17×480×832 clip (latent 16×5×60×104, 7 800 tokens), with gradient
checkpointing, and times on the current GPU:

* ``bf16``: the transformer trained directly — float32 master weights, bf16 autocast, AdamW over
  every parameter, MSE to a random target: forward, backward, optimizer step;
* ``qvgen``: the real training step (``loop.train_step``) — frozen bf16 teacher forward, W4A4
  student with Φ of rank 32 forward and backward, gradient clipping, AdamW on the recipe's
  groups — on random latents and prompt embeddings.

Each: warm-up steps, then the median of timed steps (``torch.cuda.synchronize`` around each),
peak memory (``max_memory_allocated``) and tokens per second. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel

from training.data.order import SampleOrder
from training.family import ModelFamily
from training.trainer.config import Method, TrainConfig
from training.trainer.denoiser import Noiser
from training.trainer.distributed import DistContext
from training.trainer.loop import Run, train_step
from training.trainer.models import build_student, freeze
from training.trainer.optim import build_optimizer, build_schedule

WAN_13B = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
LATENT = (16, 5, 60, 104)  # 17 frames × 480 × 832 through Wan's ×4 / ×8 VAE
TEXT = (512, 4096)
TOKENS = 5 * 30 * 52


@dataclass
class RandomLatents:
    """A fixed set of random latents and prompt embeddings (a ``LatentSource``)."""

    clips: int
    empty_text: torch.Tensor

    def __len__(self) -> int:
        return self.clips

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(index)
        return torch.randn(LATENT, generator=g), torch.randn(TEXT, generator=g)


def _time(step: Callable[[], object], warmup: int, steps: int) -> tuple[float, float]:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def bench_bf16(batch: int, warmup: int, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = WanTransformer3DModel(**WAN_13B).cuda().train()  # type: ignore[attr-defined]
    model.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95))
    x = torch.randn(batch, *LATENT, device="cuda")
    text = torch.randn(batch, *TEXT, device="cuda")
    t = torch.full((batch,), 500.0, device="cuda")
    target = torch.randn_like(x)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[
                0
            ]
            loss = F.mse_loss(out.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return _time(step, warmup, steps)


def bench_qvgen(batch: int, warmup: int, steps: int) -> tuple[float, float, float]:
    torch.manual_seed(0)
    fp = freeze(WanTransformer3DModel(**WAN_13B)).cuda()  # type: ignore[arg-type]
    config = TrainConfig(
        model="(random Wan 2.1 1.3B)", out="-", data="-", method=Method.QVGEN, rank=32,
        steps=2667, frames=17, height=480, width=832, batch_size=batch,
    )  # fmt: skip
    started = time.perf_counter()
    student = build_student(fp, config.scheme(), 32, config.layers.policy(), trainable=True)
    student.to("cuda")  # the clip tables are created on the CPU
    torch.cuda.synchronize()
    build_seconds = time.perf_counter() - started
    student.enable_gradient_checkpointing()  # type: ignore[operator]
    student.train()
    teacher = fp.to(torch.bfloat16)
    optimizer = build_optimizer(student, config)
    run = Run(
        config=config,
        ctx=DistContext(0, 1, 0, torch.device("cuda")),
        family=ModelFamily.WAN,
        teacher=teacher,
        student=student,
        model=student,
        optimizer=optimizer,
        scheduler=build_schedule(optimizer, config),
        cache=RandomLatents(8, torch.zeros(TEXT)),
        order=SampleOrder(8, batch, 1, 0),
        noiser=Noiser(ModelFamily.WAN, config.caption_dropout),
        schedule=config.schedule(),
        teacher_dtype=torch.bfloat16,
    )
    counter = iter(range(10**6))
    median, peak = _time(lambda: train_step(run, next(counter)), warmup, steps)
    return median, peak, build_seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    tokens = TOKENS * args.batch
    bf16_s, bf16_mem = bench_bf16(args.batch, args.warmup, args.steps)
    print(f"bf16: {bf16_s:.3f} s/step, peak {bf16_mem:.1f} GiB", flush=True)
    torch.cuda.empty_cache()
    qat_s, qat_mem, build_s = bench_qvgen(args.batch, args.warmup, args.steps)
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "batch": args.batch,
        "tokens_per_sample": TOKENS,
        "bf16": {"step_s": bf16_s, "peak_gib": bf16_mem, "tokens_per_s": tokens / bf16_s},
        "qvgen": {"step_s": qat_s, "peak_gib": qat_mem, "tokens_per_s": tokens / qat_s,
                  "student_build_s": build_s},
        "ratio": qat_s / bf16_s,
    }  # fmt: skip
    print(f"| step | s/step | peak GiB | tokens/s |  ({result['device']}, batch {args.batch})")
    print("|---|---|---|---|")
    for name in ("bf16", "qvgen"):
        r = result[name]
        print(f"| {name} | {r['step_s']:.3f} | {r['peak_gib']:.1f} | {r['tokens_per_s']:.0f} |")
    print(f"qvgen / bf16 step time: {result['ratio']:.2f}×; student build {build_s:.1f} s")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
