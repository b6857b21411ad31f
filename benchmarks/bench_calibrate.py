"""Dataset mode's throughput: `python -m surgery calibrate` serially, with `--workers 2`, and on Ray.

On full-size random weights (ViT-B/16 in the OpenAI layout + SAM vit_b, written once by the pipeline
benchmark's instrumentation into its cache; random weights cost exactly the time real ones do), over
a folder of N asset photos with fresh noise (`--images`, default 10), 512 px, 3 labels, SAM on. Each
run is the real command in its own subprocess, into a fresh output folder (nothing skipped):

- `serial`: one process (torch's default threads);
- `workers`: `--workers 2` (spawned processes, torch threads split between them);
- `ray`: `--ray` (a local Ray cluster started by the command, an actor pool of one actor per CPU).

An untimed one-image run first puts the labels' text features in the disk cache, as any second run finds them.

Prints medians over `--reps` of the whole command's wall time and of the explaining phase
(`summary.json` timings: model loading in the workers included, checkpoint hashing and Ray's start-up
not), images per minute from each, the 1-minute load average after each run (the machine may be
shared), and Ray's overhead per image against `--workers 2` (the same number
of model copies on the same cores). `--smoke` runs each mode once on the tests' tiny checkpoints and 3
images (a check that it runs; its figures say nothing).

    .venv/bin/python benchmarks/bench_calibrate.py [--images 10] [--reps 2] [--skip-ray] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

LABELS = "rocket, person, sky"
MODES = {"serial": [], "workers": ["--workers", "2"], "ray": ["--ray"]}


def write_images(folder: Path, count: int) -> None:
    """`count` JPEGs: asset photos with fresh noise (as the pipeline benchmark makes them)."""
    from pipeline_instrumentation import make_image

    folder.mkdir(parents=True)
    for seed in range(count):
        make_image(2000 + seed).save(folder / f"image_{seed:03d}.jpg", quality=92)


def run_once(mode: str, folder: Path, out: Path, clip: Path, sam: Path, resolution: int) -> dict:
    """One calibrate command; its wall time and summary.json's timings."""
    command = [sys.executable, "-m", "surgery", "calibrate", str(folder), "--labels", LABELS,
               "--clip-checkpoint", str(clip), "--sam-checkpoint", str(sam), "--resolution", str(resolution),
               "--out", str(out), *MODES[mode]]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    timings = json.loads((out / "summary.json").read_text())["timings"]
    return {"wall": wall, "phase": timings["seconds"], "explained": timings["explained_now"],
            "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="once each, tiny checkpoints, 3 images")
    args = parser.parse_args()

    from pipeline_instrumentation import prepared_checkpoints, smoke_checkpoints

    clip, sam = smoke_checkpoints() if args.smoke else prepared_checkpoints()
    images, reps = (3, 1) if args.smoke else (args.images, args.reps)
    resolution = 224 if args.smoke else args.resolution
    modes = [mode for mode in MODES if not (mode == "ray" and args.skip_ray)]
    if "ray" in modes:
        try:
            import ray  # noqa: F401
        except ImportError:
            modes.remove("ray")
            print("note: Ray is not installed (pip install .[ray]); its mode is skipped", file=sys.stderr)
    records: dict[str, list[dict]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="bench-calibrate-") as tmp:
        folder = Path(tmp) / "images"
        write_images(folder, images)
        warm = Path(tmp) / "warm"  # untimed: label embeddings land in the disk cache every mode then reads
        write_images(warm, 1)
        run_once("serial", warm, Path(tmp) / "out-warm", clip, sam, resolution)
        for rep in range(reps):
            for mode in modes:
                record = run_once(mode, folder, Path(tmp) / f"out-{mode}-{rep}", clip, sam, resolution)
                assert record["explained"] == images, record
                records[mode].append(record)
                print(f"rep {rep} {mode}: wall {record['wall']:.1f} s, explaining {record['phase']:.1f} s, "
                      f"1-minute load average after it {record['load']:.2f}", file=sys.stderr)
    median = {mode: {key: statistics.median(r[key] for r in rs) for key in ("wall", "phase")}
              for mode, rs in records.items()}
    what = "tiny checkpoints (smoke: figures mean nothing)" if args.smoke else "ViT-B/16 + SAM vit_b, random weights"
    print(f"\ncalibrate, {images} images, {resolution} px, 3 labels, SAM on, {what}; {os.cpu_count()} CPUs; "
          f"medians of {reps}")
    print("| mode | command s | images/min (command) | explaining s | images/min (explaining) |\n|---|---|---|---|---|")
    for mode, m in median.items():
        print(f"| {mode} | {m['wall']:.1f} | {60 * images / m['wall']:.1f} | {m['phase']:.1f} | "
              f"{60 * images / m['phase']:.1f} |")
    if "ray" in median:
        ray, workers = median["ray"], median["workers"]
        print(f"Ray overhead per image against --workers 2: {(ray['phase'] - workers['phase']) / images:+.2f} s "
              f"explaining, {(ray['wall'] - workers['wall']) / images:+.2f} s whole command (cluster start-up "
              "spread over the images)")


if __name__ == "__main__":
    main()
