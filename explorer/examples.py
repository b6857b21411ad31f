"""The page's examples: an image of assets/ and the labels typed for it (one absent label and one a+b target each)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXAMPLES = [
    ("rocket.jpg", "rocket, smoke, sky, giraffe"),
    ("astronaut.jpg", "person, flag, rocket+spacesuit"),
    ("chelsea.jpg", "cat, grass, cat+whiskers, dog"),
    ("coffee.jpg", "cup, coffee, spoon+saucer, pizza"),
    ("camera.jpg", "man, camera, tripod+coat, sky"),
]
