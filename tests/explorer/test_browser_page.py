"""The page as a newcomer meets it, in Debian's Chromium at 1440×900 and on a 390×844 touch phone: the
first screen, no result widgets before a result, cards big enough to judge, the large view on the same
page, a click that adds a point (one SAM decode, no encoder), histogram text and a bar's count on a tap,
"Score against a mask" with numbers recomputed here, and no console errors. Screenshots of each state go
to test-artifacts/."""

from __future__ import annotations

import io
import json
import re
import time
import zipfile

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from app_server import ROOT
from iou_reference import bilinear, close_counts, overlap, stretched

ARTIFACTS = ROOT / "test-artifacts"
DESKTOP = {"viewport": {"width": 1440, "height": 900}}
PHONE = {"viewport": {"width": 390, "height": 844}, "has_touch": True, "is_mobile": True, "device_scale_factor": 2}
SIZES = {"desktop": DESKTOP, "phone": PHONE}
ROCKET_EXAMPLE = "Run the example: rocket, smoke, sky, giraffe"


class Console:
    """Every console message and uncaught error of a page, so a test can say none was an error."""

    def __init__(self, page) -> None:
        self.messages: list[tuple[str, str]] = []
        page.on("console", lambda message: self.messages.append((message.type, message.text)))
        page.on("pageerror", lambda error: self.messages.append(("pageerror", str(error))))

    def errors(self) -> list[tuple[str, str]]:
        return [m for m in self.messages if m[0] in ("error", "pageerror")]

    def assert_clean(self, when: str) -> None:
        assert not self.errors(), (when, self.errors())
        # Gradio's client warns "Method not implemented." when an upload's progress stream is closed
        # (gradio-app/gradio#12002); nothing in these steps uploads a file, so none may appear.
        assert not [m for m in self.messages if "Method not implemented" in m[1]], (when, self.messages)


def open_page(browser, app, size: str):
    context = browser.new_context(**SIZES[size])
    page = context.new_page()
    console = Console(page)
    page.goto(app.url)
    expect(page.locator("#model-status")).to_contain_text("ready", timeout=60_000)
    return context, page, console


def settle(page) -> None:
    """No event in flight: Gradio marks an event's output blocks `pending` until its result arrives."""
    expect(page.locator(".pending")).to_have_count(0, timeout=60_000)


def run_rocket_example(page) -> None:
    page.get_by_role("button", name=ROCKET_EXAMPLE).click()
    expect(page.locator(".label-card")).to_have_count(4, timeout=120_000)
    expect(page.locator("#cards")).not_to_contain_text("computing masks", timeout=120_000)
    settle(page)
    page.wait_for_function("""() => [...document.querySelectorAll('.label-card img')]
        .every(img => img.complete && img.naturalWidth > 0)""", timeout=60_000)


def shot(page, name: str, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def box(page, selector: str) -> dict:
    found = page.locator(selector).first.bounding_box()
    assert found is not None, f"{selector} is not shown"
    return found


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_the_first_screen_holds_the_inputs_and_no_result_widget(browser, app, size):
    context, page, console = open_page(browser, app, size)
    first_screen = 900 if size == "desktop" else 844
    for selector in ("#image", "#labels", "#threshold", "#run"):
        found = box(page, selector)
        assert found["y"] >= 0 and found["y"] + found["height"] <= first_screen, (selector, found)
    example = box(page, "#examples button.example")
    if size == "desktop":  # the examples too, with room for the whole thumbnail
        assert example["y"] + example["height"] <= 900, example
    else:  # the phone's screen holds the inputs; the examples come right after Run
        assert 0 <= example["y"] - (box(page, "#run")["y"] + box(page, "#run")["height"]) < 120, example
    expect(page.get_by_role("button", name=re.compile("^Run the example"))).to_have_count(5)
    expect(page.locator("#welcome")).to_contain_text("Results appear here")
    for widget in ("#result-area", "#masks", "#mask-label", "#mask-candidate", "#download", "#result-json",
                   "#legend", "#truth-editor"):
        expect(page.locator(widget)).to_be_hidden()
    expect(page.get_by_text("All masks", exact=False)).to_have_count(0)
    for hidden_option in ("#methods", "#points-from", "#backbone"):  # under Advanced until opened
        expect(page.locator(hidden_option)).to_be_hidden()
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], widths
    shot(page, f"page-{size}-first-screen")
    console.assert_clean("load")
    context.close()


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_cards_large_view_and_a_click_that_adds_a_point(browser, app, size):
    context, page, console = open_page(browser, app, size)
    run_rocket_example(page)
    expect(page.locator("#result-area")).to_be_visible()
    expect(page.locator("#welcome")).to_be_hidden()
    console.assert_clean("Run")
    shot(page, f"page-{size}-result", full_page=True)
    shot(page, f"page-{size}-result-top")

    # Each label's maps are big enough to judge: 320 px on a desktop, the screen's width on a phone.
    widths = page.evaluate("() => [...document.querySelectorAll('.label-card img')].map(i => i.getBoundingClientRect().width)")
    assert len(widths) == 4 * 4 and min(widths) >= (320 if size == "desktop" else 300), widths

    # Histogram text is 11 px or more as rendered.
    sizes = page.evaluate("""() => [...document.querySelectorAll('.card-histogram > svg')].map(svg => {
        const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
        return Math.min(...[...svg.querySelectorAll('text')].map(t =>
            parseFloat(getComputedStyle(t).fontSize) * scale)); })""")
    assert len(sizes) == 4 and min(sizes) >= 11, sizes
    card = page.locator(".label-card").first
    readout = card.locator(".hist-readout")
    bar = card.locator(".card-histogram > svg rect.bin").nth(3)  # a short bar: its whole column answers
    if size == "phone":  # a touch screen: the hint says tap, a tap shows the bar's count
        expect(readout.locator(".hint-touch")).to_be_visible()
        expect(readout.locator(".hint-hover")).to_be_hidden()
        bar.tap()
    else:
        expect(readout.locator(".hint-hover")).to_be_visible()
        bar.hover()
    expect(readout).to_have_text(re.compile(r"^\d+ places from -?[\d.e-]+ to -?[\d.e-]+$"))
    assert readout.inner_text().split()[0] == bar.locator("title").text_content().split()[0]
    assert "hover" not in page.locator("#cards").inner_text().lower()

    # A click on any picture opens the large view on this page (no new tab); Close and Escape return.
    view = page.locator("#large-view")
    card.locator("figure[data-kind=map] button.picture").first.click()
    expect(view).to_be_visible()
    large = box(page, "#large-view .lv-image")
    if size == "desktop":
        assert large["width"] >= 800, large
    else:
        assert large["width"] >= 390 - 1 and large["x"] <= 0.5, large
    assert len(context.pages) == 1 and page.url.rstrip("/") == app.url.rstrip("/")
    shot(page, f"page-{size}-large-view")
    page.keyboard.press("Escape")
    expect(view).to_be_hidden()
    card.locator("figure[data-kind=mask] button.picture").click()
    expect(view).to_be_visible()
    page.locator("#large-view .lv-close").click()
    expect(view).to_be_hidden()

    # Refine: in the large view of the points a click adds a positive point; SAM decodes that label once.
    points = card.locator("figure[data-kind=points]")
    positives = int(points.get_attribute("data-positive"))
    points.locator("button.picture").click()
    expect(view).to_be_visible()
    expect(view.locator(".lv-tools")).to_be_visible()
    expect(view.get_by_label("adds a positive point (+)")).to_be_checked()
    shot(page, f"page-{size}-large-view-points")
    calls_before = len(app.model_calls())
    image = box(page, "#large-view .lv-image")
    started = time.monotonic()
    page.mouse.click(image["x"] + image["width"] * 0.15, image["y"] + image["height"] * 0.2)
    expect(points).to_have_attribute("data-positive", str(positives + 1), timeout=30_000)
    shown_after = time.monotonic() - started
    settle(page)
    expect(view.locator(".lv-status")).to_contain_text(f"{positives + 1} positive")
    expect(view.locator(".lv-status")).to_contain_text("1 of them yours")
    calls = app.model_calls()[calls_before:]
    assert sum("SAM mask decoder" in c for c in calls) == 1 and not [c for c in calls if "encoder" in c], calls
    print(f"{size}: click to new points on the page {shown_after:.2f} s")
    shot(page, f"page-{size}-large-view-point-added")

    # The other edits: a negative point, then the nearest point removed, then Reset.
    view.get_by_label("adds a negative point (−)").check()
    page.mouse.click(image["x"] + image["width"] * 0.8, image["y"] + image["height"] * 0.15)
    expect(points).to_have_attribute("data-negative", re.compile(r"\d+"), timeout=30_000)
    expect(view.locator(".lv-status")).to_contain_text("2 of them yours", timeout=30_000)
    view.get_by_label("removes the nearest point").check()
    page.mouse.click(image["x"] + image["width"] * 0.8 + 2, image["y"] + image["height"] * 0.15 + 2)
    expect(view.locator(".lv-status")).to_contain_text("1 of them yours", timeout=30_000)
    view.locator(".lv-show-mask input").check()
    expect(view.locator(".lv-image")).to_have_attribute("src", re.compile(r"sam_rocket\.png"))
    shot(page, f"page-{size}-large-view-mask")
    view.get_by_role("button", name="Reset points").click()
    expect(points).to_have_attribute("data-positive", str(positives), timeout=30_000)
    expect(points).to_have_attribute("data-mine", "0")
    settle(page)
    page.keyboard.press("Escape")
    expect(view).to_be_hidden()

    # A threshold move: no error either.
    slider = page.locator("#threshold input[type=number]")
    slider.fill("0.01")
    slider.press("Enter")
    expect(page.locator("#summary")).to_contain_text("Threshold 0.01", timeout=30_000)
    settle(page)
    console.assert_clean("Run, a threshold move and the clicks")
    shot(page, f"page-{size}-threshold", full_page=True)
    context.close()


def test_score_against_an_uploaded_mask_gives_numbers_recomputed_here(browser, app, tmp_path):
    """The IoU numbers the page shows equal those recomputed by tests/iou_reference.py from the downloaded
    zip's raw maps and SAM mask and the uploaded mask."""
    context, page, console = open_page(browser, app, "desktop")
    run_rocket_example(page)
    width, height = 640, 427
    truth = np.zeros((height, width), np.uint8)
    truth[80:400, 260:380] = 255
    mask_path = tmp_path / "rocket-truth.png"
    Image.fromarray(truth).save(mask_path)
    page.get_by_text("Score against a mask").click()
    expect(page.locator("#truth-label")).to_be_visible()
    expect(page.locator("#truth-editor canvas").first).to_be_visible()
    page.wait_for_timeout(1500)  # the editor draws the image in once it is shown
    page.locator("#score").scroll_into_view_if_needed()
    shot(page, "page-desktop-score-open")
    page.get_by_role("tab", name="Upload a mask").click()
    page.locator("#truth-upload input[type=file]").set_input_files(str(mask_path))
    table = page.locator(".truth-scores")
    expect(table).to_contain_text(f"{int((truth > 0).sum()):,} pixels", timeout=60_000)
    settle(page)
    page.locator("#score").scroll_into_view_if_needed()
    shot(page, "page-desktop-score-upload")
    shown = {row.locator("th").inner_text(): float(row.locator("td.iou").inner_text())
             for row in table.locator("tbody tr").all()}
    assert list(shown) == ["CLIP map", "CLIP Surgery map", "SAM mask"], shown

    zip_href = page.locator("#download a").first.get_attribute("href")
    with zipfile.ZipFile(io.BytesIO(page.request.get(zip_href).body())) as archive:
        result = json.loads(archive.read("result.json"))
        maps = np.load(io.BytesIO(archive.read("maps.npz")))
        sam = np.array(Image.open(io.BytesIO(archive.read("mask_rocket.png"))).convert("L")) >= 128
    mask = truth >= 128
    score = result["truth"]
    assert score["label"] == "rocket" and score["area"] == int(mask.sum())
    for method, name in (("clip", "CLIP map"), ("surgery", "CLIP Surgery map")):
        expected = overlap(bilinear(stretched(maps[method][0]), height, width) >= 0.5, mask)
        assert close_counts(score["maps"][method], expected, height * width), method
        assert shown[name] == pytest.approx(expected[0] / expected[1], abs=0.0015)
    expected = overlap(sam, mask)
    assert shown["SAM mask"] == pytest.approx(expected[0] / expected[1], abs=0.0005)
    assert (score["sam_mask"]["intersection"], score["sam_mask"]["union"]) == expected
    assert not console.errors(), console.errors()
    context.close()
