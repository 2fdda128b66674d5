"""Fixtures of the engine tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def reference_backend() -> Iterator[None]:
    """Packed layers on the reference backend for a whole test module, as on a CPU without
    Triton's interpreter: for tests of the engine's wiring, which the interpreted Triton kernels
    (``make test`` sets ``TRITON_INTERPRET=1``) would only slow down. The kernels' own tests
    (``tests/service/kernels``) run those."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("TRITON_INTERPRET", raising=False)
        yield
