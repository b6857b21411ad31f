"""`surgery.method.labels.parse_labels`: what a person types -> labels (+ notes), or an actionable InputError."""

from __future__ import annotations

import pytest

from surgery.errors import InputError
from surgery.method.labels import MAX_LABELS, Label, parse_labels
from surgery.method.prompts import CONTEXT_LENGTH, clip_bpe, prompt_templates, tokenize

EOT = 49407
SOT = 49406


def texts(text: str) -> list[str]:
    return parse_labels(text).texts


# --- separation and whitespace ---------------------------------------------

@pytest.mark.parametrize("text", [
    "person, bench, dog",
    "person; bench; dog",
    "person\nbench\ndog",
    "person\r\nbench\rdog",
    "person,\n bench ;dog",
])
def test_commas_semicolons_and_newlines_separate_labels(text):
    assert texts(text) == ["person", "bench", "dog"]


def test_whitespace_inside_a_label_is_collapsed_and_ends_trimmed():
    assert texts("   big    red  car  ,\u00a0 small\u2003dog ") == ["big red car", "small dog"]


def test_tabs_and_other_whitespace_controls_separate_words():
    # A tab is a control character *and* whitespace: it must become a space, not glue words.
    assert texts("red\tcar, hot\x0bdog, ice\x85cream") == ["red car", "hot dog", "ice cream"]


def test_single_label_without_separator():
    parsed = parse_labels("cat")
    assert parsed.labels == (Label(("cat",)),)
    assert parsed.notes == ()


# --- combined targets --------------------------------------------------------

def test_plus_joins_parts_of_one_target():
    parsed = parse_labels("cat+grass, dog")
    assert len(parsed.labels) == 2
    combined = parsed.labels[0]
    assert combined.parts == ("cat", "grass")
    assert combined.text == "cat+grass"
    assert combined.is_combined
    assert not parsed.labels[1].is_combined
    assert parsed.texts == ["cat+grass", "dog"]


def test_spaces_around_plus_are_not_part_of_the_parts():
    label = parse_labels("  black cat  +  green   grass ").labels[0]
    assert label.parts == ("black cat", "green grass")
    assert label.text == "black cat+green grass"


@pytest.mark.parametrize("text, parts", [
    ("cat+", ("cat",)),
    ("+grass", ("grass",)),
    ("cat++grass", ("cat", "grass")),
    ("cat+ +grass", ("cat", "grass")),
])
def test_empty_plus_parts_are_dropped_with_a_note(text, parts):
    parsed = parse_labels(text)
    assert [label.parts for label in parsed.labels] == [parts]
    assert len(parsed.notes) == 1
    assert "+" in parsed.notes[0]


def test_all_empty_plus_parts_give_nothing():
    assert texts("+, dog, + ,++") == ["dog"]
    with pytest.raises(InputError):
        parse_labels("+")
    with pytest.raises(InputError):
        parse_labels(" + + ; +")


# --- empty input -------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   ", ",,, ;", "\n\n", " , ; \n , "])
def test_no_labels_is_an_input_error_with_a_helpful_message(text):
    with pytest.raises(InputError) as info:
        parse_labels(text)
    message = str(info.value)
    assert "label" in message.lower()
    assert "comma" in message.lower()  # says how to type labels
    assert "\n" not in message


def test_empty_entries_between_separators_are_ignored():
    parsed = parse_labels(",, cat ,, ; ;\n dog ,")
    assert parsed.texts == ["cat", "dog"]


# --- duplicates --------------------------------------------------------------

def test_duplicates_removed_case_insensitively_keeping_first_spelling_and_order():
    parsed = parse_labels("Cat, dog, cat, CAT, bird, Dog")
    assert parsed.texts == ["Cat", "dog", "bird"]
    assert len(parsed.notes) == 3
    assert all("once" in note for note in parsed.notes)


def test_duplicates_after_whitespace_collapse_are_duplicates():
    parsed = parse_labels("big  cat, big cat ,BIG\tCAT")
    assert parsed.texts == ["big cat"]
    assert len(parsed.notes) == 2


def test_duplicate_combined_labels_removed():
    parsed = parse_labels("cat+grass, Cat+Grass, cat")
    assert parsed.texts == ["cat+grass", "cat"]
    assert len(parsed.notes) == 1


# --- limit -------------------------------------------------------------------

def test_sixteen_labels_are_accepted():
    labels = [f"thing {chr(ord('a') + i)}" for i in range(MAX_LABELS)]
    assert MAX_LABELS == 16
    assert texts(", ".join(labels)) == labels


def test_more_than_sixteen_labels_is_an_error_mentioning_the_limit():
    labels = [f"thing {chr(ord('a') + i)}" for i in range(17)]
    with pytest.raises(InputError) as info:
        parse_labels(", ".join(labels))
    assert "16" in str(info.value)
    assert "17" in str(info.value)


def test_duplicates_do_not_count_towards_the_limit():
    labels = [f"thing {chr(ord('a') + i)}" for i in range(16)]
    parsed = parse_labels(", ".join(labels + ["THING A", "thing b"]))
    assert parsed.texts == labels


# --- length ------------------------------------------------------------------

def _assert_fits_every_template(label: str) -> None:
    for template in prompt_templates():
        prompt = template.format(label)
        ids = clip_bpe.encode(prompt)
        assert len(ids) + 2 <= CONTEXT_LENGTH, prompt  # SOT + prompt + EOT, untruncated
        row = tokenize([prompt])[0].tolist()
        assert row[0] == SOT
        assert row[1:len(ids) + 1] == ids  # nothing cut off
        assert row[len(ids) + 1] == EOT


def test_label_longer_than_the_context_is_shortened_with_a_note():
    words = ("a small brown dog sitting on a wooden bench next to a red bicycle in the park " * 13).split()[:200]
    assert len(words) == 200
    original = " ".join(words)
    parsed = parse_labels(original + ", cat")
    assert len(parsed.labels) == 2 and parsed.labels[1].text == "cat"
    shortened = parsed.labels[0].text
    assert len(parsed.notes) == 1
    assert "77" in parsed.notes[0] and shortened in parsed.notes[0]
    assert original.startswith(shortened)  # the beginning is kept
    assert len(shortened) < len(original)
    _assert_fits_every_template(shortened)
    # As much as fits is kept: close to the budget the longest template leaves, not a stub.
    longest_template = max(len(clip_bpe.encode(t.replace("{}", ""))) for t in prompt_templates())
    budget = CONTEXT_LENGTH - 2 - longest_template
    assert budget - 3 <= len(clip_bpe.encode(shortened)) <= budget


def test_label_that_fits_is_kept_as_typed():
    label = "a photo of " + " ".join(["big"] * 40)  # 43 tokens: fits every template
    assert len(clip_bpe.encode(label)) == 43
    parsed = parse_labels(label)
    assert parsed.texts == [label] and parsed.notes == ()
    _assert_fits_every_template(label)


def test_long_unicode_label_is_shortened_without_broken_characters():
    parsed = parse_labels("猫" * 100)
    shortened = parsed.labels[0].text
    assert parsed.notes
    assert 0 < len(shortened) < 100
    assert set(shortened) == {"猫"}  # no half character (U+FFFD) at the cut
    _assert_fits_every_template(shortened)


def test_a_part_of_a_combined_label_is_shortened_on_its_own():
    long_part = " ".join(["green grass"] * 60)
    label = parse_labels(f"cat+{long_part}").labels[0]
    assert label.parts[0] == "cat"
    assert long_part.startswith(label.parts[1]) and len(label.parts[1]) < len(long_part)
    _assert_fits_every_template(label.parts[1])


# --- characters --------------------------------------------------------------

@pytest.mark.parametrize("label", [
    "café", "猫", "🐱", "naïve Ölçü", "кошка", "ネコ 🐈", "👨\u200d👩\u200d👧", "👍🏽",
])
def test_unicode_and_emoji_labels_are_kept_unchanged(label):
    parsed = parse_labels(label)
    assert parsed.texts == [label]
    assert parsed.notes == ()


def test_unicode_labels_separated_like_ascii():
    assert texts("café; 猫, 🐱\n🐶+🌳") == ["café", "猫", "🐱", "🐶+🌳"]


def test_control_characters_are_stripped():
    assert texts("c\x00a\x07t, \x1bdog\x7f, bi\u200brd") == ["cat", "dog", "bird"]


def test_label_of_only_control_characters_is_empty():
    assert texts("\x00\x01, cat, \u200d") == ["cat"]
    with pytest.raises(InputError):
        parse_labels("\x00\x07\x1b")


@pytest.mark.parametrize("value", [None, 3, 2.5, ["cat"], b"cat", {"cat": 1}])
def test_non_string_input_is_an_input_error(value):
    with pytest.raises(InputError) as info:
        parse_labels(value)
    assert "label" in str(info.value).lower()
