"""Fewer transformer passes per video: cache policies on diffusers' hooks, and an early stop of
the unconditional guidance pass.

* ``session``: one generation's policy — diffusers' ``FirstBlockCacheConfig`` / ``MagCacheConfig``
  enabled on the transformer for that generation only, and the passes counted.
* ``pooled_first_block``: our criterion for first-block caching of quantized models.
* ``guidance``: the unconditional pass stopped after a fraction of the steps.
* ``calibration``: MagCache's magnitude ratios measured on the model itself.
* ``offer``: which policies a loaded model offers, with their threshold ranges.
"""
