"""Quantization fused into the norm + modulation and into the GELU: the codes are the contract's
codes of the kernel's own activation, and that activation is diffusers' within one rounding of
the dtype (``service/kernels/prologue_quant.py`` states the bound)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers.models.normalization import FP32LayerNorm
from torch._subclasses.fake_tensor import FakeTensorMode

pytest.importorskip("triton")

from qvgen.numerics import quantize_tokens
from service.kernels.activation_quant import QuantizedActivations, QuantLaunch
from service.kernels.fused_projections import FusedLowBitLinear
from service.kernels.lowbit_linear import KernelBackend, TritonLowBitLinear, build_lowbit_linear
from service.kernels.prologue import GeluTanh, NormModulation
from service.kernels.prologue_quant import gelu_quantize, norm_modulation_quantize
from tests.service.kernels.compare import assert_close_verbose
from tests.service.kernels.test_lowbit_linear import packed_weights

BLOCK_K = 64
# Whole rows in registers (the interpreter's choice) and an explicit chunked launch whose chunk
# does not divide K: the two code paths of each kernel.
LAUNCHES = [None, QuantLaunch(block_m=4, chunk=32, num_warps=4)]


def assert_contract(
    qa: QuantizedActivations, act: torch.Tensor, clips: torch.Tensor, bits: int
) -> None:
    """codes, s_x, Σ c_x of every table = ``quantize_tokens`` of the kernel's activation."""
    k = act.shape[-1]
    a = act.float().reshape(-1, k).cpu()
    for c in range(clips.shape[0]):
        clip = clips[c].cpu()
        ref = quantize_tokens(a, clip[:, 0:1], clip[:, 1:2], bits)
        assert_close_verbose(qa.codes[c, :, :k], ref.codes, 0, 0, f"codes of table {c}")
        assert not bool(qa.codes[c, :, k:].any()), "padding codes must be 0"
        assert_close_verbose(qa.scale[c], ref.scale.squeeze(1), 0, 0, f"s_x of table {c}")
        assert_close_verbose(qa.code_sum[c], ref.codes.sum(1), 0, 0, f"Σ c_x of table {c}")


def assert_within_rounding(act: torch.Tensor, expected: torch.Tensor, what: str) -> int:
    """|a − a_ref| ≤ ulp_dtype(max(|a|, |a_ref|)) + 2^-18 · max_row |a_ref|; returns how many
    elements differ at all."""
    a, e = act.float().cpu(), expected.float().cpu()
    assert act.dtype == expected.dtype, what
    biggest = torch.maximum(a.abs(), e.abs())
    ulp = torch.finfo(act.dtype).eps * torch.exp2(torch.floor(torch.log2(biggest.clamp(min=1e-30))))
    row_scale = e.abs().amax(dim=-1, keepdim=True)
    bad = (a - e).abs() > ulp + 2.0**-18 * row_scale
    if bool(bad.any()):
        index = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} beyond one rounding, first at {index}: "
            f"{a[index].item():.9g} vs {e[index].item():.9g}"
        )
    return int((a != e).sum())


def clip_tables(tables: int, rows: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.4 + 0.6 * torch.rand(tables, rows, 2, generator=g)


@pytest.mark.parametrize(
    ("dtype", "modulation", "affine", "tables"),
    [
        (torch.bfloat16, "sample", False, 3),  # self-attention's input, fused q/k/v
        (torch.bfloat16, "none", True, 1),  # cross-attention's query input
        (torch.float16, "token", False, 1),  # Wan 2.2's per-token modulation
        (torch.float32, "sample", True, 2),
    ],
)
@pytest.mark.parametrize("launch", LAUNCHES, ids=["rows", "chunks"])
def test_norm_modulation_codes_are_the_contract(
    dtype: torch.dtype, modulation: str, affine: bool, tables: int, launch: QuantLaunch | None,
    device: torch.device,
) -> None:  # fmt: skip
    g = torch.Generator().manual_seed(tables)
    samples, tokens, k = 2, 7, 100  # K not a multiple of the chunk or of BLOCK_K
    # A large mean and a few outliers, as Wan's residual stream has.
    x = 3 + 2 * torch.randn(samples, tokens, k, generator=g)
    x[:, :, 5] *= 40
    x = x.to(dtype).to(device)
    norm = FP32LayerNorm(k, eps=1e-6, elementwise_affine=affine).to(device)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(1 + 0.3 * torch.randn(k, generator=g))
            norm.bias.copy_(0.2 * torch.randn(k, generator=g))
    shift = scale = None
    if modulation != "none":
        per = 1 if modulation == "sample" else tokens
        shift = (0.5 * torch.randn(samples, per, k, generator=g)).to(device)
        scale = (0.5 * torch.randn(samples, per, k, generator=g)).to(device)
    prologue = NormModulation(x, norm, shift, scale)
    clips = clip_tables(tables, samples * tokens, seed=1).to(device)
    qa, act = norm_modulation_quantize(
        x.reshape(-1, k), norm.weight, norm.bias, norm.eps, shift, scale, clips, 4, BLOCK_K,
        launch, store_activation=True,
    )  # fmt: skip
    assert act is not None and act.dtype == dtype
    assert qa.codes.shape == (tables, samples * tokens, BLOCK_K * 2)
    assert_contract(qa, act, clips, 4)
    with torch.no_grad():
        expected = prologue.materialize()
    differing = assert_within_rounding(act.reshape(x.shape), expected, f"{dtype} norm activation")
    if dtype != torch.float32:
        # A one-ulp flip needs the two float32 values to straddle a rounding boundary: rare.
        # (A cast that truncated instead of rounding would move about half of them.)
        assert differing <= x.numel() // 50, f"{differing} of {x.numel()} differ"
    if launch is None:  # the prologue's own entry points: the same kernel, default launch
        assert torch.equal(prologue.activation(), act.reshape(x.shape))
        assert torch.equal(prologue.quantize(clips, 4, BLOCK_K).codes, qa.codes)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("launch", LAUNCHES, ids=["rows", "chunks"])
def test_gelu_codes_are_the_contract(
    dtype: torch.dtype, launch: QuantLaunch | None, device: torch.device
) -> None:
    g = torch.Generator().manual_seed(5)
    # Down to −12: the tail where ½h(1 + tanh u) cancels and h·σ(2u) does not.
    h = (3 * torch.randn(13, 75, generator=g)).clamp(min=-12).to(dtype).to(device)
    h[0, :8] = torch.tensor([-12.0, -9.0, -6.0, -4.0, -1e-3, 0.0, 1e-3, 7.0], dtype=dtype)
    clips = clip_tables(2, 13, seed=2).to(device)
    qa, act = gelu_quantize(h, clips, 4, BLOCK_K, launch, store_activation=True)
    assert act is not None
    assert_contract(qa, act, clips, 4)
    expected = GeluTanh(h).materialize()
    assert_within_rounding(act, expected, f"{dtype} GELU activation")
    if dtype != torch.float32:
        # Apart from the tail (h < −4, |a| < 1e-4, where the tanh form cancels), flips are rare.
        body = h.cpu() > -4
        differing = int((act.cpu() != expected.cpu())[body].sum())
        assert differing <= int(body.sum()) // 50, f"{differing} of {int(body.sum())} differ"


def test_one_row_and_three_bits(device: torch.device) -> None:
    x = torch.randn(1, 1, 37, generator=torch.Generator().manual_seed(0)).to(device)
    norm = FP32LayerNorm(37, eps=1e-6, elementwise_affine=False).to(device)
    clips = clip_tables(1, 1, seed=3).to(device)
    qa, act = norm_modulation_quantize(
        x.reshape(1, 37), None, None, norm.eps, None, None, clips, 3, BLOCK_K,
        store_activation=True,
    )  # fmt: skip
    assert act is not None
    assert_contract(qa, act, clips, 3)
    assert int(qa.codes.abs().max()) <= 7
    assert_within_rounding(act.reshape(x.shape), NormModulation(x, norm).materialize(), "M = 1")


def test_fake_implementations_give_shapes_and_dtypes() -> None:
    with FakeTensorMode():
        x = torch.empty(10, 100, dtype=torch.bfloat16)
        shift = torch.empty(2, 1, 100)
        clips = torch.empty(3, 10, 2)
        qa, act = norm_modulation_quantize(
            x, None, None, 1e-6, shift, shift, clips, 4, BLOCK_K, store_activation=True
        )
        assert qa.codes.shape == (3, 10, 128) and qa.codes.dtype == torch.int8
        assert qa.scale.shape == (3, 10) and qa.scale.dtype == torch.float32
        assert qa.code_sum.shape == (3, 10) and qa.code_sum.dtype == torch.int32
        assert act is not None and act.shape == (10, 100) and act.dtype == torch.bfloat16
        qa, act = gelu_quantize(x, clips[:1], 4, BLOCK_K)
        assert qa.codes.shape == (1, 10, 128) and act is None


def test_bad_inputs_are_refused_with_the_shapes(device: torch.device) -> None:
    x = torch.randn(6, 40).to(device)
    clips = clip_tables(1, 6, seed=0).to(device)
    shift = torch.zeros(4, 1, 40, device=device)  # 4 samples do not split 6 rows
    with pytest.raises(ValueError, match=r"shift must be \[B, 1, 40\]"):
        norm_modulation_quantize(x, None, None, 1e-6, shift, shift, clips, 4, BLOCK_K)
    with pytest.raises(ValueError, match="both shift and scale"):
        norm_modulation_quantize(x, None, None, 1e-6, shift[:3], None, clips, 4, BLOCK_K)
    with pytest.raises(ValueError, match="≤ 7"):
        gelu_quantize(x, clips, 8, BLOCK_K)
    with pytest.raises(ValueError, match=r"clips must be \[C, 6, 2\]"):
        gelu_quantize(x, clips[:, :5], 4, BLOCK_K)
    with pytest.raises(ValueError, match="norm weight must be"):
        norm_modulation_quantize(x, torch.ones(3), None, 1e-6, None, None, clips, 4, BLOCK_K)


@pytest.mark.parametrize("groups", [[2], [0, 3]])
def test_layers_fed_a_prologue_equal_them_fed_its_activation(
    groups: list[int], device: torch.device
) -> None:
    """Fusion changes nothing but where the activation is computed: a layer handed the prologue
    gives bit for bit what it gives for the kernel's activation, per sample's clip group."""
    layers = []
    for seed in range(3):
        layer = build_lowbit_linear(
            packed_weights(k=100, n=64, bits=4, device=device, seed=seed), KernelBackend.TRITON,
            block_k=BLOCK_K,
        )  # fmt: skip
        assert isinstance(layer, TritonLowBitLinear)
        layers.append(layer)
    fused = FusedLowBitLinear(layers)
    g = torch.Generator().manual_seed(len(groups))
    samples = len(groups)
    x = (torch.randn(samples, 9, 100, generator=g) * 2).to(torch.bfloat16).to(device)
    norm = FP32LayerNorm(100, eps=1e-6, elementwise_affine=False).to(device)
    shift = (0.3 * torch.randn(samples, 1, 100, generator=g)).to(device)
    scale = (0.3 * torch.randn(samples, 1, 100, generator=g)).to(device)
    prologue = NormModulation(x, norm, shift, scale)
    h = (2 * torch.randn(samples, 9, 100, generator=g)).to(torch.bfloat16).to(device)
    for m in (*layers, fused):
        m.set_clip_group(torch.tensor(groups))
    with torch.no_grad():
        act = prologue.activation()
        for i, layer in enumerate(layers):
            assert_close_verbose(layer(prologue), layer(act), 0, 0, f"layer {i}, norm prologue")
        assert_close_verbose(fused(prologue), fused(act), 0, 0, "fused q/k/v, norm prologue")
        gelu = GeluTanh(h)
        assert_close_verbose(
            layers[0](gelu), layers[0](gelu.activation()), 0, 0, "layer, GELU prologue"
        )


def test_kernels_build_for_hopper_without_spilling() -> None:
    """The kernels as a GPU runs them, not as the interpreter does: compiled for sm_90 at the
    launches of Wan's shapes, in a process without TRITON_INTERPRET (``hopper_build.py``)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.service.kernels.hopper_build"],
        cwd=Path(__file__).resolve().parents[3],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # a deadline for a hung build, not a measurement
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout
