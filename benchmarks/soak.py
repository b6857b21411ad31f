"""Soak benchmark: many varied /explain requests against one app process; does anything keep growing?

Starts `app.py` on the tiny test checkpoints (tests/data) as a subprocess with a private
TMPDIR, GRADIO_TEMP_DIR and served-files folder (CLIP_SURGERY_OUTPUT_DIR), sends N requests
from K clients (default 1000 from 8), mixing kinds of call: plain JSON, with files (zip and
overlays), other methods with the points taken from one of them, and threshold variations;
SAM on and off, images in several formats and sizes, label sets, 224/336/512 px. Every S
completed requests (and at request 100 and the last) it samples the server process: VmRSS and
VmHWM (peak) from /proc/<pid>/status, threads, open file descriptors (/proc/<pid>/fd) and what
the app left on disk. Prints a table, then the verdicts: peak RSS at the last request within
10 % of request 100's, the same open file descriptors other than sockets, the served-files folder
under explorer.served_files.MAX_BYTES (plus one render per client in flight: the sweep runs before
each write), no errors; and p50/p95 latency per kind of call. A benchmark,
not a test: it always exits 0 and the verdict is in the output.

    .venv/bin/python benchmarks/soak.py --requests 200         # CI-sized: a few minutes
    .venv/bin/python benchmarks/soak.py                        # 1000 requests, 8 clients
    .venv/bin/python benchmarks/soak.py --sessions new         # a new Client (session) per request
    .venv/bin/python benchmarks/soak.py --json soak.json       # also write the figures as JSON
    .venv/bin/python benchmarks/soak.py --json -               # JSON on stdout, table on stderr
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


def fd_targets(pid: int) -> list[str]:
    """What each open file descriptor of a process points to (from /proc/<pid>/fd), sockets as "socket"."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    targets = []
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        targets.append("socket" if target.startswith("socket:") else target.split("[")[0].rstrip(":"))
    return targets


def open_fds(pid: int) -> tuple[int, int]:
    """(all open file descriptors, those that are not sockets) of a process, from /proc/<pid>/fd.
    Sockets come and go with the clients' connections; files and pipes are what a leak leaves."""
    targets = fd_targets(pid)
    if not targets:
        return -1, -1
    return len(targets), sum(target != "socket" for target in targets)


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


def largest_folder(root: Path) -> int:
    """Bytes of the largest folder directly under root (one render's files)."""
    sizes = [disk_usage(folder)[1] for folder in root.glob("*") if folder.is_dir()] if root.is_dir() else []
    return max(sizes, default=0)


def make_images(folder: Path) -> list[Path]:
    import robust_media as media

    images = media.asset_variants(folder / "variants")
    formats = folder / "formats"
    images += [media.png(formats), media.webp(formats), media.animated_gif(formats), media.png_16bit(formats)[0],
               media.cmyk_jpeg(formats), media.palette_png(formats), media.rgba_transparent(formats),
               media.exif_rotated_jpeg(formats), media.grayscale(formats)]
    return images


KINDS = ("json", "files+sam", "methods", "threshold")
METHOD_SETS = [  # (methods, points_from)
    (["clip", "surgery", "maskclip"], "maskclip"),
    (["surgery", "sclip", "clearclip"], "sclip"),
    (["clip", "surgery", "naclip"], "surgery"),
    ("surgery, clearclip", "clearclip"),
]


def plan(n: int, images: list[Path]) -> dict:
    """Request n: its kind of call and its options (deterministic, so runs compare)."""
    kind = KINDS[n % len(KINDS)]
    p = {
        "kind": kind,
        "image": images[(n * 7) % len(images)],
        "labels": LABEL_SETS[n % len(LABEL_SETS)],
        "resolution": (224, 224, 336, 512)[(n // len(KINDS)) % 4],
        "sam_choice": "off",
        "threshold": 0.0,
        "methods": None,
        "points_from": None,
        "include_files": False,
    }
    if kind == "files+sam":
        p.update(sam_choice="vit_b", include_files=True)
    elif kind == "methods":
        methods, points_from = METHOD_SETS[(n // len(KINDS)) % len(METHOD_SETS)]
        p.update(methods=methods, points_from=points_from, sam_choice="vit_b" if n % 8 < 4 else "off",
                 include_files=n % 3 == 0)
    elif kind == "threshold":
        # at most 0.05: the page's slider never narrows below that
        p.update(threshold=(0.005, 0.01, 0.02, 0.03, 0.05)[(n // len(KINDS)) % 5],
                 sam_choice="vit_b" if n % 8 >= 4 else "off")
    return p


def check_outputs(outputs, p: dict) -> str | None:
    """What came back answers this request (None), or what is wrong with it."""
    result = outputs[0] if outputs else None
    if not isinstance(result, dict) or not result.get("labels"):
        return "no result"
    expected_threshold = p["threshold"] or None
    if result.get("threshold") != expected_threshold:
        return f"threshold {result.get('threshold')} for {expected_threshold}"
    if (result.get("sam_model") is None) != (p["sam_choice"] == "off"):
        return "SAM on/off differs from the request"
    if p["include_files"] != (outputs[2] is not None):
        return "zip present/absent differs from include_files"
    return None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 3)


def run_soak(args) -> dict:
    from gradio_client import Client, handle_file

    from app_server import running_app, tiny_args
    from explorer.served_files import MAX_BYTES

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    app_tmp, gradio_tmp, served = work / "tmp", work / "gradio", work / "served"
    app_tmp.mkdir()
    gradio_tmp.mkdir()
    images = make_images(work / "images")
    env = {"TMPDIR": str(app_tmp), "GRADIO_TEMP_DIR": str(gradio_tmp), "CLIP_SURGERY_OUTPUT_DIR": str(served)}
    report: dict = {"requests_planned": args.requests, "parallel": args.parallel, "sessions": args.sessions,
                    "sample_every": args.sample_every, "samples": [], "errors": [], "stopped_early": None,
                    "served_limit_mib": round(MAX_BYTES / 2**20, 1)}
    checkpoints = {min(100, args.requests), args.requests}
    started = time.monotonic()
    with running_app(work, *tiny_args(), env=env) as server:
        pid = server.process.pid
        report["pid"] = pid
        lock = threading.Lock()
        latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
        window: list[float] = []
        state = {"done": 0, "next": 0, "errors_in_window": 0}
        deadline = started + args.max_seconds

        def sample(done: int) -> None:
            status = proc_status(pid)
            files, size = disk_usage(app_tmp)
            sfiles, ssize = disk_usage(served)
            gfiles, gsize = disk_usage(gradio_tmp)
            row = {
                "requests": done, "elapsed_s": round(time.monotonic() - started, 1),
                "rss_mib": round(status["VmRSS"] / 1024, 1), "hwm_mib": round(status["VmHWM"] / 1024, 1),
                "threads": status["Threads"], **dict(zip(("fds", "file_fds"), open_fds(pid))),
                "fd_kinds": sorted(t for t in fd_targets(pid) if t != "socket"),
                "served_files": sfiles, "served_mib": round(ssize / 2**20, 2),
                "render_mib": round(largest_folder(served) / 2**20, 2),
                "outputs_files": files, "outputs_mib": round(size / 2**20, 2),
                "gradio_cache_files": gfiles, "gradio_cache_mib": round(gsize / 2**20, 2),
                "window_mean_s": round(statistics.fmean(window), 2) if window else None,
                "window_p95_s": percentile(window, 0.95),
                "window_errors": state["errors_in_window"],
            }
            report["samples"].append(row)
            window.clear()
            state["errors_in_window"] = 0
            if not args.quiet:
                print(f"  … {done} requests, RSS {row['rss_mib']} MiB, peak {row['hwm_mib']} MiB, "
                      f"fds {row['fds']} ({row['file_fds']} not sockets)", file=sys.stderr, flush=True)

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
                                       methods=p["methods"], points_from=p["points_from"],
                                       include_files=p["include_files"],
                                       api_name="/explain").result(timeout=args.request_timeout)
                    error = check_outputs(outputs, p)
                except Exception as exc:  # noqa: BLE001 - a soak counts failures, it does not stop
                    error = f"{type(exc).__name__}: {str(exc)[:200]}"
                seconds = time.monotonic() - t0
                with lock:
                    state["done"] += 1
                    latencies[p["kind"]].append(seconds)
                    window.append(seconds)
                    if error:
                        state["errors_in_window"] += 1
                        report["errors"].append({"request": n, "kind": p["kind"], "image": p["image"].name,
                                                 "error": error})
                    if state["done"] % args.sample_every == 0 or state["done"] in checkpoints:
                        sample(state["done"])

        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(worker, range(args.parallel)))
        if not report["samples"] or report["samples"][-1]["requests"] != state["done"]:
            sample(state["done"])  # stopped early: the last request is still a checkpoint
        report["requests_done"] = state["done"]
        every = [seconds for values in latencies.values() for seconds in values]
        report["latency_s"] = {kind: {"n": len(values), "p50": percentile(values, 0.5), "p95": percentile(values, 0.95)}
                               for kind, values in [*latencies.items(), ("all", every)]}
        report["server_alive"] = server.process.poll() is None
    report["wall_s"] = round(time.monotonic() - started, 1)
    if args.keep:
        report["work_dir"] = str(work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    by_count = {row["requests"]: row for row in report["samples"]}
    first = by_count.get(min(100, args.requests))
    last = report["samples"][-1] if report["samples"] else None
    if first and last and last["requests"] > first["requests"]:
        report["first_label"], report["last_label"] = f"request {first['requests']}", f"request {last['requests']}"
        report["rss_first_mib"], report["rss_last_mib"] = first["rss_mib"], last["rss_mib"]
        report["peak_first_mib"], report["peak_last_mib"] = first["hwm_mib"], last["hwm_mib"]
        report["ratio"] = round(last["hwm_mib"] / first["hwm_mib"], 3)
        report["within_target"] = report["ratio"] <= TARGET_RATIO
        report["fds_first"], report["fds_last"] = first["fds"], last["fds"]
        report["file_fds_first"], report["file_fds_last"] = first["file_fds"], last["file_fds"]
        gone, new = list(first["fd_kinds"]), []
        for kind in last["fd_kinds"]:
            (gone.remove if kind in gone else new.append)(kind)
        report["fd_kinds_closed"], report["fd_kinds_opened"] = gone, new
    report["served_max_mib"] = max((row["served_mib"] for row in report["samples"]), default=None)
    # The sweep runs before each render is written, so the folder may pass the limit by the renders in
    # flight: at most one per client.
    largest = max((row["render_mib"] for row in report["samples"]), default=0)
    report["served_bound_mib"] = round(report["served_limit_mib"] + args.parallel * largest, 2)
    return report


def print_table(report: dict, out) -> None:
    columns = [("requests", "req"), ("elapsed_s", "elapsed s"), ("rss_mib", "RSS MiB"), ("hwm_mib", "peak MiB"),
               ("threads", "threads"), ("fds", "fds"), ("file_fds", "file fds"), ("served_files", "served files"),
               ("served_mib", "served MiB"),
               ("outputs_files", "tmp files"), ("outputs_mib", "tmp MiB"),
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
          f"({report['parallel']} clients, sessions: {report['sessions']}), wall {report.get('wall_s')} s, "
          f"server alive: {report.get('server_alive')}", file=out)
    for kind, figures in report.get("latency_s", {}).items():
        print(f"latency {kind:>10}: n {figures['n']:4d}  p50 {figures['p50']} s  p95 {figures['p95']} s", file=out)
    if report.get("stopped_early"):
        print(f"stopped early: {report['stopped_early']}", file=out)
    if "ratio" in report:
        verdict = "OK" if report["within_target"] else "ABOVE TARGET"
        print(f"peak RSS {report['last_label']} / {report['first_label']} = {report['peak_last_mib']} / "
              f"{report['peak_first_mib']} MiB = {report['ratio']:.3f} (target <= {TARGET_RATIO:.2f}): {verdict} "
              f"(RSS {report['rss_first_mib']} -> {report['rss_last_mib']} MiB)", file=out)
        first, last = report["file_fds_first"], report["file_fds_last"]
        verdict = "OK" if first == last else ("FEWER (nothing leaked)" if last < first else "MORE (a leak?)")
        print(f"open fds {report['last_label']} / {report['first_label']}: files and pipes "
              f"{report['file_fds_last']} / {report['file_fds_first']} (target equal): {verdict}; all, sockets "
              f"included (they follow the clients' open connections) {report['fds_last']} / {report['fds_first']}",
              file=out)
        if report["fd_kinds_closed"] or report["fd_kinds_opened"]:
            print(f"  open at {report['first_label']} only: {report['fd_kinds_closed'] or 'none'}; "
                  f"at {report['last_label']} only: {report['fd_kinds_opened'] or 'none'}", file=out)
    else:
        print("ratio: not enough samples", file=out)
    if report.get("served_max_mib") is not None:
        verdict = "OK" if report["served_max_mib"] <= report["served_bound_mib"] else "ABOVE LIMIT"
        print(f"served-files folder at most {report['served_max_mib']} MiB (limit {report['served_limit_mib']} MiB, "
              f"plus one render per client in flight: {report['served_bound_mib']} MiB): {verdict}", file=out)
    print(f"errors {len(report['errors'])} (target 0): {'OK' if not report['errors'] else 'FAILED'}", file=out)
    for error in report["errors"][:5]:
        print(f"error: request {error['request']} ({error['kind']}, {error['image']}): {error['error']}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=8, help="clients sending at once (threads)")
    parser.add_argument("--sample-every", type=int, default=50)
    parser.add_argument("--sessions", choices=("new", "reuse"), default="reuse",
                        help="reuse: one Client (session) per client thread; "
                             "new: a new Client per request, like many visitors")
    parser.add_argument("--max-seconds", type=float, default=3600, help="stop sending after this long")
    parser.add_argument("--request-timeout", type=float, default=300)
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
