"""Which engine a worker runs, built and warmed up before the worker says it is ready.

A worker registers (heartbeats, publishes its model's rules) only after ``build_engine``
returns, so the diffusers engine compiles its transformer and runs one warm-up generation here:
the first job then starts at full speed, and a compile failure has already fallen back to eager
(``service.engine.diffusers_engine``) instead of failing a job.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from service.engine.caching.offer import CacheDefaults
from service.engine.types import AttentionKernel, CompilePolicy, Engine, GenerationRequest
from service.worker.noop_engine import NoopEngine

if TYPE_CHECKING:  # imported where used: the diffusers stack takes seconds to import
    from service.engine.diffusers_engine import DiffusersEngine

logger = logging.getLogger(__name__)

# Steps of the warm-up generation: every step runs the same shapes, so one would do; two also
# run the scheduler's second-step path.
WARM_UP_STEPS = 2


class EngineKind(enum.StrEnum):
    DIFFUSERS = "diffusers"  # --model is a diffusers pipeline directory
    NOOP = "noop"  # --model is only a name; frames are synthetic (benchmarks, queue tests)


@dataclass(frozen=True)
class EngineStart:
    """How a worker's diffusers engine starts.

    compile: whether to compile the transformer (``CompilePolicy``; AUTO: on CUDA).
    compile_cache_dir: inductor's and Triton's code cache (None: their defaults).
    compile_backend: the ``torch.compile`` backend ("inductor" to serve; tests and CPU
        benchmarks use "aot_eager", which skips inductor's slow CPU code generation).
    warm_up: the request of the warm-up generation (the size the worker will mostly serve),
        or None for no warm-up.
    attention: the self-attention kernel.
    cache_defaults: what requests that leave out the cache and guidance-stop fields get on this
        model (the settings' ``default_cache`` and ``default_guidance_stop``); published with
        its rules, so that the API fills them in.
    """

    compile: CompilePolicy = CompilePolicy.AUTO
    compile_cache_dir: Path | None = None
    compile_backend: str = "inductor"
    warm_up: GenerationRequest | None = None
    attention: AttentionKernel = AttentionKernel.SDPA
    cache_defaults: CacheDefaults = field(default_factory=CacheDefaults)


def warm_up_request(
    width: int, height: int, num_frames: int, guidance_scale: float
) -> GenerationRequest:
    """A short generation at the size (and guidance, which sets the batch) to be served."""
    return GenerationRequest(
        prompt="warm-up",
        width=width,
        height=height,
        num_frames=num_frames,
        num_inference_steps=WARM_UP_STEPS,
        guidance_scale=guidance_scale,
    )


def model_id_for(kind: EngineKind, model: str, model_id: str | None) -> str:
    """The id clients pass as ``model``: explicit, else the directory name (or the name)."""
    if model_id:
        return model_id
    return Path(model).name if kind is EngineKind.DIFFUSERS else model


def build_engine(
    kind: EngineKind,
    model: str,
    device: str,
    model_id: str,
    step_delay_s: float = 0.0,
    start: EngineStart | None = None,
) -> Engine:
    """What a worker runs before it says ready: ``load_diffusers_engine``, then
    ``warm_up_engine`` (``benchmarks/ready_time.py`` times the two apart)."""
    if kind is EngineKind.NOOP:
        return NoopEngine(model_id, step_delay_s=step_delay_s)
    start = start or EngineStart()
    engine = load_diffusers_engine(model, device, model_id, start)
    if start.warm_up is not None:
        warm_up_engine(engine, start.warm_up)
    return engine


def load_diffusers_engine(
    model: str, device: str, model_id: str, start: EngineStart
) -> DiffusersEngine:
    """The first half of ``build_engine``: the pipeline loaded, its transformer wrapped for
    compilation (which happens at the first call: ``warm_up``)."""
    # Imported here: the diffusers stack takes seconds to import and the no-op worker needs none.
    from service.engine.compilation import CompileOptions
    from service.engine.diffusers_engine import DiffusersEngine

    logger.info("loading %s on %s as model %r", model, device, model_id)
    options = CompileOptions(
        policy=start.compile, cache_dir=start.compile_cache_dir, backend=start.compile_backend
    )
    return DiffusersEngine.from_pretrained(
        model,
        device=device,
        model_id=model_id,
        compile_options=options,
        attention=start.attention,
        cache_defaults=start.cache_defaults,
    )


def warm_up_engine(engine: DiffusersEngine, request: GenerationRequest) -> None:
    """The second half of ``build_engine``: one generation of ``request``, which compiles."""
    try:
        engine.warm_up(request)
    except ValueError as error:
        # The default size this model refuses: requests that leave the size out will be
        # refused too, but the worker can still serve the others.
        logger.warning("%s: no warm-up, the default request is refused: %s", engine.model_id, error)
