"""Offline QVGen quantization-aware training: quantizers, Φ with rank decay, trainer, export."""
