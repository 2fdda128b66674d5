"""Which pass-saving policies a loaded model offers, and the request fields' defaults.

Threshold units are each policy's own: the relative L1 change of the first block's residual for
the two first-block policies, MagCache's accumulated error. All are offered on [0, 1]; 0 never
skips a pass. Each default is 0.1: on qvgen-tiny's 200 evaluation pairs, the largest threshold
of the measured grid that moved no score by more than one paired standard error on both the
full-precision and the W4A4 model (BENCHMARKS.md, ``qvgen tiny frontier``; diffusers' own
defaults are 0.05 and 0.06).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from qvgen.family import ModelFamily
from service.engine.rules import CachingRules, ThresholdRange
from service.engine.types import CachePolicy

if TYPE_CHECKING:  # qvgen.checkpoint imports torch; the API reads CacheDefaults from settings
    from qvgen.checkpoint.cache_calibration import CacheCalibration

THRESHOLDS: dict[CachePolicy, ThresholdRange] = {
    CachePolicy.FIRST_BLOCK: ThresholdRange(low=0.0, high=1.0, default=0.1),
    CachePolicy.FIRST_BLOCK_POOLED: ThresholdRange(low=0.0, high=1.0, default=0.1),
    CachePolicy.MAGCACHE: ThresholdRange(low=0.0, high=1.0, default=0.1),
}


@dataclass(frozen=True)
class CacheDefaults:
    """What a request that leaves the fields out gets on this model (worker settings)."""

    cache: CachePolicy = CachePolicy.NONE
    cache_threshold: float | None = None
    guidance_stop: float = 1.0

    @classmethod
    def parse(cls, spec: str, guidance_stop: float = 1.0) -> CacheDefaults:
        """``NAME`` or ``NAME:THRESHOLD`` (``qvgen generate --cache``, ``QVGEN_DEFAULT_CACHE``)."""
        name, _, threshold = spec.partition(":")
        try:
            policy = CachePolicy(name.strip())
        except ValueError:
            allowed = ", ".join(p.value for p in CachePolicy)
            raise ValueError(f"cache {name!r} is not a policy; use one of {allowed}") from None
        if not threshold:
            return cls(policy, None, guidance_stop)
        if policy is CachePolicy.NONE:
            raise ValueError("cache none takes no threshold")
        try:
            value = float(threshold)
        except ValueError:
            raise ValueError(f"cache threshold {threshold!r} is not a number") from None
        return cls(policy, value, guidance_stop)


def offered_caching(
    family: ModelFamily,
    calibration: CacheCalibration,
    whole_graph_compiled: bool,
    defaults: CacheDefaults,
    blocks: int = 2,
) -> CachingRules:
    """The model's ``CachingRules``: first-block policies on every family, MagCache where the
    model directory holds ratios, none of them where the whole transformer is one compiled
    graph (``service.engine.compilation``) or on a model of one block (diffusers' first-block
    cache needs a head and a tail); an early guidance stop on Wan. Raises
    ``ValueError`` when ``defaults`` name what the model does not offer."""
    thresholds: dict[CachePolicy, ThresholdRange] = {}
    if not whole_graph_compiled and blocks >= 2:
        thresholds[CachePolicy.FIRST_BLOCK] = THRESHOLDS[CachePolicy.FIRST_BLOCK]
        thresholds[CachePolicy.FIRST_BLOCK_POOLED] = THRESHOLDS[CachePolicy.FIRST_BLOCK_POOLED]
        if calibration.magcache:
            thresholds[CachePolicy.MAGCACHE] = THRESHOLDS[CachePolicy.MAGCACHE]
    return CachingRules(
        thresholds=thresholds,
        magcache_steps=tuple(sorted(calibration.magcache)) if not whole_graph_compiled else (),
        guidance_stop=family is ModelFamily.WAN,
        default_cache=defaults.cache,
        default_cache_threshold=defaults.cache_threshold,
        default_guidance_stop=defaults.guidance_stop,
    )
