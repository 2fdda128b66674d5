"""The words of the synthetic text-to-video task, their colours, and prompts built from them.

A prompt names four attributes, each an enum here::

    "a {colour} {shape} {motion phrase} on a {background} background"
    e.g. "a red circle moving left on a black background", "a blue square staying still on a
    gray background"

Object colours and background colours are disjoint word sets, so every colour word in a prompt
says unambiguously which of the two it describes, and every object colour lies at least
``min_object_background_distance()`` (RGB Euclidean, 0–255 scale) from every background.

The fifth motion is ``still``: the object stays where it starts. It was chosen over e.g.
"growing" because it keeps the object's size constant in every clip, so that the scorer's
temporal consistency (size stable frame to frame) means the same thing for every prompt, and it
makes "does the model move the object at all" a measured question (the dynamic degree analogue).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

RGB = tuple[int, int, int]


class Colour(Enum):
    """Object colours: the primaries and secondaries of RGB, mutually ≥ 255 apart."""

    RED = "red"
    GREEN = "green"
    BLUE = "blue"
    YELLOW = "yellow"
    CYAN = "cyan"
    MAGENTA = "magenta"

    @property
    def rgb(self) -> RGB:
        return _OBJECT_RGB[self]


class Background(Enum):
    """Plain background colours."""

    BLACK = "black"
    WHITE = "white"
    GRAY = "gray"

    @property
    def rgb(self) -> RGB:
        return _BACKGROUND_RGB[self]


class Shape(Enum):
    """Filled shapes; ``size`` is the side of the square, the diameter of the circle, and the
    base and height of the upward-pointing isosceles triangle."""

    CIRCLE = "circle"
    SQUARE = "square"
    TRIANGLE = "triangle"


class Motion(Enum):
    """Where the object goes over the clip, in image axes (x right, y down)."""

    LEFT = "left"
    RIGHT = "right"
    UP = "up"
    DOWN = "down"
    STILL = "still"

    @property
    def unit_vector(self) -> tuple[float, float]:
        """(dx, dy) of the motion's direction; (0, 0) for ``STILL``."""
        return _MOTION_VECTORS[self]

    @property
    def phrase(self) -> str:
        return "staying still" if self is Motion.STILL else f"moving {self.value}"


_OBJECT_RGB: dict[Colour, RGB] = {
    Colour.RED: (255, 0, 0),
    Colour.GREEN: (0, 255, 0),
    Colour.BLUE: (0, 0, 255),
    Colour.YELLOW: (255, 255, 0),
    Colour.CYAN: (0, 255, 255),
    Colour.MAGENTA: (255, 0, 255),
}
_BACKGROUND_RGB: dict[Background, RGB] = {
    Background.BLACK: (0, 0, 0),
    Background.WHITE: (255, 255, 255),
    Background.GRAY: (128, 128, 128),
}
_MOTION_VECTORS: dict[Motion, tuple[float, float]] = {
    Motion.LEFT: (-1.0, 0.0),
    Motion.RIGHT: (1.0, 0.0),
    Motion.UP: (0.0, -1.0),
    Motion.DOWN: (0.0, 1.0),
    Motion.STILL: (0.0, 0.0),
}
# Words a prompt may hold besides the attribute words; they carry no information.
FILLER_WORDS: frozenset[str] = frozenset(
    {"a", "an", "the", "moving", "moves", "staying", "stays", "on", "over", "background"}
)


def rgb_distance(a: RGB, b: RGB) -> float:
    """Euclidean distance between two RGB triples on the 0–255 scale."""
    return float(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5)


def min_object_background_distance() -> float:
    """The smallest RGB distance between any object colour and any background colour."""
    return min(rgb_distance(c.rgb, b.rgb) for c, b in itertools.product(Colour, Background))


@dataclass(frozen=True)
class Prompt:
    """The four attributes of a clip, and the sentence that names them."""

    colour: Colour
    shape: Shape
    motion: Motion
    background: Background

    @property
    def text(self) -> str:
        return (
            f"a {self.colour.value} {self.shape.value} {self.motion.phrase} "
            f"on a {self.background.value} background"
        )

    @classmethod
    def parse(cls, text: str) -> Prompt:
        """Read the four attributes from a sentence; word order and filler words are free.

        Raises ``ValueError`` naming the first word outside the vocabulary, or the attribute
        that is missing or named twice.
        """
        words = re.findall(r"[a-z]+", text.lower())
        _check_vocabulary(words, text)
        return cls(
            colour=_one_of(Colour, words, text),
            shape=_one_of(Shape, words, text),
            motion=_one_of(Motion, words, text),
            background=_one_of(Background, words, text),
        )


def all_prompts() -> list[Prompt]:
    """Every combination of the four attributes, in enum order."""
    return [Prompt(*combo) for combo in itertools.product(Colour, Shape, Motion, Background)]


def vocabulary() -> frozenset[str]:
    """Every word ``Prompt.parse`` accepts."""
    attribute_words = {m.value for enum in (Colour, Shape, Motion, Background) for m in enum}
    return frozenset(attribute_words | FILLER_WORDS)


def _check_vocabulary(words: list[str], text: str) -> None:
    known = vocabulary()
    for word in words:
        if word not in known:
            raise ValueError(
                f"unknown word {word!r} in prompt {text!r}; the vocabulary is {sorted(known)}"
            )


_E = TypeVar("_E", Colour, Shape, Motion, Background)


def _one_of(enum: type[_E], words: list[str], text: str) -> _E:
    found = [member for word in words for member in enum if member.value == word]
    if len(found) != 1:
        choices = [member.value for member in enum]
        problem = "names none" if not found else f"names {len(found)}"
        raise ValueError(
            f"prompt {text!r} {problem} of the {enum.__name__.lower()}s {choices}; "
            "it must name exactly one"
        )
    return found[0]
