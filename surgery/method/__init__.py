"""The method on arrays, no network: feature surgery, maps, threshold, points, labels, prompts and
per-label views. Everything a threshold move recomputes lives here (docs/method.md)."""
