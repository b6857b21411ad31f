"""The pipeline benchmark's report: medians per scenario, the table the README quotes, the breakdown.

Input is what the workers of `bench_pipeline.py` write (one JSON object per
mode): ``results`` maps a scenario to a list of records, each with seconds
(``first_s``/``masks_s``/``total_s`` for a Run, ``s``/``total_s`` for a plain
call) and ``stages`` / ``first_stages`` = {"seconds": {stage: s}, "calls":
{model call: n}}, where the stages are disjoint (see `pipeline_instrumentation`).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

TARGETS = {  # row key -> (text, limit in seconds, or None)
    "pre_encode": ("—", None),
    "a_pre_first": ("≤ 2.5 s", 2.5),
    "a_pre_masks": ("≤ 8 s", 8.0),
    "a_cold_first": ("≤ 2.5 s", 2.5),
    "a_cold_masks": ("≤ 8 s", 8.0),
    "b_first": ("≤ 1.5 s", 1.5),
    "b_masks": ("≤ 1.5 s", 1.5),
    "c_rerender": ("≤ 0.1 s", 0.1),
    "c_rerender_decode": ("≤ 0.1 s", 0.1),
    "c_handler": ("—", None),
    "d_first": ("—", None),
    "d_masks": ("≤ 7 s", 7.0),
    "sam_embed": ("≤ 5 s", 5.0),
    "session": ("≥ 5× less", None),
}
ROW_NAMES = {
    "pre_encode": "(a) upload pre-encode (CLIP tokens + SAM embed)",
    "a_pre_first": "(a) first heatmaps, Run after upload",
    "a_pre_masks": "(a) masks, Run after upload",
    "a_cold_first": "(a) first heatmaps, Run directly (cold)",
    "a_cold_masks": "(a) masks, Run directly (cold)",
    "b_first": "(b) same image, new labels: first heatmaps",
    "b_masks": "(b) same image, new labels: masks",
    "c_rerender": "(c) threshold move: session.rerender (all moves)",
    "c_rerender_decode": "(c) … moves whose points changed (SAM decode)",
    "c_handler": "(c) threshold move: whole rethreshold handler",
    "d_first": "(d) new image, same labels: first heatmaps",
    "d_masks": "(d) new image, same labels: masks",
    "sam_embed": "SAM vit_b image embedding (encoder only)",
    "session": "whole session (upload+a, b, c, d)",
}
# Disjoint stages in pipeline order; "other" is the rest of the request's time.
STAGE_ORDER = ["clip_image", "text", "surgery", "points", "sam_image", "sam_decode", "ui_png", "other"]


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None; None when there are none."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def call_medians(records: list[dict], key: str = "stages") -> dict[str, float]:
    """Median number of each kind of model call over some records."""
    names = sorted({name for r in records for name in r[key]["calls"]})
    return {name: median([r[key]["calls"].get(name, 0) for r in records]) for name in names}


def summarise(product: dict | None, baseline: dict | None, precision: str) -> dict[str, dict]:
    """One row per table line (keys of `ROW_NAMES`, in order): medians, all values, ratio, target, met."""
    rows: dict[str, dict] = {}

    def put(key: str, product_values: list, baseline_values: list, loads: list | None = None) -> None:
        rows[key] = {"product": median(product_values) if product_values else None, "load1": median(loads or []),
                     "baseline": median(baseline_values) if baseline_values else None,
                     "product_all": product_values, "baseline_all": baseline_values}

    P = product["results"] if product else {}
    B = baseline["results"] if baseline else {}

    def pv(scenario: str, field: str) -> list:
        return [r[field] for r in P.get(scenario, [])]

    def bv(scenario: str, field: str) -> list:
        return [r[field] for r in B.get(scenario, [])]

    put("pre_encode", pv("pre_encode", "s"), [], pv("pre_encode", "load1"))
    put("a_pre_first", pv("a_pre", "first_s"), bv("a", "first_s"), pv("a_pre", "load1"))
    put("a_pre_masks", pv("a_pre", "masks_s"), bv("a", "masks_s"), pv("a_pre", "load1"))
    put("a_cold_first", pv("a_cold", "first_s"), bv("a", "first_s"), pv("a_cold", "load1"))
    put("a_cold_masks", pv("a_cold", "masks_s"), bv("a", "masks_s"), pv("a_cold", "load1"))
    put("b_first", pv("b", "first_s"), bv("b", "first_s"), pv("b", "load1"))
    put("b_masks", pv("b", "masks_s"), bv("b", "masks_s"), pv("b", "load1"))
    put("c_rerender", pv("c_rerender", "s"), bv("c_handler", "s"), pv("c_rerender", "load1"))
    decoding = [r for r in P.get("c_rerender", []) if r["stages"]["calls"].get("sam_decoder", 0) > 0]
    put("c_rerender_decode", [r["s"] for r in decoding], bv("c_handler", "s"), [r["load1"] for r in decoding])
    put("c_handler", pv("c_handler", "s"), bv("c_handler", "s"), pv("c_handler", "load1"))
    put("d_first", pv("d", "first_s"), bv("d", "first_s"), pv("d", "load1"))
    put("d_masks", pv("d", "masks_s"), bv("d", "masks_s"), pv("d", "load1"))

    def sam_embeds(results: dict) -> list[float]:
        """The engine's `sam_image` seconds of the requests that really encoded one image."""
        return [r["stages"]["seconds"]["sam_image"]
                for scenario in ("a_cold", "d", "a", "b") for r in results.get(scenario, [])
                if r["stages"]["calls"].get("sam_encoder") == 1 and "sam_image" in r["stages"]["seconds"]]

    put("sam_embed", sam_embeds(P), sam_embeds(B))

    # Whole session per repetition: upload pre-encode + (a) Run to masks, (b), one threshold move, (d).
    def product_sessions() -> list[float]:
        n = min(len(P.get(k, [])) for k in ("pre_encode", "a_pre", "b", "c_handler", "d")) if P else 0
        per_rep = len(P["c_handler"]) // n if n else 1
        return [P["pre_encode"][i]["s"] + P["a_pre"][i]["total_s"] + P["b"][i]["total_s"]
                + P["c_handler"][per_rep * i]["total_s"] + P["d"][i]["total_s"] for i in range(n)]

    def baseline_sessions() -> list[float]:
        n = min(len(B.get(k, [])) for k in ("a", "b", "c_handler", "d")) if B else 0
        return [B["a"][i]["total_s"] + B["b"][i]["total_s"] + B["c_handler"][i]["total_s"] + B["d"][i]["total_s"]
                for i in range(n)]

    put("session", product_sessions(), baseline_sessions())
    if precision == "bf16":
        rows["a_pre_masks"]["target"] = rows["a_cold_masks"]["target"] = ("≤ 4 s", 4.0)
    for key, row in rows.items():
        row.setdefault("target", TARGETS[key])
        p, b = row["product"], row["baseline"]
        row["ratio"] = (p / b) if (p is not None and b) else None
        limit = row["target"][1]
        if key == "session":
            row["met"] = None if row["ratio"] is None else row["ratio"] <= 0.2
        elif limit is not None and p is not None:
            row["met"] = p <= limit
        else:
            row["met"] = None
    return rows


def check_smoke(product: dict, baseline: dict | None) -> list[str]:
    """What a `--smoke` run must have recorded: every scenario, the engine's stages, and the model
    calls that show the caches at work (product) and not at all (baseline). Returns the problems."""
    problems = []
    expected_calls = {  # scenario -> {model call: count} for one request
        ("product", "pre_encode"): {"clip_image": 1, "sam_encoder": 1},
        ("product", "a_pre"): {"clip_image": 0, "sam_encoder": 0},
        ("product", "b"): {"clip_image": 0, "sam_encoder": 0},
        ("product", "d"): {"clip_image": 1, "sam_encoder": 1, "clip_text": 0},
        ("product", "a_cold"): {"clip_image": 1, "sam_encoder": 1},
        ("product", "c_rerender"): {"clip_image": 0, "sam_encoder": 0, "clip_text": 0},
        ("baseline", "a"): {"clip_image": 1, "sam_encoder": 1, "clip_text": 1},
        ("baseline", "d"): {"clip_image": 1, "sam_encoder": 1, "clip_text": 1},
        ("baseline", "c_handler"): {"clip_image": 1, "sam_encoder": 1, "clip_text": 1},
    }
    run_stages = {"clip_image", "text", "surgery", "points", "sam_image", "sam_decode", "ui_png"}
    for (mode, scenario), counts in expected_calls.items():
        data = product if mode == "product" else baseline
        if data is None:
            continue
        records = data["results"].get(scenario) or []
        if not records:
            problems.append(f"{mode} {scenario}: no records")
        for record in records:
            got = record["stages"]["calls"]
            for name, count in counts.items():
                if got.get(name, 0) != count:
                    problems.append(f"{mode} {scenario}: {got.get(name, 0)} {name} calls, expected {count}")
            if "first_s" in record and not run_stages <= set(record["stages"]["seconds"]):
                problems.append(f"{mode} {scenario}: stages {sorted(record['stages']['seconds'])}")
    for record in product["results"].get("c_rerender", []):
        if not {"points", "sam_decode"} <= set(record["stages"]["seconds"]):
            problems.append(f"product c_rerender: stages {sorted(record['stages']['seconds'])}")
    return problems


def table_title(product: dict | None, baseline: dict | None, smoke: bool, resolution: int) -> str:
    """The line above the table, from what the workers recorded."""
    reps = len((product or {}).get("results", {}).get("a_pre", []))
    baseline_reps = len((baseline or {}).get("results", {}).get("a", []))
    data = product or baseline or {}
    sample = (baseline or {}).get("text_sample", 0)
    models = ("the tests' small random CLIP and SAM (--smoke: not performance figures)" if smoke
              else f"ViT-B/16 at {resolution} px + SAM vit_b")
    return (f"CLIP Surgery Explorer pipeline, {models}, {data.get('precision', '?')}, {data.get('threads', '?')} "
            f"threads; product median of {reps}, baseline {baseline_reps} rep(s)"
            + (f"; baseline text: {sample} of 59 vocabulary classes encoded per request, "
               "the rest's time added at the measured mean" if sample else ""))


def table_lines(rows: dict[str, dict], product: dict | None, baseline: dict | None) -> list[str]:
    """The markdown table (header, rule, one line per row, peak RSS), as the README quotes it."""
    def fmt(v: float | None, digits: int = 2) -> str:
        return "—" if v is None else f"{v:.{digits}f}"

    header = (f"| {'scenario':<50} | {'product median s':>16} | {'baseline median s':>17} | {'ratio':>6} | "
              f"{'target':<10} | met | {'product min s':>13} | {'load1':>5} |")
    lines = [header, "|" + "|".join("-" * len(part) for part in header.split("|")[1:-1]) + "|"]
    for key, row in rows.items():
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:.3f}"
        met = {True: "yes", False: "NO", None: "—"}[row["met"]]
        digits = 3 if key.startswith("c_") else 2
        low = min(row["product_all"]) if row["product_all"] else None
        load = f"{row['load1']:.1f}" if row.get("load1") is not None else "—"
        lines.append(f"| {ROW_NAMES[key]:<50} | {fmt(row['product'], digits):>16} | "
                     f"{fmt(row['baseline'], digits):>17} | {ratio:>6} | {row['target'][0]:<10} | {met:>3} | "
                     f"{fmt(low, digits):>13} | {load:>5} |")
    if product:
        peak = product["memory"]["end"]["peak_rss_mb"]
        baseline_peak = baseline["memory"]["end"]["peak_rss_mb"] / 1024 if baseline else float("nan")
        lines.append(f"| {'peak RSS, product process (ru_maxrss)':<50} | {peak / 1024:>14.2f} GB | "
                     f"{baseline_peak:>15.2f} GB | {'—':>6} | {'≤ 2 GB':<10} | {'yes' if peak <= 2048 else 'NO':>3} | "
                     f"{'':>13} | {'':>5} |")
    return lines


def _memory_line(memory_log: dict) -> str:
    return ", ".join(f"{k}: rss {v['rss_mb']:.0f} (anon {v.get('anon_mb', 0):.0f}) / peak {v['peak_rss_mb']:.0f}"
                     for k, v in memory_log.items())


def print_table(rows: dict[str, dict], product: dict | None, baseline: dict | None, title: str) -> None:
    """Print `title`, the table, memory and load figures, then the per-stage breakdown."""
    print()
    print(title)
    for line in table_lines(rows, product, baseline):
        print(line)
    if product:
        print()
        print("product memory (MB; rss = anon + file-backed incl. shared libraries): "
              + _memory_line(product["memory"]))
        print(f"product: imports {product['import_s']:.1f} s, model load (ModelStore, incl. vocabulary) "
              f"{product['load_s']:.1f} s")
        warm = product.get("warmup", {})
        if "a_pre" in warm:
            print(f"first request after load (warm-up, not in medians): pre-encode {warm['pre_encode']['s']:.2f} s, "
                  f"a first {warm['a_pre']['first_s']:.2f} s, masks {warm['a_pre']['masks_s']:.2f} s")
    if baseline:
        print("baseline memory (MB): " + _memory_line(baseline["memory"]))
    print_breakdown(product, baseline)


def breakdown(records: list[dict], key: str) -> tuple[float, dict[str, float], dict[str, float]]:
    """(median total, median seconds per stage of `STAGE_ORDER` incl. 'other', median model calls)."""
    total_field = "first_s" if key == "first_stages" else ("total_s" if "total_s" in records[0] else "s")
    total = median([r[total_field] for r in records]) or 0.0
    per_record = []
    for r in records:
        seconds = {name: value for name, value in r[key]["seconds"].items() if name in STAGE_ORDER}
        seconds["other"] = max(0.0, r[total_field] - sum(seconds.values()))
        per_record.append(seconds)
    names = [n for n in STAGE_ORDER if any(n in s for s in per_record)]
    medians = {n: median([s.get(n, 0.0) for s in per_record]) for n in names}
    return total, medians, call_medians(records, key)


def print_breakdown(product: dict | None, baseline: dict | None) -> None:
    """Median seconds per stage of every scenario, to the first heatmaps and for the whole request."""
    print("\nwhere the time goes (median s per stage, the engine's own timings; clip_image includes hashing, "
          "preprocessing and cache lookups; ui_png = Gradio's PNG postprocess; other = image decoding, rendering, "
          "PNG/zip/result.json files, glue; [model calls: n])")
    for mode, data in (("product", product), ("baseline", baseline)):
        if not data:
            continue
        for scenario, records in data["results"].items():
            if not records:
                continue
            for key, label in (("first_stages", "to first heatmaps"), ("stages", "whole request")):
                if key not in records[0]:
                    continue
                total, seconds, calls = breakdown(records, key)
                parts = [f"{n} {v:.3f}" for n, v in seconds.items() if v >= 0.0005]
                called = " ".join(f"{n}×{c:g}" for n, c in calls.items() if c)
                print(f"  {mode:<8} {scenario:<10} {label:<17} {total:7.3f} s = " + ", ".join(parts)
                      + (f"  [{called}]" if called else ""))
