"""The label cards' HTML: text shown as text, pictures whole, the histogram's marks."""

from __future__ import annotations

import re

import numpy as np
import pytest

from explorer.cards import cards_html, histogram_svg, legend_html
from surgery.method.labels import parse_labels
from surgery.method.options import MapOptions
from surgery.method.views import apply_threshold
from surgery.output.files import overlay_names

HOSTILE = '<img src=x onerror=alert(1)>, <script>alert(2)</script>, [link](javascript:x), fish & chips, "quoted"'


@pytest.fixture(scope="module")
def explanation(explainer, rocket):
    maps = explainer.compute_maps(rocket, parse_labels(HOSTILE).labels, MapOptions(224, "labels"))
    return apply_threshold(maps, None)


def test_labels_are_text_and_nothing_runs(explanation):
    files = {name: f"/served/{name}" for view in explanation.labels for name in overlay_names(view.text, explanation.maps.options.methods)}
    html = cards_html(explanation, files, suggested=None, sam_state="off")
    assert "<script" not in html and "<img src=x" not in html and "onerror=alert" not in html.replace(
        "onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html and "fish &amp; chips" in html and "&quot;quoted&quot;" in html
    assert html.count('class="label-card ') == len(explanation.labels) == 5


def test_pictures_keep_their_aspect_and_open_larger(explanation):
    view = explanation.labels[0]
    files = {name: f"/served/x/{name}" for name in overlay_names(view.text, explanation.maps.options.methods)}
    html = cards_html(explanation, files, suggested=None, sam_state="off")
    width, height = explanation.maps.width, explanation.maps.height
    pictures = re.findall(r'<img src="([^"]+)"[^>]* width="(\d+)" height="(\d+)"', html)
    assert len(pictures) == 3  # CLIP, CLIP Surgery, points; SAM is off
    assert all((int(w), int(h)) == (width, height) for _, w, h in pictures)
    # a picture is a button that opens the large view on the page: no link, never a new tab
    assert "<a " not in html and "target=" not in html
    assert html.count('<button class="picture" type="button"') == len(pictures) == html.count("<img ")
    assert 'data-kind="points"' in html and f'data-width="{width}" data-height="{height}"' in html
    assert "SAM is off" in html


def test_histogram_marks_and_labels_threshold_and_suggestion():
    values = np.concatenate([np.linspace(-0.1, 0.0, 500), np.linspace(0.05, 0.2, 100)])
    svg = histogram_svg(values, threshold=0.12, suggested=0.03, label="cat")
    assert 'class="threshold"' in svg and "threshold 0.12" in svg
    assert 'class="suggested"' in svg and "suggested 0.03" in svg
    # a count per bin, on its whole column (hover, or a tap through the card's script)
    assert svg.count("<title>") == svg.count('<rect class="bin"') == svg.count('<rect class="bar')
    assert 'font-size="13"' in svg and 'viewBox="0 0 360 ' in svg  # 11 px or more once shown 305 px wide
    counts = [int(n) for n in re.findall(r"<title>(\d+) places", svg)]
    assert sum(counts) == values.size
    counts_by_bin = {int(b): int(n) for b, n in re.findall(r'<rect class="bin" data-bin="(\d+)"[^>]*><title>(\d+)', svg)}
    evidence = [int(b) for b in re.findall(r'<rect class="bar evidence" data-bin="(\d+)"', svg)]
    bin_counts, edges = np.histogram(values, bins=40)
    assert sum(counts_by_bin[b] for b in evidence) == int(bin_counts[edges[:-1] >= 0.12].sum()) > 0  # bins from t up
    off = histogram_svg(values, threshold=None, suggested=None, label="cat")
    assert 'class="threshold"' not in off and "evidence" not in off
    assert "no data" in histogram_svg(np.array([]), None, None, "x")


def test_the_colour_bar_explains_stretching_in_plain_words():
    assert "weakest place (blue) to its strongest (red)" in legend_html(None) and "best guess" in legend_html(None)
    assert "Threshold 0.1" in legend_html(0.1) and "no match" in legend_html(0.1)
    for jargon in ("softmax", "cosine", "raw ", "vocab", "redundancy"):
        assert jargon not in legend_html(None) + legend_html(0.1)


def test_each_computed_map_has_its_histogram_on_its_own_scale(explainer, rocket):
    from surgery.method.options import MapOptions as Options

    maps = explainer.compute_maps(rocket, parse_labels("rocket").labels,
                                  Options(224, "vocab", methods=("clip", "surgery", "naclip"), points_from="naclip"))
    html = cards_html(apply_threshold(maps, 0.01), {}, suggested=None, sam_state="off")
    assert html.count("<svg") == 3
    first, rest = html.split('<details class="other-histograms">', 1)
    assert "(NACLIP map)" in first and 'class="threshold"' in first  # the points' map, threshold marked
    assert "(CLIP map)" in rest and "(CLIP Surgery map)" in rest and 'class="threshold"' not in rest
