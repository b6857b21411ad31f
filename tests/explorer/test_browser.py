"""End to end in a real browser: Debian's Chromium driven by Playwright, the app on tiny
random checkpoints loaded through the real loaders."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from app_server import ROOT, running_app, tiny_args

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
LABELS = "rocket, smoke, sky+cloud"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is required (.ci/run installs it: apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        yield browser
        browser.close()


def test_upload_run_and_threshold_in_browser(browser, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    with running_app(tmp_path, *tiny_args()) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url)
        expect(page.locator("#model-status")).to_contain_text("ready", timeout=60_000)

        _upload(page, ROOT / "assets" / "rocket.jpg")
        page.get_by_label("Labels").fill(LABELS)
        page.get_by_role("button", name="Run", exact=True).click()

        summary = page.locator("#summary")
        expect(summary).to_contain_text("Time per stage", timeout=90_000)
        expect(summary).to_contain_text("mask score", timeout=90_000)
        expect(summary).not_to_contain_text("computing", timeout=90_000)
        expect(page.locator("#heatmaps img")).to_have_count(6)  # CLIP and CLIP Surgery per label
        captions = page.locator("#heatmaps").inner_text()
        for label in ("rocket", "smoke", "sky+cloud"):
            assert f"CLIP · {label}" in captions and f"CLIP Surgery · {label}" in captions
        expect(page.locator("#points img")).to_have_count(3)
        expect(page.locator("#masks img").first).to_be_visible()
        expect(page.locator("#masks")).to_contain_text("sky+cloud")  # per-label legend
        expect(page.locator("#histograms img")).to_have_count(3)
        expect(page.locator("#download")).to_contain_text(".zip")
        assert re.search(r"Found:\s*rocket, smoke, sky\+cloud", summary.inner_text())
        page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)

        calls_before = len(server.model_calls())
        slider_number = page.locator("#threshold input[type=number]")
        maximum = float(slider_number.get_attribute("max"))
        slider_number.fill(f"{maximum:g}")
        slider_number.press("Enter")
        expect(summary).to_contain_text("Found: none", timeout=30_000)
        expect(summary).to_contain_text("Not found: rocket, smoke, sky+cloud")
        expect(page.locator("#points")).to_contain_text("rocket: not found")
        _wait_until_no_event_in_flight(page)  # the threshold's events have all completed
        assert len(server.model_calls()) == calls_before, server.model_calls()[calls_before:]
        page.screenshot(path=str(ARTIFACTS / "app-threshold.png"), full_page=True)
        page.close()
    shutil.copyfile(ARTIFACTS / "app.png", ARTIFACTS / "screenshot.png")


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
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url)
        expect(page.locator("#model-status")).to_contain_text("ready", timeout=60_000)
        _upload(page, ROOT / "assets" / "chelsea.jpg")
        page.get_by_label("Labels").fill("cat, grass")
        page.get_by_text("Advanced").click()
        _pick_dropdown(page, "backbone", "RN50")
        page.get_by_role("button", name="Run", exact=True).click()
        summary = page.locator("#summary")
        expect(summary).to_contain_text("mask score", timeout=90_000)
        expect(summary).to_contain_text("RN50 (weights.safetensors) at 512 px")  # the chosen backbone ran

        calls_before = len(server.model_calls())
        page.locator("#suggest").click()
        slider_number = page.locator("#threshold input[type=number]")
        expect(slider_number).not_to_have_value("0", timeout=30_000)
        suggested = float(slider_number.input_value())
        assert suggested > 0
        expect(summary).to_contain_text(f"Threshold {suggested:g}", timeout=30_000)

        page.locator("#instances input").check()
        expect(summary).to_contain_text("instances", timeout=30_000)
        expect(page.locator("#masks")).to_contain_text("#1")
        assert not [c for c in server.model_calls()[calls_before:] if "encoder" in c]
        page.screenshot(path=str(ARTIFACTS / "app-instances.png"), full_page=True)
        page.close()
