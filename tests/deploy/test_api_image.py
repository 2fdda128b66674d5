"""The API image installs ``docker/api_requirements.py``'s list and nothing else: that list must
leave out torch and the rest of the model stack, and still cover every module the API process
imports (``python -m service.cli serve api``: the CLI, the app, uvicorn)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from tests.deploy.compose import REPO

REQUIREMENTS_SCRIPT = REPO / "docker" / "api_requirements.py"
MODEL_STACK = {"torch", "diffusers", "transformers", "accelerate", "triton", "safetensors"}
PROJECT_PACKAGES = {"qvgen"}
# Imported when installed, skipped when not: anyio tries sniffio; httpx tries its command
# line's rich and pygments; redis tries cryptography (for OCSP checks of TLS connections),
# which the test environment holds for moto.
OPTIONAL_IMPORTS = {"sniffio", "rich", "pygments", "cryptography"}

# Run in a fresh interpreter: the third-party distributions behind every module the API loads.
_IMPORTED_DISTRIBUTIONS = """
import argparse, json, sys
from importlib import metadata
import service.cli, service.api.main, uvicorn
service.cli.register(argparse.ArgumentParser().add_subparsers())  # as `python -m service.cli`
from service.settings import ServiceSettings
service.api.main.create_app(ServiceSettings())
owners = metadata.packages_distributions()
tops = {name.partition(".")[0] for name in list(sys.modules)}
third_party = tops - set(sys.stdlib_module_names) - {"__main__", "_distutils_hack"}
print(json.dumps(sorted({dist for top in third_party for dist in owners.get(top, [])})))
"""


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def api_requirements() -> list[str]:
    out = subprocess.run(
        [sys.executable, str(REQUIREMENTS_SCRIPT), str(REPO / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()  # one a line; a marker has spaces


def installed_closure(requirements: list[str]) -> set[str]:
    """The requirements and, recursively, what their installed versions require (markers of
    this interpreter; extras are not followed unless requested)."""
    seen: set[str] = set()
    pending = [Requirement(line) for line in requirements]
    pending = [r for r in pending if r.marker is None or r.marker.evaluate()]
    while pending:
        requirement = pending.pop()
        name = normalise(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(requirement.name) or []:
            child = Requirement(line)
            extras = requirement.extras or {""}
            # Judged here, with the extras asked of its parent: judged again once popped,
            # without them, "hiredis; extra == 'hiredis'" of redis[hiredis] would be left out.
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in extras):
                pending.append(child)
    return seen


def test_api_requirements_leave_out_the_model_stack() -> None:
    names = {normalise(Requirement(line).name) for line in api_requirements()}
    assert "fastapi" in names and "redis" in names
    assert not names & MODEL_STACK, names & MODEL_STACK
    assert not installed_closure(api_requirements()) & MODEL_STACK


def test_every_module_the_api_imports_is_installed_in_the_image() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTED_DISTRIBUTIONS],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    imported = {normalise(name) for name in json.loads(out)} - PROJECT_PACKAGES - OPTIONAL_IMPORTS
    assert not imported & MODEL_STACK, f"the API imports {sorted(imported & MODEL_STACK)}"
    missing = imported - installed_closure(api_requirements())
    assert not missing, f"the API imports {sorted(missing)}, which the API image would lack"


def test_the_image_copies_what_the_api_imports() -> None:
    text = (REPO / "docker" / "api.Dockerfile").read_text()
    copied = {
        line.split()[1]
        for line in text.splitlines()
        if line.startswith("COPY ") and "--from" not in line
    }
    assert {"qvgen", "service"} <= copied
    assert Path(REPO / "qvgen").is_dir() and Path(REPO / "service").is_dir()
