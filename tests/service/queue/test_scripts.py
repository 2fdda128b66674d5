"""The Lua scripts name job hash fields by literal; each literal must be a ``JobField``."""

from __future__ import annotations

import re

from service.queue import scripts
from service.queue.records import JobField

_HASH_CALL = re.compile(r"redis\.call\('(HSET|HGET|HMGET|HINCRBY)',\s*KEYS\[1\],")


def _arguments(text: str, start: int) -> list[str]:
    """The call's remaining arguments from ``start`` to its closing parenthesis."""
    depth, current, arguments = 0, "", []
    for char in text[start:]:
        if char == "(":
            depth += 1
        elif char == ")":
            if depth == 0:
                break
            depth -= 1
        if char == "," and depth == 0:
            arguments.append(current.strip())
            current = ""
        else:
            current += char
    arguments.append(current.strip())
    return arguments


def _field_literals() -> set[str]:
    sources = [value for name, value in vars(scripts).items() if name.isupper()]
    found: set[str] = set()
    for source in sources:
        for call in _HASH_CALL.finditer(source):
            arguments = _arguments(source, call.end())
            # HSET and HINCRBY alternate field and value; HGET and HMGET name only fields.
            fields = arguments[::2] if call[1] in ("HSET", "HINCRBY") else arguments
            found |= {field.strip("'") for field in fields if field.startswith("'")}
    return found


def test_every_field_a_script_names_is_a_job_field() -> None:
    literals = _field_literals()
    assert {"status", "attempt", "stream_id", "video_path"} <= literals  # the parser sees them
    assert literals <= {field.value for field in JobField}, literals - set(JobField)
