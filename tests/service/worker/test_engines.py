"""A worker's cache settings (``QVGEN_DEFAULT_CACHE``, ``QVGEN_DEFAULT_GUIDANCE_STOP``) become its
model's published defaults through ``EngineStart``; a value that cannot be one stops the process
at its settings, and one the model does not offer stops it at the model's load."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.cli import engine_start
from service.engine.rules import EngineRules
from service.engine.types import CachePolicy, CompilePolicy
from service.settings import ServiceSettings
from service.worker.engines import EngineStart, load_diffusers_engine


@pytest.mark.parametrize(
    ("name", "value", "quoted"),
    [
        ("CACHE", "fast", "QVGEN_DEFAULT_CACHE='fast': cache 'fast' is not a policy; use one of"),
        ("CACHE", "first-block:2", "the threshold of first-block must lie in [0, 1]"),
        ("CACHE", "first-block:nan", "the threshold of first-block must lie in [0, 1]"),
        ("CACHE", "none:0.1", "cache none takes no threshold"),
        ("CACHE", "magcache:high", "cache threshold 'high' is not a number"),
        ("GUIDANCE_STOP", "1.5", "default_guidance_stop"),
    ],
)
def test_a_bad_value_fails_at_settings_load_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, quoted: str
) -> None:
    monkeypatch.setenv(f"QVGEN_DEFAULT_{name}", value)
    with pytest.raises(ValidationError) as refused:
        ServiceSettings()
    assert quoted in str(refused.value)


def _start(settings: ServiceSettings) -> EngineStart:
    """What ``qvgen serve worker`` starts its engine with, eager and without the warm-up."""
    made = engine_start(argparse.Namespace(compile=CompilePolicy.OFF), settings)
    return dataclasses.replace(made, warm_up=None)


def test_the_settings_become_the_defaults_the_models_rules_publish(
    monkeypatch: pytest.MonkeyPatch, tiny_wan_dir: Path
) -> None:
    monkeypatch.setenv("QVGEN_DEFAULT_CACHE", "first-block-pooled:0.2")
    monkeypatch.setenv("QVGEN_DEFAULT_GUIDANCE_STOP", "0.5")
    engine = load_diffusers_engine(str(tiny_wan_dir), "cpu", "tiny", _start(ServiceSettings()))
    published = EngineRules.from_dict(json.loads(json.dumps(engine.rules.to_dict()))).caching
    assert (
        published.default_cache,
        published.default_cache_threshold,
        published.default_guidance_stop,
    ) == (CachePolicy.FIRST_BLOCK_POOLED, 0.2, 0.5)

    # This directory holds no MagCache calibration: a worker defaulting to it does not start.
    monkeypatch.setenv("QVGEN_DEFAULT_CACHE", "magcache")
    with pytest.raises(ValueError, match="default cache 'magcache' is not offered"):
        load_diffusers_engine(str(tiny_wan_dir), "cpu", "tiny", _start(ServiceSettings()))
