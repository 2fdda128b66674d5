"""The transformer stage's resumable state, written by every run: ``OUT/transformer_state/``.

Files (the two binary ones 14 MB each for the shipped spec)::

    state.json            format version, the step reached, the planned total, the device type,
                          the encoders' fingerprint and the recipe of the run
    weights.safetensors   the trained weights (``model.*``) and their EMA (``ema.*``), float32
    optimizer.pt          AdamW's moments and step counts, the learning-rate schedule, the
                          stage's random generator, and the global ones (which no step reads
                          today; restored so that a step that comes to read them resumes exactly)

Restoring puts back every number the next step reads, so a stage split into pieces computes
what one long run computes: bit for bit on the CPU (``tests/recipes/tiny_model``), on CUDA up to
the non-determinism of its atomics-based kernels (and to the other kernels of another GPU model,
when the pieces run on different cards). The plan, ``total`` steps over which the cosine
schedule decays, is fixed by the piece that begins the stage (``--flow-steps``, or that cut to
fit ``--flow-seconds``) and travels in the state: no later piece re-plans it.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from recipes.tiny_model.config import TRANSFORMER_FIELDS, RecipeConfig
from recipes.tiny_model.progress import warmup_cosine

STATE_DIR = "transformer_state"
FORMAT_VERSION = 1
STATE_FILE = "state.json"
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
_FLAG = "--resume-transformer"


@dataclass(frozen=True)
class SavedState:
    """``state.json`` of a run to resume, read and checked before any heavy work."""

    run_dir: Path
    step: int
    total: int
    encoders: str

    @property
    def directory(self) -> Path:
        return self.run_dir / STATE_DIR

    def check_encoders(self, encoders: str) -> None:
        """Refuse to go on with encoders other than those the state trained on."""
        if encoders != self.encoders:
            raise ValueError(
                f"{_FLAG} {self.run_dir}: its transformer trained on other encoders "
                f"(fingerprint {self.encoders[:12]}…, loaded {encoders[:12]}…): the run's "
                "encoders/ does not belong to its transformer_state/"
            )


def read_state(run_dir: Path, config: RecipeConfig, device: torch.device) -> SavedState:
    """The state of the earlier run ``run_dir``, checked against this run's recipe and device."""
    if not run_dir.is_dir():
        raise ValueError(f"{_FLAG} {run_dir}: no such directory")
    directory = run_dir / STATE_DIR
    for name in (STATE_FILE, WEIGHTS_FILE, OPTIMIZER_FILE):
        if not (directory / name).is_file():
            raise ValueError(
                f"{_FLAG} {run_dir}: no {STATE_DIR}/{name} (expected the --out of an earlier "
                "train-base run that reached its transformer stage)"
            )
    meta = json.loads((directory / STATE_FILE).read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{_FLAG} {run_dir}: state format {meta.get('format')!r}, this code reads "
            f"{FORMAT_VERSION}"
        )
    ours = config.to_dict()
    differ = [f for f in TRANSFORMER_FIELDS if meta["recipe"].get(f) != ours[f]]
    if differ:
        theirs = ", ".join(f"--{f.replace('_', '-')} {meta['recipe'].get(f)}" for f in differ)
        raise ValueError(
            f"{_FLAG} {run_dir}: its run had {theirs}; this run has "
            f"{', '.join(config.flag(f) for f in differ)}: a piece repeats the recipe of the first"
        )
    if meta["device_type"] != device.type:
        raise ValueError(
            f"{_FLAG} {run_dir}: its state was trained on {meta['device_type']}, this run is on "
            f"{device.type}: run every piece on the same kind of device"
        )
    step, total = int(meta["step"]), int(meta["total"])
    if not 0 <= step < total <= config.flow_steps:
        raise ValueError(
            f"{_FLAG} {run_dir}: its state is at step {step} of a {total}-step plan "
            f"(--flow-steps {config.flow_steps}): "
            + ("nothing is left to train" if step >= total else "the counts do not fit")
        )
    return SavedState(run_dir, step, total, str(meta["encoders"]))


class FlowState:
    """What the transformer stage carries from one step to the next.

    ``step`` is the next step to run, ``total`` the plan; ``schedule`` reads ``total`` at every
    step, so a plan cut by the step budget takes effect at once.
    """

    def __init__(self, transformer: nn.Module, config: RecipeConfig, device: torch.device) -> None:
        self.device = device
        self.transformer = transformer.to(device).train()
        self.ema = copy.deepcopy(self.transformer).eval().requires_grad_(False)
        self.step = 0
        self.total = config.flow_steps
        self.optimizer = torch.optim.AdamW(
            self.transformer.parameters(),
            lr=config.flow_lr,
            betas=(0.9, 0.99),
            weight_decay=1e-4,
            fused=device.type == "cuda",
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, self.total, config.warmup_steps)
        )
        self.generator = torch.Generator(device).manual_seed(config.seed + 1)

    @property
    def complete(self) -> bool:
        return self.step >= self.total

    def save(self, directory: Path, config: RecipeConfig, encoders: str) -> None:
        """Write the state to ``directory`` (a new path; written whole or not at all)."""
        partial = directory.with_name(directory.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        tensors = {f"model.{k}": v for k, v in self.transformer.state_dict().items()}
        tensors |= {f"ema.{k}": v for k, v in self.ema.state_dict().items()}
        save_file(
            {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()},
            str(partial / WEIGHTS_FILE),
            metadata={"format": str(FORMAT_VERSION), "step": str(self.step)},
        )
        torch.save(self._counters(), partial / OPTIMIZER_FILE)
        meta: dict[str, Any] = {"format": FORMAT_VERSION, "step": self.step, "total": self.total}
        meta |= {"device_type": self.device.type, "encoders": encoders}
        meta["recipe"] = config.to_dict()
        (partial / STATE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        partial.rename(directory)

    def _counters(self) -> dict[str, Any]:
        counters: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
            "cpu_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            counters["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return counters

    def restore(self, saved: SavedState) -> None:
        """Load ``saved`` into this freshly built state (same recipe, device and encoders)."""
        weights = load_file(str(saved.directory / WEIGHTS_FILE), device=str(self.device))
        for prefix, module in (("model.", self.transformer), ("ema.", self.ema)):
            part = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
            expected = set(module.state_dict())
            if set(part) != expected:
                raise ValueError(
                    f"{_FLAG} {saved.run_dir}: {WEIGHTS_FILE} does not fit this transformer: "
                    f"missing {sorted(expected - set(part))[:5]}, "
                    f"unexpected {sorted(set(part) - expected)[:5]} ({prefix}*)"
                )
            module.load_state_dict(part)
        counters = torch.load(
            saved.directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True
        )
        self.optimizer.load_state_dict(counters["optimizer"])
        self.schedule.load_state_dict(counters["schedule"])
        self.generator.set_state(counters["generator"])
        torch.set_rng_state(counters["cpu_rng"])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(counters["cuda_rng"], self.device)
        self.step, self.total = saved.step, saved.total
