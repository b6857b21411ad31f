"""The page's examples: an image of assets/ and the labels typed for it (one absent label and one a+b target
each), shown as thumbnails that run on a click."""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXAMPLES = [
    ("rocket.jpg", "rocket, smoke, sky, giraffe"),
    ("astronaut.jpg", "person, flag, rocket+spacesuit"),
    ("chelsea.jpg", "cat, grass, cat+whiskers, dog"),
    ("coffee.jpg", "cup, coffee, spoon+saucer, pizza"),
    ("camera.jpg", "man, camera, tripod+coat, sky"),
]

CSS = """
#examples .examples { display: grid; grid-template-columns: repeat(5, minmax(0, 80px)); gap: 8px; }
#examples button.example { padding: 0; border: 2px solid transparent; border-radius: 6px; background: none;
  cursor: pointer; aspect-ratio: 1; overflow: hidden; }
#examples button.example:hover, #examples button.example:focus-visible { border-color: #0072b2; outline: none; }
#examples img { display: block; width: 100%; height: 100%; object-fit: cover; }
#examples .examples-title { font-size: 0.9rem; margin: 0 0 4px; }
"""
# A click sends the example's index (`Handlers.load_example`); then it runs like Run.
SCRIPT = """
element.addEventListener('click', event => {
  const button = event.target.closest('button.example');
  if (button) trigger('click', {example: Number(button.dataset.example)});
});
"""


def examples_html() -> str:
    """One thumbnail button per example; its accessible name and tooltip are the labels it runs with."""
    buttons = []
    for index, (name, labels) in enumerate(EXAMPLES):
        text = html.escape(f"Run the example: {labels}", quote=True)
        src = html.escape("/gradio_api/file=" + quote(str(ASSETS / name)), quote=True)
        buttons.append(f'<button class="example" type="button" data-example="{index}" aria-label="{text}" '
                       f'title="{html.escape(labels, quote=True)}"><img src="{src}" alt=""></button>')
    return ('<p class="examples-title">Examples: click one to run it</p>'
            f'<div class="examples">{"".join(buttons)}</div>')
