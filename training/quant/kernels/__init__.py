"""Fused Triton kernels of fake quantization for QAT on the GPU (``dispatch`` chooses them)."""
