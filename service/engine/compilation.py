"""``torch.compile`` of a pipeline's transformer, its on-disk cache, and the way back to eager.

Compilation is lazy: ``torch.compile`` only wraps the modules, and dynamo traces and inductor
generates code on the first forward call. So a failure shows at the first generation (the
worker's warm-up, ``DiffusersEngine.warm_up``), which then calls ``CompiledModules.undo`` and
serves eagerly instead of crashing.

Two scopes:

* ``CompileScope.BLOCKS`` (default) compiles each repeated transformer block on its own
  ("regional compilation"): the blocks share one graph (same code, same shapes; parameters are
  graph inputs), so a 40-block Wan 14B compiles one block's graph instead of the whole model's,
  at nearly the same run time, since the blocks hold all but a few percent of the work;
* ``CompileScope.WHOLE`` compiles the transformer's whole forward call as one graph.

Both compile in place: the pipeline keeps its own transformer object with its config and
methods, and state-dict names do not change. A block's compiled code is its own ``forward``
(``torch.compile`` of the bound method, set on the instance), not its whole ``__call__``
(``nn.Module.compile``): hooks that wrap a block's ``forward`` afterwards — diffusers' cache
hooks, ``service.engine.caching`` — then run eagerly around the compiled code instead of being
traced into it, and switching a policy on or off never invalidates a graph. The whole
transformer is compiled with ``nn.Module.compile``, so block hooks would be traced there:
the engine offers no cache policy with that scope.

The cache: inductor's FX-graph and AOT caches and Triton's kernel cache live under
``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR``; ``use_cache_dir`` points both into one
directory, so that a restarted worker on the same machine (or volume) finds the generated code
there and skips code generation — only dynamo's trace runs again.
"""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from service.engine.types import CompilePolicy

logger = logging.getLogger(__name__)


class CompileScope(enum.StrEnum):
    BLOCKS = "blocks"  # each repeated transformer block (module docstring)
    WHOLE = "whole"  # the transformer's whole forward call


@dataclass(frozen=True)
class CompileOptions:
    """How the engine compiles its transformer.

    policy: ``CompilePolicy``; AUTO compiles on CUDA only.
    scope: ``CompileScope``.
    cache_dir: where inductor and Triton keep generated code across processes; None leaves
        their own defaults (``/tmp/torchinductor_<user>``, ``~/.triton/cache``).
    backend: the ``torch.compile`` backend ("inductor" to serve; tests use "aot_eager").
    """

    policy: CompilePolicy = CompilePolicy.AUTO
    scope: CompileScope = CompileScope.BLOCKS
    cache_dir: Path | None = None
    backend: str = "inductor"

    def wanted(self, is_cuda: bool) -> bool:
        if self.policy is CompilePolicy.AUTO:
            return is_cuda
        return self.policy is CompilePolicy.ON


@dataclass
class CompiledModules:
    """The modules compiled in place, so that ``undo`` can return them to eager execution."""

    modules: list[nn.Module] = field(default_factory=list)
    scope: CompileScope = CompileScope.BLOCKS

    def undo(self) -> None:
        for module in self.modules:
            if self.scope is CompileScope.BLOCKS:
                # The instance's compiled forward hides the class's eager one.
                module.__dict__.pop("forward", None)
            else:
                # nn.Module.compile stores the compiled call in _compiled_call_impl; without it
                # the module's __call__ runs the eager _call_impl again.
                module._compiled_call_impl = None
        self.modules.clear()


def is_compiled(module: nn.Module) -> bool:
    """Whether ``compile_transformer`` compiled ``module`` (either scope)."""
    forward = module.__dict__.get("forward")
    return module._compiled_call_impl is not None or hasattr(forward, "_torchdynamo_orig_callable")


def use_cache_dir(cache_dir: Path) -> None:
    """Keep inductor's and Triton's generated code under ``cache_dir`` (created if missing)."""
    inductor, triton = cache_dir / "inductor", cache_dir / "triton"
    for path in (inductor, triton):
        path.mkdir(parents=True, exist_ok=True)
    # Both are read when code is first generated or loaded, so setting them before the first
    # compiled call is enough.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor)
    os.environ["TRITON_CACHE_DIR"] = str(triton)
    torch._inductor.config.fx_graph_cache = True


def repeated_blocks(transformer: nn.Module) -> list[nn.Module]:
    """The entries of the transformer's top-level ``nn.ModuleList``s of one block class (Wan's
    ``blocks``, CogVideoX's ``transformer_blocks``)."""
    blocks: list[nn.Module] = []
    for child in transformer.children():
        if isinstance(child, nn.ModuleList) and len({type(m) for m in child}) == 1:
            blocks.extend(child)
    if not blocks:
        raise ValueError(f"{type(transformer).__name__} has no list of repeated blocks to compile")
    return blocks


def compile_transformer(transformer: nn.Module, options: CompileOptions) -> CompiledModules:
    """Compile ``transformer`` in place per ``options.scope`` (lazily: see the module docstring)."""
    if options.cache_dir is not None:
        use_cache_dir(options.cache_dir)
    targets = (
        repeated_blocks(transformer) if options.scope is CompileScope.BLOCKS else [transformer]
    )
    for module in targets:
        if options.scope is CompileScope.BLOCKS:
            module.forward = torch.compile(module.forward, backend=options.backend)
        else:
            module.compile(backend=options.backend)
    logger.info(
        "torch.compile (%s backend): %d %s of %s; code cache %s",
        options.backend,
        len(targets),
        "blocks" if options.scope is CompileScope.BLOCKS else "module",
        type(transformer).__name__,
        os.environ.get("TORCHINDUCTOR_CACHE_DIR", "inductor's default"),
    )
    return CompiledModules(targets, options.scope)
