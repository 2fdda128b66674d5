"""``python -m tests.service.kernels.hopper_build``: compile the fused prologue kernels for sm_90
ahead of time, at the launches they take at Wan's shapes, without a GPU.

Triton's interpreter runs the kernels' Python, not their compilation: a construct that only
the interpreter accepts, or a tile that needs more registers than a Hopper thread has, shows
only when the kernel is built for the GPU. ``triton.compile`` does that build (to a cubin,
through the ptxas that ships with Triton) on any machine. Prints one line per kernel with its
registers and stack bytes (``cuobjdump --dump-resource-usage``) and exits 1 if a build failed
or spilled. Must run with ``TRITON_INTERPRET`` unset, so it runs in its own process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from service.kernels import prologue_quant
from service.kernels.activation_quant import QuantLaunch
from service.kernels.weight_layout import DEFAULT_BLOCK_K, padded_width

HOPPER = GPUTarget("cuda", 90, 32)
WAN_TOKENS = 32760
# Widths of Wan 2.1 1.3B / 14B: the norms' (dim) and FFN-down's input (ffn).
NORM_WIDTHS = (1536, 5120)
GELU_WIDTHS = (8960, 13824)


def _norm_signature(dtype: str) -> dict[str, str]:
    sig = {"x_ptr": f"*{dtype}"}
    sig |= {n: "*fp32" for n in ("w_ptr", "b_ptr", "shift_ptr", "mscale_ptr", "clip_ptr")}
    sig |= {"codes_ptr": "*i8", "scale_ptr": "*fp32", "sum_ptr": "*i32", "act_ptr": f"*{dtype}"}
    sig |= {n: "i32" for n in ("M", "K", "K_PAD", "ROWS_PER_SAMPLE")} | {"eps": "fp32"}
    strides = ("xm", "mod_b", "mod_s", "clip_c", "clip_m", "codes_c", "codes_m", "act_m")
    return sig | {f"stride_{s}": "i32" for s in strides}


def _gelu_signature(dtype: str) -> dict[str, str]:
    sig = {"h_ptr": f"*{dtype}", "clip_ptr": "*fp32", "codes_ptr": "*i8", "scale_ptr": "*fp32"}
    sig |= {"sum_ptr": "*i32", "act_ptr": f"*{dtype}"}
    names = ("M", "K", "K_PAD", "stride_hm", "stride_clip_c", "stride_clip_m")
    return sig | {n: "i32" for n in (*names, "stride_codes_c", "stride_codes_m", "stride_act_m")}


def _resources(cubin: bytes) -> tuple[int, int] | None:
    """(registers, stack bytes) of the cubin's kernel, or None without cuobjdump."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True
        )
    found = re.search(r"REG:(\d+) STACK:(\d+)", out.stdout)
    return None if found is None else (int(found.group(1)), int(found.group(2)))


def build(
    kernel: object, signature: dict[str, str], constexprs: dict[str, object], warps: int
) -> bool:
    sig = signature | dict.fromkeys(constexprs, "constexpr")
    source = ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
    name = f"{kernel.__name__} {constexprs}, {warps} warps"  # type: ignore[attr-defined]
    try:
        compiled = triton.compile(
            source, target=HOPPER, options={"num_warps": warps, "enable_fp_fusion": False}
        )
    except Exception as error:
        print(f"FAILED {name}: {type(error).__name__}: {error}")
        return False
    usage = _resources(compiled.asm["cubin"])
    if usage is None:
        print(f"built {name} (no cuobjdump: registers not read)")
        return True
    registers, stack = usage
    print(f"built {name}: {registers} registers, {stack} stack bytes")
    return stack == 0


def _quant_meta(launch: QuantLaunch, k_pad: int, tables: int) -> dict[str, object]:
    return {
        "STORE_ACTIVATION": False, "LEVELS": 15, "EPSILON": 1e-8, "BLOCK_M": launch.block_m,
        "CHUNK": launch.chunk, "ONE_CHUNK": launch.chunk >= k_pad, "NUM_CLIPS": tables,
    }  # fmt: skip


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("run with TRITON_INTERPRET unset: interpreted kernels cannot be compiled")
        return 2
    ok = True
    for width in NORM_WIDTHS:
        k_pad = padded_width(width, DEFAULT_BLOCK_K)
        launch = prologue_quant.norm_launch(k_pad, WAN_TOKENS)
        # norm1 / norm3 (modulation; q/k/v's three tables) and norm2 (affine, one table).
        for tables, modulation, affine in ((3, True, False), (1, True, False), (1, False, True)):
            meta = _quant_meta(launch, k_pad, tables) | {
                "HAS_WEIGHT": affine, "HAS_BIAS": affine, "HAS_MODULATION": modulation,
            }  # fmt: skip
            kernel = prologue_quant._norm_quant_kernel
            ok &= build(kernel, _norm_signature("bf16"), meta, launch.num_warps)
    for width in GELU_WIDTHS:
        k_pad = padded_width(width, DEFAULT_BLOCK_K)
        launch = prologue_quant.gelu_launch(k_pad, WAN_TOKENS)
        meta = _quant_meta(launch, k_pad, 1)
        ok &= build(
            prologue_quant._gelu_quant_kernel, _gelu_signature("bf16"), meta, launch.num_warps
        )
    # The chunked norm path (rows longer than _NORM_ONE_PASS_MAX) and an fp16 model.
    chunked = QuantLaunch(block_m=1, chunk=1024, num_warps=4)
    meta = _quant_meta(chunked, 20480, 1) | {
        "HAS_WEIGHT": True, "HAS_BIAS": True, "HAS_MODULATION": True,
    }  # fmt: skip
    ok &= build(prologue_quant._norm_quant_kernel, _norm_signature("fp16"), meta, 4)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
