"""Soak test: many /explain requests against one app process; does its memory keep growing?

Starts `app.py` on the tiny test checkpoints (tests/data) as a subprocess with a private
TMPDIR and GRADIO_TEMP_DIR, sends N varied requests (images in several formats and sizes,
label sets, 224/336/512 px, SAM on and off) from K client threads, and every S completed
requests samples the server process: VmRSS from /proc/<pid>/status (no psutil), threads,
open file descriptors and what the app left on disk. Prints a table and the ratio
RSS@N / RSS@S (target <= 1.10). Always exits 0; the verdict is in the output.

    .venv/bin/python benchmarks/soak.py                       # 200 requests, 2 at a time
    .venv/bin/python benchmarks/soak.py --sessions reuse      # one Client per thread
    .venv/bin/python benchmarks/soak.py --json soak.json      # also write the figures as JSON
    .venv/bin/python benchmarks/soak.py --json -              # JSON on stdout, table on stderr
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import shutil
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

TARGET_RATIO = 1.10
LABEL_SETS = [
    "cat, grass, cat+whiskers, dog",
    "rocket, smoke, sky, giraffe",
    "person, flag, rocket+spacesuit",
    "cup, coffee, spoon+saucer, pizza",
    "man, camera, tripod+coat, sky",
    "tree",
    "car, road, house, tree, person, sky, cloud, grass",
    "猫, café, 🚀+smoke",
]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB) and Threads of a process, from /proc/<pid>/status."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                values[key] = int(rest.split()[0])
    return values


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def disk_usage(folder: Path) -> tuple[int, int]:
    """(files, bytes) under folder."""
    files = size = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                files += 1
                size += path.stat().st_size
        except OSError:
            pass
    return files, size


def make_images(folder: Path) -> list[Path]:
    import robust_media as media

    images = media.asset_variants(folder / "variants")
    formats = folder / "formats"
    images += [media.png(formats), media.webp(formats), media.animated_gif(formats), media.png_16bit(formats)[0],
               media.cmyk_jpeg(formats), media.palette_png(formats), media.rgba_transparent(formats),
               media.exif_rotated_jpeg(formats), media.grayscale(formats)]
    return images


def plan(n: int, images: list[Path]) -> dict:
    return {
        "image": images[(n * 7) % len(images)],
        "labels": LABEL_SETS[n % len(LABEL_SETS)],
        "resolution": (224, 224, 336, 512)[n % 4],
        "sam_choice": "vit_b" if n % 2 == 0 else "off",
        # at most 0.05: the page's slider never narrows below that (see explorer.handlers.Handlers.slider_update)
        "threshold": (0.0, 0.0, 0.02)[n % 3],
    }


def run_soak(args) -> dict:
    from gradio_client import Client, handle_file

    from app_server import running_app, tiny_args

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    app_tmp = work / "tmp"
    gradio_tmp = work / "gradio"
    app_tmp.mkdir()
    gradio_tmp.mkdir()
    images = make_images(work / "images")
    env = {"TMPDIR": str(app_tmp), "GRADIO_TEMP_DIR": str(gradio_tmp)}
    report: dict = {"requests_planned": args.requests, "parallel": args.parallel, "sessions": args.sessions,
                    "sample_every": args.sample_every, "samples": [], "errors": [], "stopped_early": None}
    started = time.monotonic()
    with running_app(work, *tiny_args(), env=env) as server:
        pid = server.process.pid
        report["pid"] = pid
        lock = threading.Lock()
        latencies: list[float] = []
        window: list[float] = []
        state = {"done": 0, "next": 0, "errors_in_window": 0}
        deadline = started + args.max_seconds

        def sample(done: int) -> None:
            status = proc_status(pid)
            files, size = disk_usage(app_tmp)
            gfiles, gsize = disk_usage(gradio_tmp)
            row = {
                "requests": done, "elapsed_s": round(time.monotonic() - started, 1),
                "rss_mib": round(status["VmRSS"] / 1024, 1), "hwm_mib": round(status["VmHWM"] / 1024, 1),
                "threads": status["Threads"], "fds": open_fds(pid),
                "outputs_files": files, "outputs_mib": round(size / 2**20, 2),
                "gradio_cache_files": gfiles, "gradio_cache_mib": round(gsize / 2**20, 2),
                "window_mean_s": round(statistics.fmean(window), 2) if window else None,
                "window_p95_s": round(sorted(window)[int(0.95 * (len(window) - 1))], 2) if window else None,
                "window_errors": state["errors_in_window"],
            }
            report["samples"].append(row)
            window.clear()
            state["errors_in_window"] = 0
            if not args.quiet:
                print(f"  … {done} requests, RSS {row['rss_mib']} MiB", file=sys.stderr, flush=True)

        sample(0)

        def worker(_: int) -> None:
            client = Client(server.url, verbose=False) if args.sessions == "reuse" else None
            while True:
                with lock:
                    if state["next"] >= args.requests:
                        return
                    if time.monotonic() > deadline:
                        report["stopped_early"] = f"time limit {args.max_seconds} s reached"
                        return
                    n = state["next"]
                    state["next"] += 1
                p = plan(n, images)
                t0 = time.monotonic()
                error = None
                try:
                    c = client or Client(server.url, verbose=False)
                    outputs = c.submit(handle_file(str(p["image"])), p["labels"], p["threshold"],
                                       resolution=p["resolution"], sam_choice=p["sam_choice"],
                                       api_name="/explain").result(timeout=args.request_timeout)
                    if not any(isinstance(o, str) and o.endswith("result.json") for o in outputs):
                        error = "no result.json in the outputs"
                except Exception as exc:  # noqa: BLE001 - a soak counts failures, it does not stop
                    error = f"{type(exc).__name__}: {str(exc)[:200]}"
                seconds = time.monotonic() - t0
                with lock:
                    state["done"] += 1
                    latencies.append(seconds)
                    window.append(seconds)
                    if error:
                        state["errors_in_window"] += 1
                        report["errors"].append({"request": n, "image": p["image"].name, "error": error})
                    if state["done"] % args.sample_every == 0 or state["done"] == args.requests:
                        sample(state["done"])

        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(worker, range(args.parallel)))
        report["requests_done"] = state["done"]
        report["latency_mean_s"] = round(statistics.fmean(latencies), 3) if latencies else None
        report["latency_p95_s"] = round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 3) if latencies else None
        report["server_alive"] = server.process.poll() is None
    report["wall_s"] = round(time.monotonic() - started, 1)
    if args.keep:
        report["work_dir"] = str(work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    by_count = {row["requests"]: row for row in report["samples"]}
    first = by_count.get(args.sample_every)
    last = report["samples"][-1] if report["samples"] else None
    if first and last and last["requests"] > first["requests"]:
        report["rss_first_mib"] = first["rss_mib"]
        report["rss_last_mib"] = last["rss_mib"]
        report["ratio"] = round(last["rss_mib"] / first["rss_mib"], 3)
        report["ratio_label"] = f"RSS@{last['requests']} / RSS@{first['requests']}"
        report["within_target"] = report["ratio"] <= TARGET_RATIO
    return report


def print_table(report: dict, out) -> None:
    columns = [("requests", "req"), ("elapsed_s", "elapsed s"), ("rss_mib", "RSS MiB"), ("hwm_mib", "peak MiB"),
               ("threads", "threads"), ("fds", "fds"), ("outputs_files", "tmp files"), ("outputs_mib", "tmp MiB"),
               ("gradio_cache_files", "cache files"), ("gradio_cache_mib", "cache MiB"),
               ("window_mean_s", "mean s"), ("window_p95_s", "p95 s"), ("window_errors", "errors")]
    widths = [max(len(title), 9) for _, title in columns]
    print(" | ".join(title.rjust(w) for (_, title), w in zip(columns, widths)), file=out)
    print("-+-".join("-" * w for w in widths), file=out)
    for row in report["samples"]:
        print(" | ".join(str("" if row[key] is None else row[key]).rjust(w) for (key, _), w in zip(columns, widths)),
              file=out)
    print(file=out)
    print(f"requests done {report.get('requests_done')}/{report['requests_planned']} "
          f"({report['parallel']} at a time, sessions: {report['sessions']}), errors {len(report['errors'])}, "
          f"wall {report.get('wall_s')} s, latency mean {report.get('latency_mean_s')} s "
          f"p95 {report.get('latency_p95_s')} s, server alive: {report.get('server_alive')}", file=out)
    if report.get("stopped_early"):
        print(f"stopped early: {report['stopped_early']}", file=out)
    for error in report["errors"][:5]:
        print(f"error: request {error['request']} ({error['image']}): {error['error']}", file=out)
    if "ratio" in report:
        verdict = "OK" if report["within_target"] else "ABOVE TARGET"
        print(f"{report['ratio_label']} = {report['rss_last_mib']} / {report['rss_first_mib']} MiB = "
              f"{report['ratio']:.3f} (target <= {TARGET_RATIO:.2f}): {verdict}", file=out)
    else:
        print("ratio: not enough samples", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=2, help="requests in flight at once (client threads)")
    parser.add_argument("--sample-every", type=int, default=20)
    parser.add_argument("--sessions", choices=("new", "reuse"), default="new",
                        help="new: a new Client (session) per request, like many visitors; "
                             "reuse: one Client per thread")
    parser.add_argument("--max-seconds", type=float, default=1500, help="stop sending after this long")
    parser.add_argument("--request-timeout", type=float, default=180)
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="write the figures as JSON to PATH ('-' or no PATH: stdout, table on stderr)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (app log, outputs, cache)")
    args = parser.parse_args(argv)
    table_out = sys.stderr if args.json == "-" else sys.stdout
    try:
        report = run_soak(args)
    except Exception:  # noqa: BLE001 - always exit 0, say what happened
        report = {"failed": traceback.format_exc(), "samples": [], "errors": [],
                  "requests_planned": args.requests, "parallel": args.parallel, "sessions": args.sessions}
        print(report["failed"], file=sys.stderr)
    if report["samples"]:
        print_table(report, table_out)
    if args.json == "-":
        print(json.dumps(report, indent=2, ensure_ascii=False))
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
