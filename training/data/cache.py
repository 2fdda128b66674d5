"""Latents and prompt embeddings computed once and kept on disk.

The cache of a run lives in ``<cache root>/<key>/`` where the key is the SHA-256 of

* the model's VAE, text encoder and tokenizer (config and text files by content, weight files by
  name, size and modification time),
* the data folder (``folder.folder_fingerprint``),
* the bucket, the encoding dtype and the prompt length,

so another model, another data set or another resolution never reads stale tensors, and reruns
and later epochs never load the VAE or the text encoder. One safetensors file per clip
(``clip-<line>.safetensors``: ``latents`` [C, F, h, w] and ``text`` [L, D], float32), one for the
empty prompt (caption dropout), and ``manifest.json`` written last: a cache without a manifest is
incomplete, and building resumes, skipping the clips already written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from training.data.encoders import ClipEncoder
from training.data.folder import Clip, folder_fingerprint, read_folder
from training.data.frames import Bucket, load_clip

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
EMPTY_PROMPT_FILE = "empty-prompt.safetensors"
_SMALL_FILE = 1 << 20  # hash files up to 1 MiB by content (configs, tokenizer vocabularies)
_ENCODER_PARTS = ("vae", "text_encoder", "tokenizer")


def model_fingerprint(model_dir: str | Path) -> str:
    digest = hashlib.sha256()
    root = Path(model_dir)
    for part in _ENCODER_PARTS:
        for path in sorted((root / part).rglob("*")):
            if not path.is_file():
                continue
            stat = path.stat()
            digest.update(str(path.relative_to(root)).encode())
            if stat.st_size <= _SMALL_FILE:
                digest.update(path.read_bytes())
            else:
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    model: str
    data: str
    frames: int
    height: int
    width: int
    dtype: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]


def _clip_file(clip: Clip) -> str:
    return f"clip-{clip.line:07d}.safetensors"


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


class LatentSource(Protocol):
    """What the training step reads: clip i's (latents, text), and the empty prompt's text."""

    empty_text: torch.Tensor

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class LatentCache:
    """A complete cache directory: ``load(i)`` returns clip i's (latents, text)."""

    def __init__(self, directory: Path) -> None:
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path} not found: the cache is incomplete")
        manifest = json.loads(manifest_path.read_text())
        self.directory = directory
        self.files: list[str] = list(manifest["clips"])
        self.lines: list[int] = list(manifest["lines"])
        empty = load_file(str(directory / EMPTY_PROMPT_FILE))
        self.empty_text = empty["text"]

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = load_file(str(self.directory / self.files[index]))
        return tensors["latents"], tensors["text"]


def cache_directory(
    model_dir: str | Path, data_dir: str | Path, bucket: Bucket, dtype: torch.dtype, root: Path
) -> tuple[Path, list[Clip]]:
    """Where the cache of this model, data and bucket lives, and the parsed clip list."""
    clips = read_folder(data_dir)
    key = CacheKey(
        model=model_fingerprint(model_dir),
        data=folder_fingerprint(data_dir, clips),
        frames=bucket.frames,
        height=bucket.height,
        width=bucket.width,
        dtype=str(dtype),
    )
    return root / key.digest(), clips


def build_cache(
    model_dir: str | Path,
    data_dir: str | Path,
    bucket: Bucket,
    root: Path,
    device: torch.device,
    dtype: torch.dtype,
) -> LatentCache:
    """Open the cache of (model, data, bucket), encoding whatever is missing first."""
    directory, clips = cache_directory(model_dir, data_dir, bucket, dtype, root)
    if (directory / MANIFEST_FILE).is_file():
        logger.info("latent cache hit: %s (%d clips)", directory, len(clips))
        return LatentCache(directory)
    directory.mkdir(parents=True, exist_ok=True)
    logger.info("encoding %d clips into %s", len(clips), directory)
    encoder = ClipEncoder(model_dir, device, dtype)
    try:
        _save_atomic({"text": encoder.encode_prompt("")}, directory / EMPTY_PROMPT_FILE)
        for clip in tqdm(clips, desc="encoding clips", unit="clip"):
            target = directory / _clip_file(clip)
            if target.is_file():
                continue
            latents = encoder.encode_video(load_clip(clip, bucket))
            _save_atomic({"latents": latents, "text": encoder.encode_prompt(clip.prompt)}, target)
    finally:
        encoder.close()
    manifest = {
        "clips": [_clip_file(c) for c in clips],
        "lines": [c.line for c in clips],
        "bucket": asdict(bucket),
    }
    tmp = directory / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, directory / MANIFEST_FILE)
    return LatentCache(directory)
