"""qvgen-tiny: the from-scratch recipe of the embedded default model (VAE, then transformer)."""
