"""End to end in a real browser: Debian's Chromium driven by Playwright, the app on tiny
random checkpoints loaded through the real loaders."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import expect

from app_server import ROOT, running_app, tiny_args

ARTIFACTS = ROOT / "test-artifacts"
LABELS = "rocket, smoke, sky+cloud"


def _card_pictures_uncropped(page) -> None:
    """Every picture in the cards is shown whole: its rendered aspect ratio equals the file's (3 %)."""
    page.wait_for_function("""() => [...document.querySelectorAll('.label-card img')]
        .every(img => img.complete && img.naturalWidth > 0)""", timeout=60_000)
    ratios = page.evaluate("""() => [...document.querySelectorAll('.label-card img')].map(img => [
        img.naturalWidth / img.naturalHeight, img.getBoundingClientRect().width / img.getBoundingClientRect().height,
        img.complete && img.naturalWidth > 0])""")
    assert ratios, "no pictures in the cards"
    for natural, rendered, loaded in ratios:
        assert loaded and abs(rendered / natural - 1) <= 0.03, (natural, rendered)


def _cards_do_not_scroll(page) -> None:
    inner = page.evaluate("""() => [...document.querySelectorAll('.label-card, .label-card *')]
        .filter(e => e.scrollHeight > e.clientHeight + 1 && ['auto', 'scroll'].includes(getComputedStyle(e).overflowY))
        .length""")
    assert inner == 0


def test_enter_runs_cards_show_each_label_whole_and_a_threshold_move_calls_no_model(browser, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    with running_app(tmp_path, *tiny_args()) as server:
        page = _ready_page(browser, server, 1440, 900)

        _upload(page, ROOT / "assets" / "rocket.jpg")
        labels = page.locator("#labels textarea, #labels input").first
        labels.fill(LABELS)
        labels.press("Enter")  # Enter in the Labels box runs

        cards = page.locator(".label-card")
        expect(cards).to_have_count(3, timeout=90_000)
        expect(page.locator("#cards")).not_to_contain_text("computing masks", timeout=90_000)
        expect(page.locator(".label-card .label-text")).to_have_text(["rocket", "smoke", "sky+cloud"])
        expect(page.locator(".label-card img")).to_have_count(3 * 4)  # CLIP, CLIP Surgery, points, mask
        expect(page.locator(".label-card .card-histogram > svg")).to_have_count(3)  # the points map's, per card
        expect(page.locator(".label-card details.other-histograms svg")).to_have_count(3)  # CLIP's, folded
        summary = page.locator("#summary")
        assert re.search(r"Found:\s*rocket, smoke, sky\+cloud", summary.inner_text())
        expect(page.locator("#masks")).to_contain_text("sky+cloud")  # the overview's legend
        expect(page.locator("#download")).to_contain_text(".zip")
        _wait_until_no_event_in_flight(page)
        _card_pictures_uncropped(page)
        _cards_do_not_scroll(page)
        page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
        page.screenshot(path=str(ARTIFACTS / "screenshot.png"))  # the first screen after a Run: the README's

        calls_before = len(server.model_calls())
        slider_number = page.locator("#threshold input[type=number]")
        maximum = float(slider_number.get_attribute("max"))
        slider_number.fill(f"{maximum:g}")
        slider_number.press("Enter")
        expect(summary).to_contain_text("Found: none", timeout=30_000)
        expect(summary).to_contain_text("Not found: rocket, smoke, sky+cloud")
        expect(page.locator(".label-card.absent")).to_have_count(3)
        expect(page.locator(".label-card .threshold-label").first).to_contain_text("threshold")
        _wait_until_no_event_in_flight(page)  # the threshold's events have all completed
        assert len(server.model_calls()) == calls_before, server.model_calls()[calls_before:]
        page.screenshot(path=str(ARTIFACTS / "app-threshold.png"), full_page=True)

        # A mistake keeps the page: the cards and the slider stay, a message says what to do.
        labels.fill("")
        page.get_by_role("button", name="Run", exact=True).click()
        expect(page.get_by_text("No labels found").first).to_be_visible(timeout=30_000)
        expect(cards).to_have_count(3)
        expect(slider_number).to_have_value(f"{maximum:g}")
        expect(page.locator("#threshold")).not_to_contain_text("Error")
        page.screenshot(path=str(ARTIFACTS / "app-error-keeps-page.png"), full_page=True)

        # Suggest before any run in a new page: a message, the slider stays a slider.
        fresh = _ready_page(browser, server, 1440, 900)
        fresh.locator("#suggest").click()
        expect(fresh.get_by_text("Run first").first).to_be_visible(timeout=30_000)
        expect(fresh.locator("#threshold input[type=number]")).to_have_value("0")
        fresh.close()
        page.close()


def test_phone_width_example_click_runs_and_nothing_scrolls_sideways(browser, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    with running_app(tmp_path, *tiny_args()) as server:
        page = _ready_page(browser, server, 390, 844)
        page.get_by_role("button", name="Run the example: rocket, smoke, sky, giraffe").click()  # no Run pressed
        expect(page.locator(".label-card")).to_have_count(4, timeout=90_000)
        expect(page.locator("#cards")).not_to_contain_text("computing masks", timeout=90_000)
        _wait_until_no_event_in_flight(page)
        _card_pictures_uncropped(page)
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], widths
        inputs_bottom = page.locator("#advanced").bounding_box()
        results_top = page.locator("#summary").bounding_box()
        assert 0 <= results_top["y"] - (inputs_bottom["y"] + inputs_bottom["height"]) < 200  # right after the inputs
        page.screenshot(path=str(ARTIFACTS / "app-phone.png"), full_page=True)
        page.close()


def _shown_result(page) -> dict:
    """The result.json the page offers for download now."""
    import json

    href = page.locator("#result-json a").first.get_attribute("href")
    return json.loads(page.request.get(href).text())


def _ready_page(browser, server, width: int, height: int):
    """A new page of the app at this viewport, once the models say they are ready."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(server.url)
    expect(page.locator("#model-status")).to_contain_text("ready", timeout=60_000)
    return page


def _upload(page, image: Path) -> None:
    """Choose the file and wait until the page shows it: the upload is asynchronous, and a Run
    pressed before it lands sends no image (one cause of this test failing now and then)."""
    page.locator("input[type=file]").first.set_input_files(str(image))
    expect(page.locator("#image img").first).to_be_visible(timeout=30_000)


def _wait_until_no_event_in_flight(page) -> None:
    """Wait until no event runs for this page: Gradio marks an event's output blocks `pending`
    from the request until its result arrives, which is after the handler (and any model call
    it makes, logged as it happens) has returned."""
    expect(page.locator(".pending")).to_have_count(0, timeout=60_000)


def _pick_dropdown(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def test_backbone_choice_suggested_threshold_and_instances(browser, tmp_path):
    rn50 = ROOT / "tests" / "data" / "parity-rn" / "weights.safetensors"
    with running_app(tmp_path, *tiny_args("--backbone-checkpoint", f"RN50={rn50}")) as server:
        page = _ready_page(browser, server, 1400, 1000)
        _upload(page, ROOT / "assets" / "chelsea.jpg")
        page.locator("#labels input, #labels textarea").first.fill("cat, grass")
        page.get_by_text("Advanced").click()
        _pick_dropdown(page, "backbone", "RN50")
        page.get_by_role("button", name="Run", exact=True).click()
        summary = page.locator("#summary")
        expect(page.locator(".label-card")).to_have_count(2, timeout=90_000)
        expect(page.locator("#cards")).not_to_contain_text("computing masks", timeout=90_000)
        expect(summary).to_contain_text("RN50 (weights.safetensors) at 512 px")  # the chosen backbone ran

        calls_before = len(server.model_calls())
        page.locator("#suggest").click()
        # These tiny weights' suggestion is below 0, which no threshold can be: the slider stays, the note says
        # why (the CLI's words), and the histograms mark the suggestion.
        slider_number = page.locator("#threshold input[type=number]")
        note = page.locator("#threshold-note")
        expect(note).to_contain_text("outside what a threshold can be", timeout=30_000)
        expect(note).to_contain_text("The threshold was left as it was")
        expect(slider_number).to_have_value("0")
        expect(page.locator(".label-card .suggested-label").first).to_contain_text("suggested -0.")
        suggested = re.search(r"suggested threshold, (-[\d.e-]+)", note.inner_text()).group(1)
        assert float(suggested) < 0
        page.screenshot(path=str(ARTIFACTS / "app-suggest-note.png"))
        page.locator("#instances input").check()
        expect(page.locator("#cards")).to_contain_text("instances", timeout=30_000)
        expect(page.locator("#masks")).to_contain_text("#1")
        assert not [c for c in server.model_calls()[calls_before:] if "encoder" in c]
        page.screenshot(path=str(ARTIFACTS / "app-instances.png"), full_page=True)
        page.close()


def test_compare_all_nine_methods_and_take_points_from_another_without_an_encoder_call(browser, tmp_path):
    """Compare with every method: nine captioned maps per label; a threshold move and a switch of the
    points map afterwards call no image encoder, ProxyCLIP's proxy encoding of SAM included (counted)."""
    ARTIFACTS.mkdir(exist_ok=True)
    titles = ["CLIP", "CLIP Surgery", "MaskCLIP", "SCLIP", "ClearCLIP", "NACLIP", "SC-CLIP", "ResCLIP", "ProxyCLIP"]
    with running_app(tmp_path, *tiny_args()) as server:
        page = _ready_page(browser, server, 1440, 900)
        _upload(page, ROOT / "assets" / "rocket.jpg")
        page.get_by_text("Advanced").click()  # the methods are under Advanced
        for title in titles[2:]:
            page.locator("#methods label").filter(has_text=re.compile(rf"^\s*{re.escape(title)}\s*$")).click()
        labels = page.locator("#labels textarea, #labels input").first
        labels.fill("rocket, smoke")
        labels.press("Enter")
        expect(page.locator(".label-card")).to_have_count(2, timeout=120_000)
        expect(page.locator("#cards")).not_to_contain_text("computing masks", timeout=120_000)
        for card in page.locator(".label-card").all():
            captions = [c.strip() for c in card.locator("figcaption").all_inner_texts()]
            assert [c.split(" map")[0] for c in captions[:9]] == titles, captions
        expect(page.locator(".label-card img")).to_have_count(2 * 11)  # nine maps, the points, the mask
        _wait_until_no_event_in_flight(page)
        _card_pictures_uncropped(page)
        page.screenshot(path=str(ARTIFACTS / "app-methods.png"), full_page=True)
        assert sum("ProxyCLIP proxy" in c for c in server.model_calls()) == 1  # the Run's one proxy encoding

        before = _shown_result(page)
        encoders_before = [c for c in server.model_calls() if "image encoder" in c]
        slider_number = page.locator("#threshold input[type=number]")
        slider_number.fill("0.05")
        slider_number.press("Enter")
        expect(page.locator(".label-card .threshold-label").first).to_contain_text("threshold", timeout=30_000)
        _wait_until_no_event_in_flight(page)
        assert [c for c in server.model_calls() if "image encoder" in c] == encoders_before
        slider_number.fill("0")
        slider_number.press("Enter")
        _wait_until_no_event_in_flight(page)
        card = page.locator(".label-card").first
        page.locator("#points-from label").filter(has_text=re.compile(r"^\s*NACLIP\s*$")).click()
        expect(card.locator("figcaption").nth(5)).to_contain_text("points and threshold from here", timeout=30_000)
        expect(card.locator(".card-histogram > svg")).to_contain_text("(NACLIP map)")
        _wait_until_no_event_in_flight(page)
        assert [c for c in server.model_calls() if "image encoder" in c] == encoders_before
        after = _shown_result(page)
        assert (before["points_from"], after["points_from"]) == ("surgery", "naclip")
        assert after["methods"] == ["clip", "surgery", "maskclip", "sclip", "clearclip", "naclip", "scclip",
                                    "resclip", "proxyclip"]
        assert [e["points"] for e in after["labels"]] != [e["points"] for e in before["labels"]]
        page.screenshot(path=str(ARTIFACTS / "app-methods-naclip.png"), full_page=True)
        page.close()
