"""The packed checkpoint format (v1): metadata types, writer and strict reader.

``docs/checkpoint-format.md`` is the specification.
"""

from qvgen.checkpoint.format_v1 import (
    FORMAT_NAME,
    FORMAT_VERSION,
    PACKED_FILE,
    CheckpointError,
    PackedCheckpoint,
    PackedScheme,
    QuantizedModuleInfo,
    is_packed_dir,
    read_packed,
    write_packed,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PACKED_FILE",
    "CheckpointError",
    "PackedCheckpoint",
    "PackedScheme",
    "QuantizedModuleInfo",
    "is_packed_dir",
    "read_packed",
    "write_packed",
]
