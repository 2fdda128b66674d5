"""Low-bit linear kernels (Triton) beside their pure-PyTorch reference."""
