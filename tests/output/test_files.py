"""Overlay files: one drawing per input, shared by the page and the zip, reused between renders."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DATA
from surgery.method.options import MapOptions
from surgery.method.labels import parse_labels
from surgery.output.files import overlay_images, overlay_pngs
from surgery.output.png import PngMemo
from surgery.output.png import encode_png


@pytest.fixture(scope="module")
def session(explainer, rocket):
    from surgery.sam.segmenter import SamSegmenter
    from surgery.sam.architecture import load_sam
    from explorer.session import SessionState

    segmenter = SamSegmenter(load_sam(DATA / "sam_tiny.safetensors"))
    maps = explainer.compute_maps(rocket, parse_labels("rocket, smoke").labels, MapOptions(224, "labels"))
    state = SessionState(rocket, maps, "tiny", "sam", ("vit_b", "fp32"), segmenter.embed(rocket), ())
    state.segmenter_for_test = segmenter
    return state


def test_memo_gives_the_same_files_as_encoding_each_image(session):
    from explorer.session import rerender

    explanation = rerender(session, None, session.segmenter_for_test)
    plain = {name: encode_png(image) for name, image in overlay_images(session.image_rgb, explanation, True).items()}
    memo = PngMemo()
    assert overlay_pngs(session.image_rgb, explanation, True, memo) == plain
    assert memo.encoded == len(plain)
    assert {"clip_rocket.png", "surgery_smoke.png", "points_rocket.png", "sam_rocket.png", "masks.png"} <= set(plain)


def test_a_render_reuses_what_the_previous_render_drew_and_nothing_stale(session):
    from explorer.session import page_files, rerender

    memo = session.png_memo = PngMemo()
    before_sam = page_files(session, rerender(session, None, session.segmenter_for_test), sam_pending=True)
    drawn = memo.encoded
    assert drawn == 6  # clip, surgery and points overlays of two labels
    with_sam = page_files(session, rerender(session, None, session.segmenter_for_test))
    masks_only = [n for n in with_sam if n.endswith(".png") and not n.startswith(("clip_", "surgery_", "points_"))]
    assert memo.encoded == drawn + len(masks_only)  # the six overlays of the first yield were not drawn again
    assert all(with_sam[name] == before_sam[name] for name in before_sam)

    # A threshold that leaves 'rocket' found but moves its points: its heatmaps change, so they
    # are drawn again; a label it hides entirely gets new (empty-points) overlays too.
    top = max(float(lm.parts["surgery"].max()) for lm in session.maps.labels)
    encoded = memo.encoded
    hidden = page_files(session, rerender(session, top + 1.0, session.segmenter_for_test))
    assert not any(view.found for view in rerender(session, top + 1.0, session.segmenter_for_test).labels)
    assert memo.encoded > encoded
    assert hidden["clip_rocket.png"] == with_sam["clip_rocket.png"]  # the plain CLIP map ignores the threshold
    assert hidden["points_rocket.png"] != with_sam["points_rocket.png"]
    # Back to no threshold: the overlays of two renders ago were dropped, so they are drawn again,
    # and they come out identical.
    encoded = memo.encoded
    again = page_files(session, rerender(session, None, session.segmenter_for_test))
    assert memo.encoded > encoded
    assert again["surgery_rocket.png"] == with_sam["surgery_rocket.png"]


def test_memo_stores_no_more_than_its_budget():
    memo = PngMemo(max_bytes=1)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    memo.png("a", lambda: image)
    memo.next_render()
    memo.png("a", lambda: image)
    assert memo.encoded == 2  # too big to keep, so drawn again


def test_writing_into_a_folder_leaves_only_this_explanations_files(tmp_path):
    """An earlier run's outputs that this run does not make (a mask of a label not found now, an overlay of
    a method not computed now) are removed; files the engine never writes are left alone."""
    from surgery.output.files import write_files

    folder = tmp_path / "rocket"
    write_files(folder, {"result.json": b"{}", "mask_rocket.png": b"old", "sclip_rocket.png": b"old",
                         "hist_rocket.png": b"old", "coco.json": b"{}"})
    (folder / "notes.txt").write_text("mine")
    (folder / "photo.png").write_bytes(b"mine")
    write_files(folder, {"result.json": b"{\"new\": 1}", "hist_rocket.png": b"new"})
    assert sorted(p.name for p in folder.iterdir()) == ["hist_rocket.png", "notes.txt", "photo.png", "result.json"]
    assert (folder / "hist_rocket.png").read_bytes() == b"new"
