"""Writing a synthetic data set in the video-folder layout the trainer reads, and reading it back.

Layout of a data set directory (paths inside the text files are relative to it)::

    videos.txt        one video path per line:   videos/000000.mp4
    prompts.txt       one prompt per line, same order and count as videos.txt
    metadata.jsonl    one JSON object per line: the ground truth of each clip (``ClipRecord``)
    videos/000000.mp4 …

Clip i of seed S is drawn from ``numpy.random.default_rng([S, i])``: it depends on (S, i) only,
so a data set of N clips is the first N clips of any larger one with the same seed, and two
runs with the same arguments write identical frames (and, with ``qvgen.video_io``'s
byte-reproducible encoder settings, identical files).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from training.synthetic.render import ClipSpec, check_clip_geometry, render_clip, sample_clip
from training.synthetic.vocabulary import Background, Colour, Motion, Prompt, Shape

logger = logging.getLogger(__name__)

VIDEOS_FILE = "videos.txt"
PROMPTS_FILE = "prompts.txt"
METADATA_FILE = "metadata.jsonl"
VIDEO_DIR = "videos"
MAX_CLIPS = 1_000_000  # six-digit file names
DEFAULT_FRAMES = 17
DEFAULT_SIDE = 64
DEFAULT_FPS = 8.0


@dataclass(frozen=True)
class ClipRecord:
    """One line of ``metadata.jsonl``: where a clip is and everything that made its frames."""

    index: int
    video: str
    prompt: str
    colour: Colour
    shape: Shape
    motion: Motion
    background: Background
    frames: int
    side: int
    fps: float
    size: float
    start_x: float
    start_y: float
    travel: float
    seed: int

    @classmethod
    def from_spec(cls, spec: ClipSpec, index: int, seed: int, fps: float) -> ClipRecord:
        p = spec.prompt
        return cls(
            index=index,
            video=f"{VIDEO_DIR}/{index:06d}.mp4",
            prompt=p.text,
            colour=p.colour,
            shape=p.shape,
            motion=p.motion,
            background=p.background,
            frames=spec.frames,
            side=spec.side,
            fps=fps,
            size=spec.size,
            start_x=spec.start[0],
            start_y=spec.start[1],
            travel=spec.travel,
            seed=seed,
        )

    @property
    def spec(self) -> ClipSpec:
        """The clip spec this record was written from (``render_clip`` re-renders the frames)."""
        return ClipSpec(
            prompt=Prompt(self.colour, self.shape, self.motion, self.background),
            frames=self.frames,
            side=self.side,
            size=self.size,
            start=(self.start_x, self.start_y),
            travel=self.travel,
        )

    def to_json(self) -> str:
        fields = asdict(self)
        for name in ("colour", "shape", "motion", "background"):
            fields[name] = fields[name].value
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> ClipRecord:
        fields = json.loads(line)
        expected = set(cls.__dataclass_fields__)
        if set(fields) != expected:
            raise ValueError(
                f"metadata record has missing keys {sorted(expected - set(fields))} and "
                f"unexpected keys {sorted(set(fields) - expected)}"
            )
        fields["colour"] = Colour(fields["colour"])
        fields["shape"] = Shape(fields["shape"])
        fields["motion"] = Motion(fields["motion"])
        fields["background"] = Background(fields["background"])
        return cls(**fields)


def clip_spec(seed: int, index: int, frames: int, side: int) -> ClipSpec:
    """The spec of clip ``index`` of the data set with ``seed``."""
    return sample_clip(np.random.default_rng([seed, index]), frames=frames, side=side)


def write_dataset(
    out: Path,
    count: int,
    seed: int,
    frames: int = DEFAULT_FRAMES,
    side: int = DEFAULT_SIDE,
    fps: float = DEFAULT_FPS,
) -> list[ClipRecord]:
    """Render and encode ``count`` clips into ``out`` (see the module docstring for the layout).

    Refuses a directory that already holds a data set (``videos.txt``), rather than mixing two.
    The index files are written last, so an interrupted run leaves no ``videos.txt``.
    """
    # Imported here: the qvgen-tiny recipe renders clips through ``clip_spec`` without encoding
    # them, and runs where PyAV is not installed (a lent GPU machine, its wheels carried).
    from qvgen.video_io import write_mp4

    if not 1 <= count <= MAX_CLIPS:
        raise ValueError(f"count must lie in [1, {MAX_CLIPS}], got {count}")
    if seed < 0:
        raise ValueError(f"seed must be ≥ 0 (numpy seed sequences), got {seed}")
    check_clip_geometry(frames, side)
    if (out / VIDEOS_FILE).exists():
        raise FileExistsError(
            f"{out / VIDEOS_FILE} exists: write a new data set to a new directory"
        )
    (out / VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        spec = clip_spec(seed, index, frames, side)
        record = ClipRecord.from_spec(spec, index=index, seed=seed, fps=fps)
        write_mp4(render_clip(spec), out / record.video, fps=fps)
        records.append(record)
        if (index + 1) % 500 == 0:
            logger.info("wrote %d of %d clips to %s", index + 1, count, out)
    (out / METADATA_FILE).write_text("".join(r.to_json() + "\n" for r in records))
    (out / PROMPTS_FILE).write_text("".join(r.prompt + "\n" for r in records))
    (out / VIDEOS_FILE).write_text("".join(r.video + "\n" for r in records))
    logger.info(
        "wrote %d clips (%d frames of %d×%d, seed %d) to %s", count, frames, side, side, seed, out
    )
    return records


def read_metadata(directory: Path) -> list[ClipRecord]:
    """The records of ``metadata.jsonl``, checked against ``videos.txt`` and ``prompts.txt``."""
    records = [
        ClipRecord.from_json(line)
        for line in (directory / METADATA_FILE).read_text().splitlines()
        if line
    ]
    videos = (directory / VIDEOS_FILE).read_text().splitlines()
    prompts = (directory / PROMPTS_FILE).read_text().splitlines()
    if [r.video for r in records] != videos or [r.prompt for r in records] != prompts:
        raise ValueError(
            f"{directory}: {METADATA_FILE} ({len(records)} records) disagrees with {VIDEOS_FILE} "
            f"({len(videos)} lines) or {PROMPTS_FILE} ({len(prompts)} lines)"
        )
    return records
