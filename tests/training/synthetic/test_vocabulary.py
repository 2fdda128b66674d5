"""The synthetic task's vocabulary: enough distinct attributes, prompts that parse back."""

from __future__ import annotations

import pytest

from training.synthetic.vocabulary import (
    Background,
    Colour,
    Motion,
    Prompt,
    Shape,
    all_prompts,
    min_object_background_distance,
    rgb_distance,
)


def test_the_task_has_the_required_variety() -> None:
    assert len(Colour) >= 6 and len(Shape) >= 3 and len(Motion) >= 5 and len(Background) >= 3
    assert {s.value for s in Shape} >= {"circle", "square", "triangle"}
    assert {m.value for m in Motion} >= {"left", "right", "up", "down"}


def test_colours_are_far_apart_and_far_from_backgrounds() -> None:
    colours = list(Colour)
    closest = min(rgb_distance(a.rgb, b.rgb) for a in colours for b in colours if a is not b)
    assert closest >= 255
    assert min_object_background_distance() > 200
    assert not {c.value for c in Colour} & {b.value for b in Background}


def test_every_prompt_parses_back_to_itself() -> None:
    prompts = all_prompts()
    assert len(prompts) == len(Colour) * len(Shape) * len(Motion) * len(Background)
    for prompt in prompts:
        assert Prompt.parse(prompt.text) == prompt


def test_example_prompt_and_free_word_order() -> None:
    prompt = Prompt.parse("A red circle moving left on a black background.")
    assert prompt == Prompt(Colour.RED, Shape.CIRCLE, Motion.LEFT, Background.BLACK)
    assert Prompt.parse("on a black background, the red circle moves left") == prompt
    assert Prompt(Colour.BLUE, Shape.SQUARE, Motion.STILL, Background.GRAY).text == (
        "a blue square staying still on a gray background"
    )


def test_unknown_word_is_named() -> None:
    with pytest.raises(ValueError, match="unknown word 'purple'"):
        Prompt.parse("a purple circle moving left on a black background")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a circle moving left on a black background", "names none of the colours"),
        ("a red blue circle moving left on a black background", "names 2 of the colours"),
        ("a red circle moving on a black background", "names none of the motions"),
        ("a red circle moving left", "names none of the backgrounds"),
    ],
)
def test_missing_or_repeated_attribute_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Prompt.parse(text)
