"""Replace named ``nn.Linear`` modules of a model by other modules, in place.

Training swaps in fake-quantized layers, the packed loader and the benchmarks swap in packed
low-bit layers; all of them go through ``swap_linears`` so that a path that is missing or not a
plain ``nn.Linear`` is refused the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn


class LinearSwapError(ValueError):
    """A path to swap is not a plain ``nn.Linear`` of the model."""


def find_linear(model: nn.Module, name: str) -> nn.Linear:
    """The ``nn.Linear`` at dotted path ``name``; ``LinearSwapError`` naming it otherwise."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise LinearSwapError(f"{name}: layer not found in the model") from None
    if type(module) is not nn.Linear:
        raise LinearSwapError(
            f"{name}: expected nn.Linear in the model, got {type(module).__name__}"
        )
    return module


def swap_linears(
    model: nn.Module, names: Iterable[str], build: Callable[[str, nn.Linear], nn.Module]
) -> list[str]:
    """Replace each linear at a path of ``names`` by ``build(path, linear)``; returns the paths.

    Every path is checked before the first replacement, so a bad one leaves ``model`` as it was.
    """
    targets = [(name, find_linear(model, name)) for name in names]
    for name, linear in targets:
        parent_path, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, child, build(name, linear))
    return [name for name, _ in targets]


def plain_linears(model: nn.Module) -> list[str]:
    """Paths of the plain ``nn.Linear`` modules left in ``model`` (full precision)."""
    return [name for name, m in model.named_modules() if type(m) is nn.Linear]
