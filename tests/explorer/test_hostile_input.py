"""Hostile input through the real app (one running server for the module): labels and file names are
untrusted text, a request must never make the server fetch or read a file it names, and every option of
/explain answers a wrong value with a short, clear message.

Where a test checks a protection, its docstring names the protection whose removal makes it fail (each one
was removed once and the test seen to fail).
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import threading
import unicodedata
import zipfile
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import robust_media as media
from app_server import DATA, ROOT, TINY_CLIP
from gradio_client import Client, handle_file
from markdown_it import MarkdownIt

GENERIC = "upstream Gradio app has raised an exception"


# ===================================================================== helpers

class Recorder:
    """A loopback HTTP server that records every request and answers each with a small valid PNG: were the
    app (or the browser) to fetch a URL pointing here, the request would be seen."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        png = media.base_rgb((16, 16))
        buffer = io.BytesIO()
        png.save(buffer, format="PNG")
        body = buffer.getvalue()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                recorder.requests.append(self.path)
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.send_header("content-length", str(len(body)))
                self.send_header("access-control-allow-origin", "*")
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/x.png") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def recorder():
    server = Recorder()
    yield server
    server.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile-media")


def explain(app, image, labels="cat, dog", threshold=0.0, **options):
    options.setdefault("resolution", 224)
    options.setdefault("sam_choice", "off")
    return Client(app.url, verbose=False).predict(handle_file(str(image)), labels, threshold,
                                                  api_name="/explain", **options)


def error_of(call) -> str:
    with pytest.raises(Exception) as error:
        call()
    return str(error.value)


def upload(http: httpx.Client, base: str, name: str, data: bytes) -> str:
    response = http.post(f"{base}/gradio_api/upload", files=[("files", (name, data))])
    response.raise_for_status()
    return response.json()[0]


def rest_explain(app, overrides: dict | None = None, *, image: Path | None = None,
                 upload_name: str = "photo.jpg") -> tuple[bool, object, str]:
    """POST /gradio_api/call/explain with a hand-made JSON body: the image uploaded under `upload_name`,
    224 px, SAM off, every other parameter at its documented default, then `overrides` (raw JSON values,
    "image" included). Returns (succeeded, output data or error message, the whole event stream)."""
    base = app.url.rstrip("/")
    with httpx.Client(timeout=120) as http:
        parameters = http.get(f"{base}/gradio_api/info").json()["named_endpoints"]["/explain"]["parameters"]
        path = upload(http, base, upload_name, (image or media.BASE).read_bytes())
        given = {"image": {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": upload_name},
                 "labels_text": "cat, dog", "resolution": 224, "sam_choice": "off"}
        given.update(overrides or {})
        values = [given.get(p["parameter_name"], p["parameter_default"]) for p in parameters]
        return media.call_explain_raw(http, base, json.dumps({"data": values}))


def assert_clear(message: str, *says: str) -> None:
    """One short line a person can act on: not Gradio's generic message, no internals, no traceback."""
    assert message and message.strip() and message.strip().lower() not in {"none", "null", "error"}, message
    assert GENERIC not in message, f"only Gradio's generic message: {message!r}"
    assert "Traceback" not in message and not media.LEAKS.search(message), f"server internals: {message!r}"
    assert "\n" not in message.strip() and len(message) <= 300, f"not one short line: {message[:400]!r}"
    for pattern in says:
        assert re.search(pattern, message, re.IGNORECASE), f"{pattern!r} not in {message!r}"


class _Tags(HTMLParser):
    """Every tag of an HTML fragment and the text of each table row's cells."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


# What the summary's Markdown may render to: text formatting and the table, never a link, image or script.
SUMMARY_TAGS = {"p", "strong", "em", "br", "code", "blockquote", "table", "thead", "tbody", "tr", "th", "td"}


def rendered_summary(summary: str) -> _Tags:
    """The summary rendered as CommonMark with raw HTML allowed (the most permissive reading) and tables."""
    parser = _Tags()
    parser.feed(MarkdownIt("commonmark", {"html": True}).enable("table").render(summary))
    return parser


def safe_member_name(name: str) -> bool:
    return (bool(name) and "/" not in name and "\\" not in name and ".." not in name
            and not name.startswith((".", "-")) and name == name.strip()
            and not any(unicodedata.category(ch)[0] == "C" for ch in name)
            and not set(name) & set('<>:"|?*'))


def zip_names(outputs) -> list[str]:
    with zipfile.ZipFile(outputs[2]) as archive:
        return archive.namelist()


# ===================================================================== 1. labels are untrusted text

def hostile_labels(recorder_url: str) -> list[tuple[str, str, list[str] | None]]:
    """(id, typed, the labels result.json lists, or None: refused). parse_labels splits on ',', ';' and new
    lines (so the entity's ';' makes two labels) and drops format and control characters (the RTL override,
    the zero-width space, BEL and ESC): surgery/method/labels.py."""
    return [
        ("img-onerror", "<img src=x onerror=alert(1)>", ["<img src=x onerror=alert(1)>"]),
        ("script", "<script>alert(1)</script>", ["<script>alert(1)</script>"]),
        ("md-link", "[x](javascript:alert(1))", ["[x](javascript:alert(1))"]),
        ("md-image", f"![x]({recorder_url})", [f"![x]({recorder_url})"]),
        ("entity", "&lt;b&gt;", ["&lt", "b&gt"]),
        ("rtl-override", "\u202egnp.exe", ["gnp.exe"]),
        ("zero-width", "a\u200bb", ["ab"]),
        ("control", "a\x07\x1bb", ["ab"]),
        ("commas", "," * 1000, None),
    ]


CASE_IDS = [case[0] for case in hostile_labels("")]


@pytest.mark.parametrize("case", CASE_IDS)
def test_hostile_label_through_the_api(app, files, recorder, case):
    """A result listing the labels as parse_labels defines them (or a clear refusal); the summary's Markdown
    shows each label as text in its table (no link, image or HTML comes out of it: fails if
    page.markdown_text stopped escaping); every zip member has a safe, unique file name (fails if
    surgery.output.files.label_slug kept the label's characters)."""
    _, typed, expected = next(c for c in hostile_labels(recorder.url()) if c[0] == case)
    image = media.jpeg(files)
    if expected is None:
        assert_clear(error_of(lambda: explain(app, image, typed)), r"no labels found", r"e\.g\.")
        return
    outputs = explain(app, image, typed, include_files=True)
    result = media.result_json(outputs)
    assert [entry["label"] for entry in result["labels"]] == expected

    rendered = rendered_summary(media.summary(outputs))
    unexpected = [(tag, attrs) for tag, attrs in rendered.tags if tag not in SUMMARY_TAGS]
    assert not unexpected, f"the summary's Markdown makes {unexpected}"
    table = [row for row in rendered.rows if row and row[0] != "label"]
    assert [row[0] for row in table] == expected, table

    names = zip_names(outputs)
    assert len(names) == len(set(names)), names
    unsafe = [name for name in names if not safe_member_name(name)]
    assert not unsafe, unsafe
    assert {"result.json", "maps.npz"} <= set(names)
    assert json.loads(zipfile.ZipFile(outputs[2]).read("result.json"))["labels"] == result["labels"]
    assert not recorder.requests, recorder.requests


def test_hostile_upload_name_is_kept_as_text_and_written_nowhere_else(app):
    """A file uploaded (raw HTTP, so the name can hold anything) as `<b>x</b>\u202e.png`: coco.json names it
    with a plain string (Gradio keeps the last path part, without '<' '>'), and no file named like it exists
    outside Gradio's upload cache: not in the repository, the app's folders, or anywhere under the temp dir."""
    hostile = "<b>x</b>\u202e.png"
    ok, data, _ = rest_explain(app, {"sam_choice": "vit_b", "include_files": True}, upload_name=hostile)
    assert ok, data
    zip_path = Path(data[2]["path"])
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        coco = json.loads(archive.read("coco.json"))
    assert all(safe_member_name(name) for name in names), names
    (image_entry,) = coco["images"]
    file_name = image_entry["file_name"]
    assert isinstance(file_name, str) and file_name
    assert "/" not in file_name and "<" not in file_name and ">" not in file_name, file_name
    assert file_name.endswith(".png")
    assert hostile not in json.dumps(data, ensure_ascii=False)

    upload_folder = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()
    stray = []
    for top in (ROOT, Path(tempfile.gettempdir())):
        for folder, subfolders, names_here in os.walk(top):
            subfolders[:] = [s for s in subfolders if s not in (".venv", ".git", "node_modules")]
            for name in names_here + subfolders:
                if "\u202e" in name or "<b>" in name or "</b>" in name:
                    path = Path(folder, name).resolve()
                    if not path.is_relative_to(upload_folder):
                        stray.append(str(path))
    assert not stray, stray


# --- the browser ---------------------------------------------------------------------

def browser_labels(recorder_url: str) -> tuple[str, list[str]]:
    """What is typed (every hostile label, two that would set window.__pwned and a bare URL, which the page's
    Markdown would make a link) and the labels shown."""
    typed = ["<img src=x onerror=alert(1)>", "<script>alert(1)</script>", "[x](javascript:alert(1))",
             f"![x]({recorder_url})", "&lt;b&gt;", "\u202egnp.exe", "a\u200bb", "c\x07\x1bd",
             '<img src=x onerror="window.__pwned=1">', '<svg onload="window.__pwned=1">', recorder_url + "?bare"]
    shown = ["<img src=x onerror=alert(1)>", "<script>alert(1)</script>", "[x](javascript:alert(1))",
             f"![x]({recorder_url})", "&lt", "b&gt", "gnp.exe", "ab", "cd",
             '<img src=x onerror="window.__pwned=1">', '<svg onload="window.__pwned=1">', recorder_url + "?bare"]
    return ", ".join(typed), shown


def test_hostile_labels_in_the_page_show_as_text(app, browser, recorder):
    """Typed into the page and run: each card's label is the label as text, nothing injected runs (no dialog,
    window.__pwned unset, no element from a label, the recorder is never asked for the Markdown image, no
    link is made of a URL), the summary shows each label as typed (no escapes showing) and the page is no
    wider than the window. Fails if explorer/cards.py stops escaping (`_e`), or page.markdown_text stops
    escaping ':' (the page's Markdown made the URL a link, showing the backslashes)."""
    from playwright.sync_api import expect

    typed, shown = browser_labels(recorder.url())
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(app.url)
    expect(page.locator("#model-status")).to_contain_text("ready", timeout=60_000)
    page.locator("input[type=file]").first.set_input_files(str(ROOT / "assets" / "rocket.jpg"))
    expect(page.locator("#image img").first).to_be_visible(timeout=30_000)
    labels = page.locator("#labels textarea, #labels input").first
    labels.fill(typed)
    page.get_by_role("button", name="Run", exact=True).click()

    cards = page.locator(".label-card")
    expect(cards).to_have_count(len(shown), timeout=90_000)
    expect(page.locator("#cards")).not_to_contain_text("computing masks", timeout=90_000)
    expect(page.locator(".pending")).to_have_count(0, timeout=60_000)
    page.wait_for_timeout(500)  # any injected handler (onerror of a broken image) has had its turn

    assert page.locator(".label-card .label-text").all_inner_texts() == shown
    assert [cards.nth(i).get_attribute("data-label") for i in range(len(shown))] == shown
    summary = page.locator("#summary").inner_text()
    assert all(label in summary for label in shown), summary
    port = recorder.port
    injected = page.evaluate(f"""() => ({{
        pwned: window.__pwned === undefined ? null : String(window.__pwned),
        broken: document.querySelectorAll('img[src="x"], #cards script, #summary script, #cards svg[onload], '
            + '[onerror], [onload], a[href^="javascript:"]').length,
        scripts: [...document.scripts].filter(s => s.textContent.includes('alert(1)')).length,
        remote: [...document.querySelectorAll('img')].filter(i => i.src.includes('127.0.0.1:{port}')).length,
        links: [...document.querySelectorAll('a')].filter(a => a.href.includes('127.0.0.1:{port}')).length,
        widths: [document.documentElement.scrollWidth, window.innerWidth],
    }})""")
    assert injected["pwned"] is None and injected["broken"] == 0 and injected["scripts"] == 0, injected
    assert injected["remote"] == 0 and injected["links"] == 0 and not recorder.requests, (injected, recorder.requests)
    assert not dialogs, dialogs
    width, viewport = injected["widths"]
    assert width <= viewport, injected["widths"]
    page.close()


# ===================================================================== 2. files the request names

def secrets() -> list[str]:
    """Content that must never come back: /etc/hostname's (when long enough to be telling) and passwd's."""
    found = ["root:x:0:0", "root:*:0:0"]
    try:
        hostname = Path("/etc/hostname").read_text().strip()
    except OSError:
        hostname = ""
    if len(hostname) >= 6:
        found.append(hostname)
    return found


def named_targets(recorder) -> list[str]:
    return [recorder.url("/x.png"), "http://10.0.0.1/x.png", "file:///etc/passwd", "/etc/hostname",
            "/etc/passwd", str(ROOT / "app.py"), "../../../../etc/passwd"]


@pytest.mark.parametrize("field", ["path", "url", "both"])
def test_a_request_cannot_make_the_server_fetch_or_read_a_file(app, recorder, field):
    """The image's FileData naming a loopback URL (a recorder), a private address, file://, a path outside
    Gradio's upload cache: refused before anything is fetched or read (the recorder sees nothing, no
    content comes back). Gradio's own check refuses a path that was not uploaded (its message, withheld
    with show_error off, is empty); a URL alone is refused by the image box with a message."""
    for target in named_targets(recorder):
        image = {"meta": {"_type": "gradio.FileData"}, "orig_name": "x.png",
                 "path": None if field == "url" else target, "url": None if field == "path" else target}
        ok, data, stream = rest_explain(app, {"image": image})
        assert not ok, (target, data)
        assert not any(secret in stream for secret in secrets()), (target, stream[:300])
        if data:
            assert_clear(data)
        if field == "url":
            assert_clear(data, r"upload", r"URL is not fetched")
    assert not recorder.requests, recorder.requests


def test_a_url_beside_an_uploaded_file_is_ignored(app, recorder, files):
    """An uploaded file with a URL beside it: the file is explained, the URL is never fetched."""
    base = app.url.rstrip("/")
    with httpx.Client(timeout=60) as http:
        path = upload(http, base, "photo.jpg", media.jpeg(files).read_bytes())
    for target in (recorder.url("/beside.png"), "file:///etc/passwd"):
        image = {"path": path, "url": target, "meta": {"_type": "gradio.FileData"}, "orig_name": "photo.jpg"}
        ok, data, _ = rest_explain(app, {"image": image})
        assert ok, data
        assert (data[0]["width"], data[0]["height"]) == media.SIZE
    assert not recorder.requests, recorder.requests


def test_file_route_serves_only_examples_and_results(app, files):
    """GET /gradio_api/file=<path>: the system's files, the app's source and the test data are refused; an
    example asset and a result an API call returned are served."""
    base = app.url.rstrip("/")
    ok, data, _ = rest_explain(app, {"include_files": True}, image=media.jpeg(files))
    assert ok, data
    result_url = data[2]["url"]
    with httpx.Client(timeout=60) as http:
        for path in ("/etc/passwd", "/etc/hostname", str(ROOT / "app.py"), "app.py", str(TINY_CLIP),
                     str(DATA), str(ROOT / "explorer" / "handlers.py"), "../../../../etc/passwd",
                     str(ROOT / "assets" / ".." / "app.py")):
            response = http.get(f"{base}/gradio_api/file={quote(path)}")
            assert response.status_code in (403, 404), (path, response.status_code)
            assert not any(secret in response.text for secret in secrets()), path
        asset = ROOT / "assets" / "rocket.jpg"
        response = http.get(f"{base}/gradio_api/file={quote(str(asset))}")
        assert response.status_code == 200 and response.content == asset.read_bytes()
        response = http.get(result_url if result_url.startswith("http") else base + result_url)
        assert response.status_code == 200 and response.content[:2] == b"PK"
        assert response.content == Path(data[2]["path"]).read_bytes()


# ===================================================================== 3. every option of /explain

THRESHOLD = r"threshold must be a number from 0 \(off\) to 10"
CHOICES = r"not (in the list of|one of the) choices"
FLAG = r"must be true or false"

BAD_OPTIONS = [
    ("threshold", "abc", THRESHOLD), ("threshold", [1], THRESHOLD), ("threshold", 1e9, THRESHOLD),
    ("threshold", -1, THRESHOLD), ("threshold", {"x": 1}, THRESHOLD),
    ("backbone", "unknown", CHOICES), ("backbone", "b" * 10_000, CHOICES), ("backbone", 5, CHOICES),
    ("resolution", 0, r"between 224 and 1024"), ("resolution", 99999, r"between 224 and 1024"),
    ("resolution", "abc", r"whole number"), ("resolution", [1], r"whole number"),
    ("redundancy", "x", CHOICES), ("redundancy", ["vocab"], CHOICES),
    ("sam_choice", "vit_z", CHOICES), ("sam_choice", "s" * 10_000, CHOICES),
    ("precision", "fp8", CHOICES), ("precision", 3, CHOICES), ("precision", ["fp32"], CHOICES),
    ("precision", "fp16", CHOICES),  # a GPU precision: the app under test runs on the CPU
    ("instances", "yes", FLAG), ("instances", 5, FLAG), ("positive_only", "yes", FLAG), ("positive_only", 5, FLAG),
    ("methods", ["dino"], CHOICES), ("methods", ["clip"] * 10_000, r"methods must be names"),
    ("methods", 5, r"methods must be a list"), ("methods", [""], CHOICES), ("methods", "clip, dino", r"unknown method"),
    ("points_from", "dino", CHOICES), ("points_from", 5, CHOICES),
    ("include_files", "x", FLAG), ("include_files", 1, FLAG),
]


@pytest.mark.parametrize("option, value, says", BAD_OPTIONS,
                         ids=[f"{o}-{str(v)[:12]}" for o, v, _ in BAD_OPTIONS])
def test_wrong_option_is_refused_in_one_clear_line(app, option, value, says):
    ok, message, _ = rest_explain(app, {option: value})
    assert not ok, (option, str(value)[:40], str(message)[:300])
    assert_clear(message, says)


def test_methods_as_documented_text(app):
    """/explain documents methods as 'a list or a comma-separated text': the text works."""
    ok, data, _ = rest_explain(app, {"methods": "clip, surgery, naclip", "points_from": "naclip"})
    assert ok, data
    assert data[0]["methods"] == ["clip", "surgery", "naclip"] and data[0]["points_from"] == "naclip"


def test_valid_request_after_everything_and_no_unexpected_exception_logged(app, files):
    """After all of the above (and one of each option refusal again, so the check does not depend on test
    order) a valid request succeeds and the server logged no exception except Gradio's own refusals
    (`gradio.exceptions.Error`, InvalidPathError for a path that was not uploaded, and its SSRF guard's
    "Hostname ... failed validation" for a URL to a loopback or private address)."""
    for option, value, _ in BAD_OPTIONS[::3]:
        assert rest_explain(app, {option: value})[0] is False
    assert rest_explain(app, {"image": {"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}})[0] is False
    assert app.process.poll() is None, "server died"
    ok, data, _ = rest_explain(app, {"labels_text": "cat, grass", "sam_choice": "vit_b", "include_files": True,
                                     "instances": True, "methods": ["clip", "surgery", "sclip"]})
    assert ok, data
    assert [entry["label"] for entry in data[0]["labels"]] == ["cat", "grass"]
    log = app.log()
    assert "request failed" not in log, "app.user_errors caught an unexpected exception"
    allowed = ("gradio.exceptions.Error", "gradio.exceptions.InvalidPathError: Cannot move")
    finals = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        lines = [line for line in block.splitlines() if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b", line)]
        finals.append(lines[0] if lines else block.strip().splitlines()[-1])
    unexpected = [line for line in finals if not line.startswith(allowed)
                  and not re.fullmatch(r"ValueError: Hostname [\d.]+ failed validation", line.strip())]
    assert not unexpected, unexpected
