"""A person's own SAM points (`extra_points`, and the page's removals): checked once where a request
comes in, added to the derived points by the views, recorded in result.json."""

from __future__ import annotations

import numpy as np
import pytest

from surgery.errors import InputError
from surgery.method.labels import Label
from surgery.method.options import MAX_PERSON_POINTS, PointOptions
from surgery.method.points import points_for_sam
from surgery.method.results import LabelMaps
from surgery.method.views import label_points, view_label
from surgery.request import build_request

W = H = 70


def blob_map() -> np.ndarray:
    """(14, 14) raw map with one strong 2x2 block: positives near (35, 35)."""
    raw = np.zeros((14, 14), np.float32)
    raw[6:8, 6:8] = 1.0
    return raw


def test_extra_points_are_matched_to_labels_and_rounded():
    request = build_request("cat, grass, cat+grass", extra_points={" CAT": [[10, 20.6, 1], [5, 5, 0]],
                                                                   "cat+grass": [[1, 1, 1]]})
    assert request.points.extra_points == (("cat", ((10, 21, 1), (5, 5, 0))), ("cat+grass", ((1, 1, 1),)))
    assert build_request("cat", extra_points='{"cat": [[3, 4, 0]]}').points.added("cat").tolist() == [[3, 4, 0]]
    assert build_request("cat", extra_points=None).points.extra_points == ()
    assert build_request("cat", extra_points={}).points.extra_points == ()


@pytest.mark.parametrize("value, words", [
    ({"dog": [[1, 1, 1]]}, "names 'dog', which is not one of the labels (cat, grass)"),
    ({"cat": [[1, 1]]}, "each point is [x, y, 1 or 0]"),
    ({"cat": [1, 1, 1]}, "each point is [x, y, 1 or 0]"),
    ({"cat": [[1, 1, 2]]}, "third value is 1 (positive) or 0 (negative)"),
    ({"cat": [[1, 1, True]]}, "third value is 1 (positive) or 0 (negative)"),
    ({"cat": [[1, "a", 1]]}, "y must be a number of pixels"),
    ({"cat": [[float("nan"), 1, 1]]}, "x must be a number of pixels"),
    ({"cat": "[[1, 1, 1]]"}, "must be a list of [x, y, 1 or 0] rows"),
    ([[1, 2, 1]], "must be {label: [[x, y, 1 or 0], ...]}"),
    ("not json", "not JSON"),
    ({"cat": [[1, 1, 1]] * (MAX_PERSON_POINTS + 1)}, f"the limit is {MAX_PERSON_POINTS}"),
])
def test_bad_extra_points_are_refused_in_one_line(value, words):
    with pytest.raises(InputError) as error:
        build_request("cat, grass", extra_points=value)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_a_point_outside_the_working_image_is_refused_once_its_size_is_known():
    request = build_request("cat", extra_points={"cat": [[69, 39, 1]]})
    request.for_image(70, 40)  # inside: x < 70, y < 40
    for x, y in ((70, 0), (0, 40), (-1, 5)):
        with pytest.raises(InputError) as error:
            build_request("cat", extra_points={"cat": [[x, y, 1]]}).for_image(70, 40)
        assert "outside the 70×40 image" in str(error.value)


def test_added_points_join_the_derived_ones_and_removed_ones_go():
    raw = blob_map()[None]
    derived = points_for_sam(raw[0], W, H)
    label = Label(("cat",))
    options = PointOptions(extra_points={"cat": [[3, 4, 1], [60, 60, 0]]})
    found, points, _ = label_points(label, raw, W, H, None, options)
    assert found and points.tolist() == derived.tolist() + [[3, 4, 1], [60, 60, 0]]
    gone = tuple(derived[0])
    options = options.dropping("cat", gone)
    _, points, _ = label_points(label, raw, W, H, None, options)
    assert gone not in map(tuple, points.tolist()) and len(points) == len(derived) + 1
    assert options.dropping("cat", (3, 4, 1)).added("cat").tolist() == [[60, 60, 0]]  # one of theirs: taken back
    reset = options.resetting("cat")
    assert label_points(label, raw, W, H, None, reset)[1].tolist() == derived.tolist()
    other = Label(("dog",))  # another label's points are untouched
    assert label_points(other, raw, W, H, None, options)[1].tolist() == derived.tolist()


def test_a_positive_point_finds_a_label_the_map_does_not_reach():
    raw = blob_map()[None]
    label = Label(("cat",))
    assert not label_points(label, raw, W, H, 2.0)[0]  # the map never reaches 2
    found, points, _ = label_points(label, raw, W, H, 2.0, PointOptions(extra_points={"cat": [[9, 9, 1]]}))
    assert found and points.tolist() == [[9, 9, 1]]
    only_negative = PointOptions(extra_points={"cat": [[9, 9, 0]]})
    assert not label_points(label, raw, W, H, 2.0, only_negative)[0]  # no positive point: nothing to segment


def test_positive_only_keeps_a_persons_negatives_and_an_edited_label_is_one_prompt():
    raw = blob_map()
    raw[2:4, 10:12] = 1.0  # a second region
    options = PointOptions(instances=True, positive_only=True, extra_points={"cat": [[1, 1, 0]]})
    found, points, instances = label_points(Label(("cat",)), raw[None], W, H, None, options)
    assert found and instances == ()  # edited: one prompt
    assert (points[:, 2] == 0).sum() == 1 and points[-1].tolist() == [1, 1, 0]
    unedited = label_points(Label(("cat",)), raw[None], W, H, None, PointOptions(instances=True))
    assert len(unedited[2]) == 2


def test_the_view_knows_which_points_are_the_persons():
    maps = LabelMaps(Label(("cat",)), {"surgery": blob_map()[None]}, {"surgery": blob_map()}, 0.5, "surgery")
    view = view_label(maps, W, H, None, PointOptions(extra_points={"cat": [[3, 4, 1]]}))
    assert view.added.tolist() == [[3, 4, 1]] and view.points[-1].tolist() == [3, 4, 1]


def test_result_json_records_the_points(explainer, rocket):
    from surgery.method.options import MapOptions
    from surgery.method.views import apply_threshold
    from surgery.output.files import result_json

    request = build_request("rocket, smoke", resolution=224, extra_points={"smoke": [[10, 12, 1]]})
    maps = explainer.compute_maps(rocket, request.labels, MapOptions(224))
    options = request.points.dropping("rocket", tuple(apply_threshold(maps, None).labels[0].points[0]))
    result = result_json(apply_threshold(maps, None, options), model="tiny", sam_model=None)
    assert result["extra_points"] == {"smoke": [[10, 12, 1]]}
    assert result["labels"][1]["points"][-1] == [10, 12, 1]
    assert list(result["removed_points"]) == ["rocket"]
    plain = result_json(apply_threshold(maps, None), model="tiny", sam_model=None)
    assert plain["extra_points"] == {} and "removed_points" not in plain
