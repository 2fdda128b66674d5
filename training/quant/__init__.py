"""Quantizers, the QVGen QuantLinear with its auxiliary module Φ, and the rank-decay schedule."""
