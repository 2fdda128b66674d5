"""Benchmark: one QVGen QAT step vs one plain bf16 fine-tuning step of the same transformer.

``python -m benchmarks.qat_step`` builds the Wan 2.1 1.3B transformer configuration with random
weights (no download), at a 17×480×832 clip (latent 16×5×60×104, 7 800 tokens), with gradient
checkpointing, and times on the current GPU:

* ``bf16``: the transformer trained directly — float32 master weights, bf16 autocast, AdamW over
  every parameter, MSE to a random target: forward, backward, optimizer step;
* ``qvgen``: the real training step (``loop.train_step``) — frozen bf16 teacher forward, W4A4
  student with Φ of rank 32 forward and backward, gradient clipping, AdamW on the recipe's
  groups — on random latents and prompt embeddings, once per fake-quant implementation
  (``--backends``: eager PyTorch, the fused Triton kernels), one student built for all.

Each: warm-up steps, then the median of timed steps (``torch.cuda.synchronize`` around each),
peak memory (``max_memory_allocated``) and tokens per second. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel

from benchmarks.timing import time_ms
from qvgen.family import ModelFamily
from training.data.order import SampleOrder
from training.quant.kernels.dispatch import FakeQuantBackend, fake_quant_backend
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
    """Median seconds of a step after ``warmup`` steps, and the peak GiB allocated while timed."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = time_ms(step, torch.device("cuda"), warmup=0, repeats=steps)
    return statistics.median(times) / 1e3, torch.cuda.max_memory_allocated() / 2**30


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


@dataclass
class QatBench:
    """The student, teacher and trainer state of the ``qvgen`` step, built once and reused for
    every batch size and fake-quant backend (the build is the expensive part)."""

    run: Run
    build_seconds: float

    @classmethod
    def build(cls) -> QatBench:
        torch.manual_seed(0)
        fp = freeze(WanTransformer3DModel(**WAN_13B)).cuda()  # type: ignore[arg-type]
        config = TrainConfig(
            model="(random Wan 2.1 1.3B)", out="-", data="-", method=Method.QVGEN, rank=32,
            steps=2667, frames=17, height=480, width=832, batch_size=1,
        )  # fmt: skip
        started = time.perf_counter()
        student = build_student(fp, config.scheme(), 32, config.layers.policy(), trainable=True)
        student.to("cuda")  # the clip tables are created on the CPU
        torch.cuda.synchronize()
        build_seconds = time.perf_counter() - started
        student.enable_gradient_checkpointing()  # type: ignore[operator]
        student.train()
        optimizer = build_optimizer(student, config)
        run = Run(
            config=config,
            ctx=DistContext(0, 1, 0, torch.device("cuda")),
            family=ModelFamily.WAN,
            teacher=fp.to(torch.bfloat16),
            student=student,
            model=student,
            optimizer=optimizer,
            scheduler=build_schedule(optimizer, config),
            cache=RandomLatents(8, torch.zeros(TEXT)),
            order=SampleOrder(8, 1, 1, 0),
            noiser=Noiser(ModelFamily.WAN, config.caption_dropout),
            schedule=config.schedule(),
            teacher_dtype=torch.bfloat16,
        )
        return cls(run, build_seconds)

    def time(
        self, batch: int, backend: FakeQuantBackend, warmup: int, steps: int
    ) -> tuple[float, float]:
        self.run.config = dataclasses.replace(self.run.config, batch_size=batch)
        self.run.order = SampleOrder(8, batch, 1, 0)
        counter = iter(range(10**6))
        torch.cuda.empty_cache()
        with fake_quant_backend(backend):
            return _time(lambda: train_step(self.run, next(counter)), warmup, steps)

    def profile(self, batch: int, backend: FakeQuantBackend, rows: int) -> str:
        """Two tables of one step (``torch.profiler``): the CUDA kernels by total GPU time, and
        the operators by host time (where a host-bound step spends its time)."""
        from torch.profiler import ProfilerActivity, profile

        self.run.config = dataclasses.replace(self.run.config, batch_size=batch)
        self.run.order = SampleOrder(8, batch, 1, 0)
        activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
        with fake_quant_backend(backend), profile(activities=activities) as prof:
            train_step(self.run, 0)
            torch.cuda.synchronize()
        events = prof.key_averages()
        gpu: str = events.table(sort_by="cuda_time_total", row_limit=rows)
        host: str = events.table(sort_by="self_cpu_time_total", row_limit=rows)
        return f"by GPU time:\n{gpu}\nby host time:\n{host}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=[FakeQuantBackend.EAGER.value, FakeQuantBackend.TRITON.value],
        choices=[b.value for b in FakeQuantBackend if b is not FakeQuantBackend.AUTO],
        help="fake-quant implementations to time the qvgen step with",
    )
    parser.add_argument("--profile", type=int, default=0, help="kernel rows of a profile (0: none)")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "tokens_per_sample": TOKENS,
        "runs": [],
    }
    for batch in args.batch:
        bf16_s, bf16_mem = bench_bf16(batch, args.warmup, args.steps)
        result["runs"].append(
            {"batch": batch, "step": "bf16", "step_s": bf16_s, "peak_gib": bf16_mem}
        )
        print(f"batch {batch} bf16: {bf16_s:.3f} s/step, peak {bf16_mem:.1f} GiB", flush=True)
    torch.cuda.empty_cache()
    qat = QatBench.build()
    result["student_build_s"] = qat.build_seconds
    for batch in args.batch:
        bf16_s = next(r["step_s"] for r in result["runs"] if r["batch"] == batch)
        for name in args.backends:
            seconds, peak = qat.time(batch, FakeQuantBackend(name), args.warmup, args.steps)
            result["runs"].append({
                "batch": batch, "step": f"qvgen-{name}", "step_s": seconds, "peak_gib": peak,
                "ratio_to_bf16": seconds / bf16_s,
            })  # fmt: skip
            print(f"batch {batch} qvgen ({name} fake quant): {seconds:.3f} s/step, "
                  f"{seconds / bf16_s:.2f}× bf16, peak {peak:.1f} GiB", flush=True)  # fmt: skip
    print(f"| batch | step | s/step | × bf16 | peak GiB | tokens/s |  ({result['device']})")
    print("|---|---|---|---|---|---|")
    for r in result["runs"]:
        r["tokens_per_s"] = TOKENS * r["batch"] / r["step_s"]
        ratio = f"{r['ratio_to_bf16']:.2f}" if "ratio_to_bf16" in r else "1"
        print(f"| {r['batch']} | {r['step']} | {r['step_s']:.3f} | {ratio} | "
              f"{r['peak_gib']:.1f} | {r['tokens_per_s']:.0f} |")  # fmt: skip
    print(f"student build {qat.build_seconds:.1f} s")
    if args.profile:
        for name in args.backends:
            print(f"profile, batch {args.batch[0]}, {name} fake quant:")
            print(qat.profile(args.batch[0], FakeQuantBackend(name), args.profile))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
