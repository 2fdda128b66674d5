"""Comparison helpers that say where two tensors differ (after Liger-Kernel's verbose allclose)."""

from __future__ import annotations

import torch

_SHOWN = 10


def assert_close_verbose(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, what: str
) -> None:
    """Assert |actual − expected| ≤ atol + rtol·|expected| everywhere (rtol = atol = 0: equal).

    On failure the message lists the first mismatching indices with both values.
    """
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a = actual.detach().cpu().double()
    e = expected.detach().cpu().double()
    bad = ~((a - e).abs() <= atol + rtol * e.abs())
    if not bool(bad.any()):
        return
    idx = bad.nonzero()[:_SHOWN]
    rows = [
        f"  {tuple(i.tolist())}: got {a[tuple(i)].item():.9g}, expected {e[tuple(i)].item():.9g}"
        for i in idx
    ]
    raise AssertionError(
        f"{what}: {int(bad.sum())} of {bad.numel()} elements differ (rtol={rtol}, atol={atol}); "
        "first mismatches:\n" + "\n".join(rows)
    )
