"""Video files: H.264 MP4 writing and reading, PNG thumbnails, and probing.

One implementation for every part of the project that touches a video file: the synthetic data
set (``training.synthetic``), the evaluation (decoded clips go to the scorer), and the service
(which stores a generation's MP4 and serves its thumbnail).

MP4s are written with libx264 (PyAV's wheel bundles it) as yuv420p, the pixel format every
browser and player decodes. yuv420p stores chroma at half resolution in both directions, so the
width and height of a frame must be even: ``write_mp4`` refuses odd sizes rather than cropping or
padding behind the caller's back. The ``moov`` atom (the index of the file) is moved in front of
the ``mdat`` atom (the frames) with ``movflags=+faststart``, so a browser can start playing a
download before it has the whole file.

Every write is atomic: the file is written to a temporary name in the destination directory and
moved over the destination with ``os.replace``, so a reader never sees half a file, and a failed
write leaves no debris.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.video.stream
import numpy as np
from PIL import Image

CODEC = "libx264"
PIX_FMT = "yuv420p"
DEFAULT_CRF = 18
MAX_CRF = 51
# x264's macroblock-tree rate control made 64×64 clips come out different from run to run for
# the same frames (even single-threaded: 6 distinct files in 8 runs; deterministic from 128×128
# up); without it every size we tried (16×16 … 832×480, 1 or automatic threads) is
# byte-reproducible, at some bits per clip. A data set one can hash is worth those bits.
X264_PARAMS = "mbtree=0"
# The service serves thumbnails with this media type: PNG, because generated frames are small and
# often flat-coloured (PNG stores them losslessly in fewer bytes than a good JPEG) and lossless
# keeps a thumbnail byte-identical to the first frame it was made from.
THUMBNAIL_MEDIA_TYPE = "image/png"
THUMBNAIL_SUFFIX = ".png"


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe_video`` reads from a file's first video stream.

    ``frame_count`` is the number of frames the container indexes (counted by demuxing when the
    container does not say); ``fps`` is the stream's average frame rate; ``codec`` is FFmpeg's
    codec name (``"h264"`` for files written by ``write_mp4``), ``pix_fmt`` the decoder's pixel
    format (``"yuv420p"``).
    """

    frame_count: int
    width: int
    height: int
    fps: float
    codec: str
    pix_fmt: str


def check_frames(frames: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``frames`` is uint8 [T, H, W, 3] with T ≥ 1 and H, W even."""
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape [T, H, W, 3] (RGB), got {frames.shape}")
    count, height, width, _ = frames.shape
    if count < 1:
        raise ValueError(f"frames must hold at least 1 frame, got {count}")
    if height % 2 or width % 2 or height < 2 or width < 2:
        raise ValueError(
            f"{PIX_FMT} needs an even width and height ≥ 2, got {width}×{height} (W×H); "
            "crop or pad the frames to even sizes"
        )


def _frame_rate(fps: float) -> Fraction:
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a finite number > 0, got {fps}")
    # 1001 covers the NTSC rates (30000/1001) exactly; integer rates stay integers.
    return Fraction(fps).limit_denominator(1001)


@contextlib.contextmanager
def _atomic_destination(path: Path, suffix: str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it over ``path``, else delete it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}{suffix}"
    # os.open with 0o666 honours the umask, as a plain open() of the destination would;
    # tempfile.mkstemp would leave the file readable by its owner only.
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_mp4(
    frames: np.ndarray,
    path: str | os.PathLike[str],
    fps: float,
    crf: int = DEFAULT_CRF,
    threads: int = 0,
) -> Path:
    """Write RGB frames uint8 [T, H, W, 3] as an H.264 yuv420p fast-start MP4, atomically.

    ``crf`` is x264's constant rate factor (0 = lossless luma … 51 = worst; 18 is visually
    lossless). H and W must be even (see the module docstring). ``threads`` is the number of
    encoder threads, 0 for FFmpeg's choice; the file is a pure function of the frames, fps and
    crf whatever the thread count (see ``X264_PARAMS``). Returns the written path.
    """
    check_frames(frames)
    if not 0 <= crf <= MAX_CRF:
        raise ValueError(f"crf must lie in [0, {MAX_CRF}], got {crf}")
    if threads < 0:
        raise ValueError(f"threads must be ≥ 0 (0 = automatic), got {threads}")
    rate = _frame_rate(fps)
    destination = Path(path)
    _, height, width, _ = frames.shape
    with (
        _atomic_destination(destination, ".mp4") as tmp,
        av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as out,
    ):
        stream = out.add_stream(CODEC, rate=rate)
        if not isinstance(stream, av.video.stream.VideoStream):  # av 12 has no av.VideoStream
            raise TypeError(f"{CODEC} opened a {type(stream).__name__}, expected a video stream")
        stream.width = width
        stream.height = height
        stream.pix_fmt = PIX_FMT
        stream.options = {"crf": str(crf), "x264-params": X264_PARAMS}
        stream.codec_context.thread_count = threads
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            # Explicit timestamps: without them the encoder guesses, and the file is then
            # not a pure function of the frames.
            video_frame.pts = index
            video_frame.time_base = 1 / rate
            out.mux(stream.encode(video_frame))
        out.mux(stream.encode(None))
    return destination


def write_thumbnail(frame: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write one RGB frame uint8 [H, W, 3] as a PNG (lossless), atomically; returns the path."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(
            f"a thumbnail frame must be uint8 [H, W, 3], got dtype {frame.dtype} shape {frame.shape}"
        )
    destination = Path(path)
    with _atomic_destination(destination, THUMBNAIL_SUFFIX) as tmp:
        Image.fromarray(frame).save(tmp, format="PNG", optimize=True)
    return destination


def read_video(path: str | os.PathLike[str]) -> tuple[np.ndarray, float]:
    """Decode every frame of the first video stream as RGB: (uint8 [T, H, W, 3], fps)."""
    with av.open(str(path), mode="r") as container:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path} holds no decodable video frames")
    return np.stack(frames), fps


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Read the first video stream's frame count, size, frame rate, codec and pixel format."""
    with av.open(str(path), mode="r") as container:
        stream = container.streams.video[0]
        frame_count = stream.frames
        if frame_count == 0:
            # Containers without a sample index (e.g. raw streams) do not state a count.
            frame_count = sum(1 for packet in container.demux(stream) if packet.size > 0)
        context = stream.codec_context
        return VideoInfo(
            frame_count=frame_count,
            width=context.width,
            height=context.height,
            fps=_stream_fps(stream),
            codec=context.name,
            pix_fmt=str(context.pix_fmt),
        )


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    if rate is None:
        raise ValueError(f"video stream {stream} states no frame rate")
    return float(rate)
