"""The fused Triton fake quantizers against eager PyTorch: the same forward values bit for bit,
the same gradients up to float32 rounding. On a GPU they run compiled; without one, in Triton's
CPU interpreter (``TRITON_INTERPRET=1``, as ``make test`` sets)."""

from __future__ import annotations

import pytest
import torch

from qvgen.triton_support import interpreting, triton_installed
from training.quant.activation_clip import LearnedClipActivationQuantizer
from training.quant.config import QuantScheme
from training.quant.kernels.dispatch import FakeQuantBackend, fake_quant_backend, use_triton
from training.quant.quant_linear import QuantLinear
from training.quant.weight_lsq import LSQPlusWeightQuantizer
from training.quant.weight_minmax import MinMaxWeightQuantizer

pytestmark = pytest.mark.skipif(
    not (triton_installed() and (interpreting() or torch.cuda.is_available())),
    reason="needs Triton and a GPU, or TRITON_INTERPRET=1",
)
DEVICE = torch.device("cpu" if interpreting() else "cuda")


def _activations(shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.rand((*shape[:-1], 1), generator=g) * 4
    x[..., 3] += 9.0  # an outlier channel, so the clip factors matter
    if shape[-1] > 12:
        x[..., 5:12] = x[..., 5:6]  # ties at a row's extremes share their gradient
    x.view(-1, shape[-1])[0] = torch.rand(shape[-1], generator=g) + 0.5  # an all-positive token
    return x.to(dtype)


def _both(
    module: torch.nn.Module, run: object, *inputs: torch.Tensor
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """(outputs and gradients of ``run`` eager on the CPU — the reference semantics — and the
    same fused on DEVICE, brought back to the CPU)."""
    results = []
    for backend, device in ((FakeQuantBackend.EAGER, "cpu"), (FakeQuantBackend.TRITON, DEVICE)):
        module.to(device)
        leaves = [t.detach().to(device).requires_grad_(True) for t in inputs]
        with fake_quant_backend(backend):
            out, params = run(*leaves)  # type: ignore[operator]
            grad_out = torch.linspace(-1.0, 1.0, out.numel(), device=device).view(out.shape)
            grad_out = grad_out.to(out.dtype)
            (out * grad_out).sum().backward()
        grads = [*(t.grad for t in leaves), *(p.grad for p in params)]
        results.append([out.detach().cpu(), *(None if g is None else g.cpu() for g in grads)])
        for p in params:
            p.grad = None
    return results[0], results[1]


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 7, 40), (5, 1100)])  # 1100: two chunks of a row
def test_token_fake_quant_matches_eager(
    bits: int, dtype: torch.dtype, shape: tuple[int, ...]
) -> None:
    quantizer = LearnedClipActivationQuantizer(bits, groups=4, clip_init=0.9)
    with torch.no_grad():
        quantizer.clip_logits.add_(torch.linspace(-0.5, 0.8, 8).view(4, 2))
    quantizer.set_clip_group(torch.tensor([1, 3]) if len(shape) == 3 else torch.tensor([2]))
    x = _activations(shape, seed=bits, dtype=dtype)

    def run(leaf: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return quantizer.fake_quant(leaf, dtype), [quantizer.clip_logits]

    eager, fused = _both(quantizer, run, x)
    assert fused[0].dtype == dtype
    assert torch.equal(eager[0], fused[0])  # forward: bit for bit
    for e, f in zip(eager[1:], fused[1:], strict=True):
        assert e is not None and f is not None
        torch.testing.assert_close(f.float(), e.float(), rtol=1e-4, atol=1e-4)
    assert fused[2] is not None and fused[2].abs().sum() > 0  # the clip factors learn


@pytest.mark.parametrize("bits", [3, 4])
def test_lsq_weight_fake_quant_matches_eager(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(24, 1030, generator=g)
    w[:, 0] *= 8
    quantizer = LSQPlusWeightQuantizer(w, bits, candidates=20)

    def run(leaf: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return quantizer.fake_quant(leaf, torch.float32), [quantizer.scale, quantizer.zero_point]

    eager, fused = _both(quantizer, run, w)
    assert torch.equal(eager[0], fused[0])
    for e, f in zip(eager[1:], fused[1:], strict=True):
        assert e is not None and f is not None
        torch.testing.assert_close(f, e, rtol=1e-4, atol=1e-5)


def test_minmax_weight_fake_quant_in_bf16_matches_eager() -> None:
    w = torch.randn(16, 48, generator=torch.Generator().manual_seed(1))
    quantizer = MinMaxWeightQuantizer(w, 4)
    expected = quantizer(w).to(torch.bfloat16)
    with fake_quant_backend(FakeQuantBackend.TRITON):
        fused = quantizer.to(DEVICE).fake_quant(w.to(DEVICE), torch.bfloat16)
    assert torch.equal(fused.cpu(), expected)


@pytest.mark.parametrize(
    ("scheme", "rank", "groups", "dtype"),
    [
        (QuantScheme(), 4, [7, 30], torch.float32),  # QVGen: learned clip, LSQ+, Φ
        (QuantScheme(), 0, [7, 30], torch.float32),  # LSQ baseline: no Φ
        (QuantScheme(weight_bits=3, activation_bits=3), 4, [12], torch.float32),  # one group
        (QuantScheme.rtn(4, 4), 0, [3, 41], torch.float32),  # min-max, nothing learnable
        (QuantScheme(), 4, [7, 30], torch.bfloat16),  # a half-precision input
    ],
)
def test_quant_linear_trains_the_same_through_either_backend(
    scheme: QuantScheme, rank: int, groups: list[int], dtype: torch.dtype
) -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(12, 40, generator=g)
    layer = QuantLinear("blk.ffn", weight, torch.randn(12), scheme, rank=rank)
    layer.set_clip_group(torch.tensor(groups))
    x = _activations((2, 5, 40), seed=9, dtype=dtype)

    def run(leaf: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return layer(leaf), list(layer.parameters())

    eager, fused = _both(layer, run, x)
    # x̂ and Q_w(W) + Φ are equal bit for bit (above); the GEMM's summation order is the
    # device's own, so on a GPU the outputs agree to float32 rounding.
    # In bf16 the fused bias gradient is summed in float32, the eager one in bf16.
    half = dtype != torch.float32
    out_tol = {"rtol": 1e-2, "atol": 1e-2} if half else {"rtol": 1e-6, "atol": 1e-5}
    grad_tol = {"rtol": 1e-2, "atol": 1e-2} if half else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(fused[0].float(), eager[0].float(), **out_tol)
    for e, f in zip(eager[1:], fused[1:], strict=True):
        assert (e is None) == (f is None)
        if e is not None and f is not None:
            torch.testing.assert_close(f.float(), e.float(), **grad_tol)


def test_auto_backend_takes_the_kernels_on_a_gpu_only() -> None:
    x = torch.zeros(2, 3)
    with fake_quant_backend(FakeQuantBackend.AUTO):
        # CPU training stays eager even when the interpreter could run the kernels
        assert not use_triton(x)
        assert use_triton(x.to(DEVICE)) == (DEVICE.type == "cuda")
    with fake_quant_backend(FakeQuantBackend.EAGER):
        assert not use_triton(x.to(DEVICE))
    with fake_quant_backend(FakeQuantBackend.TRITON):
        if DEVICE.type == "cpu":
            assert use_triton(x)  # the interpreter
        else:
            with pytest.raises(RuntimeError, match="not a CUDA GPU"):
                use_triton(x)


def test_backend_from_the_environment_names_the_allowed_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training.quant.kernels import dispatch

    monkeypatch.setenv(dispatch.ENV_VAR, "eager")
    assert dispatch._from_environment() is FakeQuantBackend.EAGER
    monkeypatch.setenv(dispatch.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="QVGEN_FAKE_QUANT must be one of auto, eager, triton"):
        dispatch._from_environment()
