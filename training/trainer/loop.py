"""The QAT loop: distil the frozen teacher into the quantized student, step by step.

Step s (0-based), on every process:

1. the clips and per-sample generators of (s, rank) (``data.order``), their cached latents and
   prompt embeddings, noised by the family's rule (``denoiser``), with caption dropout;
2. teacher (no gradient) and student on the same x_t, t and prompt, bf16 autocast on GPU;
   loss = mean((student − teacher)²);
3. backward (gradient checkpointing recomputes the student's blocks), Φ gradients averaged
   over processes, global gradient norm measured then clipped to ``grad_clip``, AdamW step,
   schedule step;
4. the log record {step, loss, grad_norm, phi_rank, lr, lr_clip, seconds};
5. Φ brought to step s + 1 (``sync_rank_decay``); when its modules were replaced, the
   optimizer's Φ group follows (``optim.replace_phi_group``);
6. a checkpoint every ``checkpoint_every`` steps and at the end.

Resuming from a checkpoint of ``steps_done`` = n rebuilds exactly the state the uninterrupted
run had before step n, so the losses of steps ≥ n repeat bit for bit on the same hardware.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from qvgen.family import ModelFamily, PipelineGeometry
from training.data.cache import LatentCache, LatentSource, build_cache
from training.data.frames import Bucket
from training.data.order import SampleOrder
from training.quant.rank_decay import RankDecaySchedule, sync_rank_decay
from training.trainer import distributed as D
from training.trainer.config import Parallelism, TrainConfig
from training.trainer.denoiser import Noiser, NoisyBatch, cogvideox_rotary, run_transformer
from training.trainer.models import freeze, load_transformer, phi_rank
from training.trainer.optim import (
    Group,
    build_optimizer,
    build_schedule,
    named_groups,
    replace_phi_group,
)
from training.trainer.state import (
    latest_checkpoint,
    load_trainer_state,
    rebuild_student,
    staging_dir,
    steps_done_of,
    trainer_file,
    truncate_log,
    write_checkpoint,
)

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sharded(config: TrainConfig, ctx: D.DistContext) -> bool:
    return config.parallel is Parallelism.FSDP and ctx.distributed


def _batch_to(batch: NoisyBatch, device: torch.device, dtype: torch.dtype) -> NoisyBatch:
    rotary = None
    if batch.rotary is not None:
        rotary = (batch.rotary[0].to(device), batch.rotary[1].to(device))
    return NoisyBatch(
        batch.hidden_states.to(device, dtype),
        batch.timestep.to(device),
        batch.text.to(device, dtype),
        rotary,
    )


@dataclass
class Run:
    """Everything the loop touches."""

    config: TrainConfig
    ctx: D.DistContext
    family: ModelFamily
    teacher: nn.Module
    student: nn.Module  # unwrapped: the module whose Φ rank decay edits
    model: nn.Module  # what the step calls: the student, DDP(student) or the sharded student
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    cache: LatentSource
    order: SampleOrder
    noiser: Noiser
    schedule: RankDecaySchedule
    teacher_dtype: torch.dtype

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)


def train_step(run: Run, step: int) -> dict[str, float]:
    indices = run.order.clip_indices(step, run.ctx.rank)
    generators = run.order.generators(step, run.ctx.rank)
    samples = [run.cache.load(i) for i in indices]
    batch = run.noiser.noisy_batch(samples, generators, run.cache.empty_text)
    if run.family is ModelFamily.COGVIDEOX:
        _, frames, _, h, w = batch.hidden_states.shape
        batch.rotary = cogvideox_rotary(run.student, frames, h, w)
    device = run.ctx.device
    with _autocast(device):
        with torch.no_grad():
            target = run_transformer(
                run.family, run.teacher, _batch_to(batch, device, run.teacher_dtype)
            )
        prediction = run_transformer(run.family, run.model, _batch_to(batch, device, torch.float32))
        loss = F.mse_loss(prediction.float(), target.float())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    D.sync_phi_gradients(run.model, run.ctx)
    grad_norm = D.clip_gradients(run.model, run.config.grad_clip)
    lrs = [g["lr"] for g in run.optimizer.param_groups]
    run.optimizer.step()
    run.scheduler.step()
    return {
        "loss": D.mean_over_processes(loss, run.ctx),
        "grad_norm": grad_norm,
        "lr": lrs[Group.WEIGHTS],
        "lr_clip": lrs[Group.CLIP],
    }


def _trainer_state(run: Run, steps_done: int) -> dict[str, Any]:
    groups = named_groups(run.student)
    state: dict[str, Any] = {
        "steps_done": steps_done,
        "optimizer": run.optimizer.state_dict(),
        "group_names": [groups.names[g] for g in Group],
        "scheduler": run.scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    if run.ctx.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(run.ctx.device)
    return state


def _student_state(run: Run) -> dict[str, torch.Tensor]:
    if _sharded(run.config, run.ctx):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(run.student, options=options)
        return {k: v for k, v in full.items() if isinstance(v, torch.Tensor)}
    return run.student.state_dict()


def save(run: Run, steps_done: int) -> None:
    sharded = _sharded(run.config, run.ctx)
    student_state = _student_state(run)  # collective under FSDP: every process calls it
    if sharded:
        staging = staging_dir(run.run_dir, steps_done)
        staging.mkdir(parents=True, exist_ok=True)
        torch.save(_trainer_state(run, steps_done), staging / trainer_file(run.ctx.rank))
        D.barrier(run.ctx)
    if run.ctx.is_main:
        trainer = {} if sharded else {trainer_file(None): _trainer_state(run, steps_done)}
        write_checkpoint(run.run_dir, steps_done, student_state, trainer, run.config)
    D.barrier(run.ctx)


def _restore_trainer(run: Run, checkpoint: Path) -> None:
    sharded = _sharded(run.config, run.ctx)
    state = load_trainer_state(checkpoint, run.ctx.rank if sharded else None)
    groups = named_groups(run.student)
    names = [groups.names[g] for g in Group]
    if state["group_names"] != names:
        raise ValueError(f"{checkpoint}: optimizer groups do not match the rebuilt student")
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and run.ctx.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], run.ctx.device)


def _open_cache(config: TrainConfig, ctx: D.DistContext) -> LatentCache:
    assert config.data is not None
    bucket = Bucket(config.frames, config.height, config.width)
    root = Path(config.cache_dir) if config.cache_dir else Path(config.data) / ".qvgen-cache"
    dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    if ctx.is_main:
        cache = build_cache(config.model, config.data, bucket, root, ctx.device, dtype)
    D.barrier(ctx)
    if not ctx.is_main:
        cache = build_cache(config.model, config.data, bucket, root, ctx.device, dtype)
    return cache


def prepare(config: TrainConfig, ctx: D.DistContext, resume: bool) -> tuple[Run, int]:
    """Build (or restore) everything; returns the run and the first step to execute."""
    geometry = PipelineGeometry.read(config.model)
    geometry.check_bucket(config.frames, config.height, config.width)
    cache = _open_cache(config, ctx)
    checkpoint = latest_checkpoint(Path(config.out)) if resume else None
    steps_done = 0 if checkpoint is None else steps_done_of(checkpoint)
    fsdp = _sharded(config, ctx)
    teacher = freeze(load_transformer(config.model))
    # Build the student where its weight search is fast; under FSDP the full model may not
    # fit one device, so it is built on the CPU and moves in shards.
    build_device = torch.device("cpu") if fsdp else ctx.device
    teacher.to(build_device)
    student = rebuild_student(teacher, config, checkpoint, steps_done)
    if not fsdp:
        student.to(ctx.device)
    if config.gradient_checkpointing:
        student.enable_gradient_checkpointing()  # type: ignore[operator]
    student.train()
    teacher_dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    if teacher_dtype != torch.float32:
        del teacher
        teacher = freeze(load_transformer(config.model, teacher_dtype))
    if fsdp:
        D.shard(teacher, ctx)
    else:
        teacher.to(ctx.device)
    model = D.wrap_student(student, ctx, config.parallel)
    optimizer = build_optimizer(student, config)
    run = Run(
        config=config,
        ctx=ctx,
        family=geometry.family,
        teacher=teacher,
        student=student,
        model=model,
        optimizer=optimizer,
        scheduler=build_schedule(optimizer, config),
        cache=cache,
        order=SampleOrder(len(cache), config.batch_size, ctx.world_size, config.seed),
        noiser=Noiser.from_pipeline(geometry.family, config.model, config.caption_dropout),
        schedule=config.schedule(),
        teacher_dtype=teacher_dtype,
    )
    if checkpoint is not None:
        _restore_trainer(run, checkpoint)
        logger.info("resumed from %s: %d steps done", checkpoint, steps_done)
    return run, steps_done


@contextlib.contextmanager
def _log_writer(path: Path, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    with path.open("a", encoding="utf-8") as handle:
        yield handle


def run_loop(run: Run, first_step: int) -> None:
    config = run.config
    total = config.total_steps
    log_path = run.run_dir / LOG_FILE
    if run.ctx.is_main:
        truncate_log(log_path, first_step)
    bar = tqdm(
        range(first_step, total),
        initial=first_step,
        total=total,
        desc="qat",
        unit="step",
        disable=not run.ctx.is_main,
    )
    with _log_writer(log_path, run.ctx.is_main) as log:
        for step in bar:
            started = time.perf_counter()
            record: dict[str, float | int] = {"step": step, **train_step(run, step)}
            record["phi_rank"] = phi_rank(run.student)
            record["seconds"] = time.perf_counter() - started
            if sync_rank_decay(run.student, run.schedule, step + 1):
                replace_phi_group(run.optimizer, run.student)
            if log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
            bar.set_postfix(
                loss=f"{record['loss']:.4g}",
                gnorm=f"{record['grad_norm']:.3g}",
                rank=record["phi_rank"],
                lr=f"{record['lr']:.2e}",
            )
            done = step + 1
            if done % config.checkpoint_every == 0 or done == total:
                save(run, done)
