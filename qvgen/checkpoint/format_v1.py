"""Write and read format v1: ``config.json`` + ``qvgen_packed.safetensors`` with JSON metadata.

Reading is strict: the format name and version are checked before any tensor is read, unknown
metadata keys are errors, and every quantized layer must have exactly its tensors
(``docs/checkpoint-format.md``). Errors name the layer and the problem.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import qvgen
from qvgen.numerics import check_bits
from qvgen.packed_layer import PackedLinearWeights
from qvgen.timestep_groups import MAPPING_NAME, NUM_TRAIN_TIMESTEPS, TimestepMapping

FORMAT_NAME = "qvgen-packed"
FORMAT_VERSION = 1
PACKED_FILE = "qvgen_packed.safetensors"
CONFIG_FILE = "config.json"
METADATA_KEY = "qvgen"
LAYER_TENSORS = ("qweight", "weight_scale", "weight_zero_point", "act_clip")
OPTIONAL_LAYER_TENSORS = ("bias",)


class CheckpointError(ValueError):
    """A packed checkpoint that cannot be written or read as format v1."""


def _strict_fields(cls: type, data: dict[str, Any], where: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    missing = sorted(known - set(data))
    if unknown or missing:
        raise CheckpointError(f"{where}: unknown keys {unknown}, missing keys {missing}")


@dataclass(frozen=True)
class PackedScheme:
    """The quantization scheme stored with the weights."""

    weight_bits: int
    activation_bits: int
    clip_groups: int
    weight_granularity: str = "per_channel"
    activation_granularity: str = "per_token"
    timestep_mapping: str = MAPPING_NAME
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "scheme.weight_bits")
        check_bits(self.activation_bits, "scheme.activation_bits")
        if self.clip_groups < 1:
            raise CheckpointError(f"scheme.clip_groups must be ≥ 1, got {self.clip_groups}")
        expected = {
            "weight_granularity": "per_channel",
            "activation_granularity": "per_token",
        }
        for key, value in expected.items():
            if getattr(self, key) != value:
                raise CheckpointError(f"scheme.{key} must be {value!r}, got {getattr(self, key)!r}")
        allowed = [m.value for m in TimestepMapping]
        if self.timestep_mapping not in allowed:
            raise CheckpointError(
                f"scheme.timestep_mapping must be one of {allowed}, got {self.timestep_mapping!r}"
            )

    @property
    def mapping(self) -> TimestepMapping:
        return TimestepMapping(self.timestep_mapping)


@dataclass(frozen=True)
class QuantizedModuleInfo:
    name: str
    in_features: int
    out_features: int
    bias: bool


@dataclass(frozen=True)
class PackedCheckpoint:
    """A whole packed transformer: its diffusers config, scheme, layers and other tensors."""

    config: dict[str, Any]
    scheme: PackedScheme
    layers: dict[str, PackedLinearWeights]
    full_precision_modules: tuple[str, ...]
    tensors: dict[str, torch.Tensor]  # every tensor that is not part of a quantized layer

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "scheme": asdict(self.scheme),
            "quantized_modules": [
                asdict(
                    QuantizedModuleInfo(
                        name, layer.in_features, layer.out_features, layer.bias is not None
                    )
                )
                for name, layer in self.layers.items()
            ],
            "full_precision_modules": list(self.full_precision_modules),
            "producer": f"qvgen {qvgen.__version__}",
        }


def is_packed_dir(path: str | Path) -> bool:
    """True if ``path`` holds a format-v1 transformer."""
    return (Path(path) / PACKED_FILE).is_file()


def write_packed(checkpoint: PackedCheckpoint, out_dir: str | Path) -> Path:
    """Write ``config.json`` and ``qvgen_packed.safetensors`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in checkpoint.layers.items():
        if layer.clip_groups != checkpoint.scheme.clip_groups:
            raise CheckpointError(
                f"{name}: act_clip has {layer.clip_groups} groups, scheme has "
                f"{checkpoint.scheme.clip_groups}"
            )
        for field in LAYER_TENSORS + OPTIONAL_LAYER_TENSORS:
            value = getattr(layer, field)
            if value is not None:
                tensors[f"{name}.{field}"] = value.detach().cpu().contiguous()
    for key, value in checkpoint.tensors.items():
        if key in tensors:
            raise CheckpointError(f"tensor {key} is both a quantized-layer tensor and a plain one")
        tensors[key] = value.detach().cpu().contiguous()
    save_file(
        tensors, str(out / PACKED_FILE), metadata={METADATA_KEY: json.dumps(checkpoint.metadata())}
    )
    (out / CONFIG_FILE).write_text(json.dumps(checkpoint.config, indent=2, sort_keys=True) + "\n")
    return out


def _read_metadata(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(
            f"{path}: no '{METADATA_KEY}' metadata: not a qvgen packed checkpoint"
        )
    meta: dict[str, Any] = json.loads(raw)
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {meta.get('format_version')!r} is not supported "
            f"(this qvgen reads version {FORMAT_VERSION})"
        )
    allowed = {
        "format",
        "format_version",
        "scheme",
        "quantized_modules",
        "full_precision_modules",
        "producer",
    }
    unknown = sorted(set(meta) - allowed)
    if unknown:
        raise CheckpointError(f"{path}: unknown metadata keys {unknown}")
    return meta


def read_packed(in_dir: str | Path) -> PackedCheckpoint:
    """Read and validate a format-v1 directory."""
    directory = Path(in_dir)
    path = directory / PACKED_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {PACKED_FILE}")
    meta = _read_metadata(path)
    _strict_fields(PackedScheme, meta["scheme"], "scheme")
    scheme = PackedScheme(**meta["scheme"])
    infos = []
    for entry in meta["quantized_modules"]:
        _strict_fields(QuantizedModuleInfo, entry, f"quantized_modules[{entry.get('name')}]")
        infos.append(QuantizedModuleInfo(**entry))
    with safe_open(str(path), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    layers = {}
    for info in infos:
        names = LAYER_TENSORS + (OPTIONAL_LAYER_TENSORS if info.bias else ())
        missing = [f"{info.name}.{n}" for n in names if f"{info.name}.{n}" not in tensors]
        if missing:
            raise CheckpointError(f"{info.name}: missing tensors {missing}")
        parts = {n: tensors.pop(f"{info.name}.{n}") for n in names}
        try:
            layers[info.name] = PackedLinearWeights(
                name=info.name,
                in_features=info.in_features,
                out_features=info.out_features,
                weight_bits=scheme.weight_bits,
                activation_bits=scheme.activation_bits,
                qweight=parts["qweight"],
                weight_scale=parts["weight_scale"],
                weight_zero_point=parts["weight_zero_point"],
                act_clip=parts["act_clip"],
                bias=parts.get("bias"),
            )
        except ValueError as err:
            raise CheckpointError(str(err)) from err
        if layers[info.name].clip_groups != scheme.clip_groups:
            raise CheckpointError(
                f"{info.name}: act_clip has {layers[info.name].clip_groups} groups, "
                f"scheme has {scheme.clip_groups}"
            )
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_FILE}")
    return PackedCheckpoint(
        config=json.loads(config_path.read_text()),
        scheme=scheme,
        layers=layers,
        full_precision_modules=tuple(meta["full_precision_modules"]),
        tensors=tensors,
    )
