"""The frozen parts the transformer trains on, saved with every run: ``OUT/encoders/``.

``encoders/`` holds the VAE (its config carries the latent mean and std the pipeline normalises
by), the text encoder and the tokenizer, in bfloat16 as they ship: what turns clips and prompts
into the transformer's inputs. A run that skips the VAE stage (``--vae-from``) loads them from an
earlier run or from any pipeline directory, so that its latents and prompt embeddings are the
ones that run computed; a resumed run (``--resume-transformer``) loads them from the run it
continues. Every run writes them, so the latest run directory is all a next piece needs.

``fingerprint`` is a SHA-256 of their weights (as bfloat16), latent statistics and vocabulary: a
transformer state records it, and a resume on other encoders is refused (``flow_state``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recipes.tiny_model.config import CONFIG_FILE, DATA_FIELDS, PIPELINE_DIR, RecipeConfig

logger = logging.getLogger(__name__)

ENCODERS_DIR = "encoders"
_MODULES = ("vae", "text_encoder")
_COMPONENTS = (*_MODULES, "tokenizer")
# The VAE's config keys that are measured, not architecture: they travel with the weights.
_STATISTICS = ("latents_mean", "latents_std")
_TEXT_ENCODER_KEYS = (
    "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
    "relative_attention_num_buckets", "relative_attention_max_distance",
)  # fmt: skip


@dataclass(frozen=True)
class EncoderSource:
    """A directory holding ``vae/``, ``text_encoder/`` and ``tokenizer/``, and the recipe that
    trained them (``recipe.json`` beside them; None for a bare pipeline directory)."""

    directory: Path
    recipe: dict[str, Any] | None


def find_encoders(path: Path, flag: str) -> EncoderSource:
    """The encoders of a train-base run directory (its ``encoders/``, else its ``pipeline/``) or
    of a pipeline directory; ``flag`` names the option in errors."""
    if not path.is_dir():
        raise ValueError(f"{flag} {path}: no such directory")
    recipe_path = path / CONFIG_FILE
    recipe = json.loads(recipe_path.read_text()) if recipe_path.is_file() else None
    for candidate in (path / ENCODERS_DIR, path / PIPELINE_DIR, path):
        if all((candidate / name).is_dir() for name in _COMPONENTS):
            return EncoderSource(candidate, recipe)
    raise ValueError(
        f"{flag} {path}: expected a pipeline directory (vae/, text_encoder/, tokenizer/) or a "
        f"train-base run directory ({ENCODERS_DIR}/ or {PIPELINE_DIR}/)"
    )


def check_same_clips(source: EncoderSource, config: RecipeConfig, flag: str) -> None:
    """The source's latent statistics were measured on its clips: this run must render those."""
    if source.recipe is None:
        logger.warning(
            "%s %s: no %s beside it; its clips cannot be checked against this run's",
            flag,
            source.directory,
            CONFIG_FILE,
        )
        return
    ours = config.to_dict()
    differ = [f for f in DATA_FIELDS if source.recipe.get(f) != ours[f]]
    if differ:
        theirs = ", ".join(f"--{f.replace('_', '-')} {source.recipe.get(f)}" for f in differ)
        raise ValueError(
            f"{flag} {source.directory}: its latent mean and std were measured on other clips "
            f"({theirs}; this run: {', '.join(config.flag(f) for f in differ)}): pass its values"
        )


def _plain(value: Any) -> Any:
    """JSON's view of a config value: tuples and lists compare equal."""
    return json.loads(json.dumps(value))


def _spec_differences(built: Any, loaded: Any) -> list[str]:
    """Architecture keys on which the loaded encoders differ from this run's spec."""
    vae_keys = [k for k in built.vae.config if not k.startswith("_") and k not in _STATISTICS]
    pairs = [(f"vae.{k}", built.vae.config[k], loaded["vae"].config.get(k)) for k in vae_keys]
    pairs += [
        (f"text_encoder.{k}", getattr(built.text_encoder.config, k, None),
         getattr(loaded["text_encoder"].config, k, None))
        for k in _TEXT_ENCODER_KEYS
    ]  # fmt: skip
    spec_tokenizer, tokenizer = built.tokenizer, loaded["tokenizer"]
    pairs.append(
        ("tokenizer.model_max_length", spec_tokenizer.model_max_length, tokenizer.model_max_length)
    )
    pairs.append(("tokenizer vocabulary", spec_tokenizer.get_vocab(), tokenizer.get_vocab()))
    return [
        f"{name} {_plain(theirs)} (spec: {_plain(ours)})"
        for name, ours, theirs in pairs
        if _plain(ours) != _plain(theirs)
    ]


def load_encoders(pipeline: Any, source: EncoderSource, spec_name: str, flag: str) -> None:
    """Replace the pipeline's VAE, text encoder and tokenizer by ``source``'s, in float32.

    ``pipeline`` is this run's seeded pipeline: its components fix what the spec expects, and
    loading refuses encoders of another architecture, naming the keys that differ.
    """
    loaded = {
        name: type(getattr(pipeline, name)).from_pretrained(source.directory / name)
        for name in _COMPONENTS
    }
    differences = _spec_differences(pipeline, loaded)
    if differences:
        raise ValueError(
            f"{flag} {source.directory}: its encoders do not fit --spec {spec_name}: "
            + "; ".join(differences)
        )
    for name in _MODULES:
        # The weights hold bfloat16 values; float32 compute, as in a run that trained them.
        setattr(pipeline, name, loaded[name].to(torch.float32).eval())
    pipeline.tokenizer = loaded["tokenizer"]
    logger.info("loaded the VAE, text encoder and tokenizer of %s", source.directory)


def save_encoders(pipeline: Any, directory: Path) -> None:
    """Write the VAE, text encoder (bfloat16) and tokenizer to ``directory``."""
    for name in _MODULES:
        module = copy.deepcopy(getattr(pipeline, name)).to("cpu", torch.bfloat16)
        module.save_pretrained(directory / name)
    pipeline.tokenizer.save_pretrained(directory / "tokenizer")


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    t = tensor.detach().cpu()
    if t.is_floating_point():  # bfloat16, as shipped: float32 copies of the same values agree
        t = t.to(torch.bfloat16).view(torch.int16)
    return t.contiguous().numpy().tobytes()


def fingerprint(pipeline: Any) -> str:
    """SHA-256 of the encoders' weights, latent statistics and tokenizer vocabulary."""
    digest = hashlib.sha256()
    for name in _MODULES:
        for key, tensor in sorted(getattr(pipeline, name).state_dict().items()):
            digest.update(f"{name}.{key}".encode())
            digest.update(_tensor_bytes(tensor))
    statistics = {k: list(pipeline.vae.config[k]) for k in _STATISTICS}
    digest.update(json.dumps(statistics).encode())
    digest.update(json.dumps(pipeline.tokenizer.get_vocab(), sort_keys=True).encode())
    return digest.hexdigest()
