"""`make bench`: every benchmark in one run, a results file, and the goals table.

    uv run --frozen python -m benchmarks.run_all [--quick] [--soak 300] [--machine NAME]

Runs, each in its own process and in this order: `flops`, `bare_loop`, `inference`,
`startup`, `train` (a bare-loop epoch before and after each of 3 `make train
ARGS="experiment=fast seed=S"`, then the default `make train`), `photos` (accuracy on
generated phone photos of digits against clean PNGs, issue 12), `serving` (`make serve` on
the model trained just before, `benchmarks.loadgen` against it, a 5-minute memory soak),
`peers` (the same champion behind `make serve`, plain FastAPI and LitServe, interleaved; then
overload) and `gpu` (skipped without CUDA). Writes
`benchmarks/results/<date>-<machine>.json` and prints the table of the goals of issue 5
against the measured values.

Child processes share a bytecode cache (PYTHONPYCACHEPREFIX, filled before the first timed
step) so that start-up is measured as on any machine where Python may write its .pyc files;
`startup` also reports the cost without one.

A full run takes about 18 minutes on 2 cores. `--quick` checks the whole chain in about
4 minutes (one fast seed on a 6,400-image subset, no default run, 2 s scenarios, 10 s soak):
its figures are not the goals'.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, RESULTS_DIR, cpu_model, load_avg, machine

GOALS_FILE_KEY = "goals"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_name() -> str:
    return os.environ.get("BENCH_MACHINE") or slug(f"{os.cpu_count()}cpu {cpu_model()}")[:40]


def git_state() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def child_env(pycache: Path) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def step(name: str, args: list[str], results: Path, env: dict, timeout: float) -> float:
    print(f"== {name} (load {load_avg()[0]})", flush=True)
    start = time.time()
    subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--results", str(results), *args],
        cwd=REPO,
        env=env,
        check=True,
        timeout=timeout,
        stdout=subprocess.DEVNULL,
    )
    seconds = round(time.time() - start, 1)
    print(f"   {seconds} s", flush=True)
    return seconds


# --- the goals table ------------------------------------------------------------------------


def get(data: dict, path: str):
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def goals(r: dict) -> list[dict]:
    rows: list[dict] = []

    def row(goal: str, target: str, value, ok: bool | None, note: str = "") -> None:
        rows.append({"goal": goal, "target": target, "measured": value, "met": ok, "note": note})

    peer_rows(r, row)

    fast = get(r, "train.fast_summary") or {}
    ratio = fast.get("ratio_to_bare_loop_median")
    row(
        "1 train throughput / bare loop",
        ">= 0.90",
        ratio,
        ratio is not None and ratio >= 0.90,
        f"median of {fast.get('ratio_to_bare_loop_each')}; "
        f"{fast.get('train_images_per_s_mean')} vs {fast.get('bare_loop_images_per_s')} img/s",
    )
    all_in = fast.get("ratio_to_bare_loop_all_in_mean")
    row("1 ... all-in (with validation, images)", "report", all_in, None)
    acc = fast.get("test_acc_mean")
    row(
        "2 fast: test acc, mean of seeds",
        ">= 0.990",
        acc,
        acc is not None and acc >= 0.990,
        f"{fast.get('train_steps_s_mean')} s training, {fast.get('make_wall_s_mean')} s end to end",
    )
    default = get(r, "train.default") or {}
    acc = default.get("test_acc")
    row(
        "2 default (5 epochs): test acc",
        ">= 0.992",
        acc,
        acc is not None and acc >= 0.992,
        f"{default.get('train_steps_s')} s training, {default.get('make_wall_s')} s end to end",
    )
    row(
        "3 start-up to first step (make train)",
        "report",
        fast.get("startup_to_first_step_s_mean"),
        None,
        f"imports {get(r, 'startup.imports_warm_bytecode.total_s')} s "
        f"({get(r, 'startup.imports_cold_no_bytecode.total_s')} s without .pyc)",
    )
    for threads in (1, 2):
        inf = get(r, f"inference.threads_{threads}") or {}
        compiled = get(inf, "variants.compiled") or {}
        service = get(inf, "variants.eager_channels_last") or {}
        fraction = get(compiled, "fraction_of_gemm_peak_side_by_side.median")
        pairs = get(compiled, "fraction_of_gemm_peak_side_by_side.rounds")
        built = (compiled.get("error") or pairs) if compiled else "not run (no --compile)"
        row(
            f"4 model-only inference / float32 GEMM peak, {threads} thread{'s' * (threads > 1)}",
            ">= 0.85",
            fraction,
            fraction is not None and fraction >= 0.85,
            f"torch.compile: {built}; against the best peak before and after "
            f"{compiled.get('fraction_of_gemm_peak')}; bfloat16 (not counted) "
            f"{get(inf, 'variants.bf16_channels_last.fraction_of_gemm_peak')}",
        )
        row(
            f"4 the service's path / float32 GEMM peak, {threads} thread{'s' * (threads > 1)}",
            "report",
            get(service, "fraction_of_gemm_peak_side_by_side.median"),
            None,
            f"eager channels_last, pairs "
            f"{get(service, 'fraction_of_gemm_peak_side_by_side.rounds')}, "
            f"{service.get('speedup_vs_default')}x the NCHW default",
        )
    inf = get(r, "inference.threads_2.variants") or {}
    row(
        "4 single-image latency p50 (ms)",
        "report",
        get(inf, "eager_channels_last.batch1.p50_ms"),
        None,
        "channels_last eager",
    )
    s = get(r, "serving.scenarios") or {}
    p50 = get(s, "predict_c1.latency_ms.p50")
    p99 = get(s, "predict_c1.latency_ms.p99")
    row("5 /predict 1 client p50 (ms)", "<= 5", p50, p50 is not None and p50 <= 5)
    row("5 /predict 1 client p99 (ms)", "<= 20", p99, p99 is not None and p99 <= 20)
    rps = get(s, "predict_c8.requests_per_s")
    p99_8 = get(s, "predict_c8.latency_ms.p99")
    row("5 /predict 8 clients req/s", ">= 500", rps, rps is not None and rps >= 500)
    row("5 /predict 8 clients p99 (ms)", "<= 50", p99_8, p99_8 is not None and p99_8 <= 50)
    bad = {
        name: {k: v for k, v in sc["statuses"].items() if k != "200"}
        | {k: v for k, v in sc["socket_errors"].items() if v}
        for name, sc in s.items()
    }
    bad = {k: v for k, v in bad.items() if v}
    row("5 errors/503s up to 64 clients", "0", bad or 0, not bad if s else False)
    ips = max(
        (sc.get("images_per_s", 0) for n, sc in s.items() if n.startswith("predict_batch_64")),
        default=None,
    )
    row("5 /predict_batch 64 img/request img/s", ">= 5000", ips, ips is not None and ips >= 5000)
    fm = get(s, "feature_maps_png_c1.latency_ms.p50")
    row("5 /feature_maps PNG p50 (ms)", "<= 15", fm, fm is not None and fm <= 15)
    row(
        "6 peak RSS make train (MiB)",
        "report",
        default.get("peak_rss_mib") or (get(r, "train.fast") or [{}])[0].get("peak_rss_mib"),
        None,
    )
    soak = get(r, "serving.soak.rss_total_mib") or {}
    row(
        "6 serving RSS, all processes (MiB)",
        "report",
        soak.get("end"),
        None,
        f"growth {soak.get('growth')} MiB over {get(r, 'serving.soak.seconds')} s soak, "
        f"{soak.get('growth_second_half')} MiB in its second half",
    )
    photos = get(r, "photos") or {}
    ratio = photos.get("ratio")
    row(
        "12 photo acc / clean acc (to_mnist)",
        ">= 0.95",
        ratio,
        ratio is not None and ratio >= 0.95,
        f"{photos.get('photo_acc')} vs {photos.get('clean_acc')} on {photos.get('count')} "
        f"digits, {photos.get('model')}",
    )
    return rows


def peer_rows(r: dict, row) -> None:
    """Issue 15: this service over the fastest peer, side by side; overload refusals."""
    summary = get(r, "peers.summary") or {}
    for scenario, label in (
        ("predict_c1", "/predict 1 client"),
        ("predict_c8", "/predict 8 clients"),
        ("predict_batch_64img_c4", "/predict_batch 64 img, 4 clients"),
    ):
        found = summary.get(scenario) or {}
        ratio, p99 = found.get("ratio"), found.get("p99_ratio")
        unit = "img/s" if found.get("rate") == "images_per_s" else "req/s"
        row(
            f"P {label}: {unit} / fastest peer",
            ">= 1.0",
            ratio,
            ratio is not None and ratio >= 1.0,
            f"vs {found.get('fastest_peer')}; p99 ratio {p99}; CPU/request ratio "
            f"{found.get('cpu_ratio')}",
        )
        if unit == "req/s":
            row(f"P {label}: p99 / fastest peer's", "<= 1.0", p99, p99 is not None and p99 <= 1)
    half = get(r, "peers.half_load") or {}
    row(
        "P /predict at half its rate, open loop: p99 ms",
        "report",
        get(half, "service.accepted_ms.p99"),
        None,
        ", ".join(f"{name} {get(found, 'accepted_ms.p99')}" for name, found in half.items()),
    )
    over = get(r, "peers.overload") or {}
    opened = over.get("open_loop") or {}
    for loop, found, refused, accepted, offered in (
        (
            "closed loop 2x clients",
            over,
            get(over, "refused_ms.p99"),
            get(over, "accepted_ms.p99"),
            f"{over.get('clients')} clients",
        ),
        (
            "open loop 2x rate",
            opened,
            opened.get("refused_p99_ms"),
            opened.get("accepted_p99_ms"),
            f"{opened.get('offered_per_s')}/s offered, the median of "
            f"{len(opened.get('rounds', []))} run(s); statuses in all",
        ),
    ):
        row(
            f"P overload, {loop}: refusal p99 (ms)",
            "<= 10",
            refused,
            refused is not None and refused <= 10,
            f"{offered}: {found.get('statuses')}",
        )
        ratio = found.get("accepted_p99_vs_unloaded")
        late = found.get("sent_late_p99_ms")  # open loop: in every latency it measures
        row(
            f"P overload, {loop}: accepted p99 / unloaded p99",
            "<= 2",
            ratio,
            ratio is not None and ratio <= 2,
            f"accepted p99 {accepted} ms, unloaded (1 client) {get(over, 'unloaded_ms.p99')} ms"
            + (f"; the generator sent late by {late} ms at p99" if late is not None else ""),
        )
    row(
        "P overload, open loop: refusal p99 / a refuse-only server's",
        "report",
        opened.get("refused_p99_vs_floor"),
        None,
        f"in turn at the same rate, its cores computing: p99 {opened.get('floor_refused_p99_ms')}"
        f" ms, the generator late by {opened.get('floor_sent_late_p99_ms')} ms",
    )


def table(rows: list[dict]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, dict):
            return json.dumps(v)[:60]
        return str(v)

    width = max(len(r["goal"]) for r in rows)
    lines = [f"{'goal':<{width}}  {'target':>8}  {'measured':>10}  met  note"]
    for r in rows:
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        goal, target, measured = r["goal"], r["target"], fmt(r["measured"])
        lines.append(f"{goal:<{width}}  {target:>8}  {measured:>10}  {met:>3}  {r['note']}")
    return "\n".join(lines)


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="a fast check of the chain, not goals")
    p.add_argument("--soak", type=float, default=300.0, help="seconds of serving memory soak")
    p.add_argument("--machine", default=None, help="name in the results file name")
    p.add_argument("--out", type=Path, default=None, help="results file (default: see above)")
    args = p.parse_args(argv)
    today = datetime.date.today().isoformat()
    name = args.machine or machine_name()
    out = args.out or RESULTS_DIR / f"{today}-{name}{'-quick' if args.quick else ''}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.unlink(missing_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="convlens-bench-"))
    pycache = Path(tempfile.gettempdir()) / "convlens-bench-pycache"
    env = child_env(pycache)
    started = time.time()
    meta = {
        "date": today,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "git": git_state(),
        "quick": args.quick,
        "workdir": str(workdir),
        "bytecode_cache": str(pycache),
        "load_avg_at_start": load_avg(),
        "command": "make bench" + (" ARGS=--quick" if args.quick else ""),
    }
    tmp.write_text(json.dumps({"meta": meta}, indent=2))
    # Fill the bytecode cache first, so no timed step pays for compiling: `make install`
    # (which every `make train` runs) compiles the venv into it, then our own modules.
    subprocess.run(
        ["make", "--no-print-directory", "install"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import pipelines.train, convlens.training, bentoml, "
            "_bentoml_impl.worker.service, mlflow.pytorch, torchvision",
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    seconds = {}
    seconds["flops"] = step("flops", [], tmp, env, 300)
    quick_steps = ["--steps", "100"] if args.quick else ["--steps", "400"]
    seconds["bare_loop"] = step("bare_loop", quick_steps, tmp, env, 600)
    inf_args = ["--seconds", "0.5"] if args.quick else ["--seconds", "2", "--compile"]
    seconds["inference"] = step("inference", inf_args, tmp, env, 600)
    seconds["startup"] = step("startup", [], tmp, env, 600)
    train_args = ["--workdir", str(workdir / "train")]
    if args.quick:
        train_args += ["--seeds", "42", "--no-default", "data.subset=6400"]
    seconds["train"] = step("train", train_args, tmp, env, 1800)
    tracking_uri = json.loads(tmp.read_text())["train"]["tracking_uri"]
    photo_args = ["--tracking-uri", tracking_uri, "--count", "100" if args.quick else "500"]
    seconds["photos"] = step("photos", photo_args, tmp, env, 900)
    serve_args = [
        "--tracking-uri",
        tracking_uri,
        "--workdir",
        str(workdir / "serving"),
        "--seconds",
        "2" if args.quick else "5",
        "--soak",
        "10" if args.quick else str(args.soak),
    ]
    seconds["serving"] = step("serving", serve_args, tmp, env, 900)
    peer_args = ["--tracking-uri", tracking_uri, "--workdir", str(workdir / "peers")]
    peer_args += ["--rounds", "1", "--seconds", "2"] if args.quick else ["--rounds", "3"]
    seconds["peers"] = step("peers", peer_args, tmp, env, 1200)
    seconds["gpu"] = step("gpu", ["--workdir", str(workdir / "gpu")], tmp, env, 3600)
    data = json.loads(tmp.read_text())
    meta["load_avg_at_end"] = load_avg()
    meta["seconds_by_step"] = seconds
    meta["total_seconds"] = round(time.time() - started, 1)
    data["meta"] = meta
    rows = goals(data)
    data[GOALS_FILE_KEY] = rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    tmp.unlink(missing_ok=True)
    print()
    print(table(rows))
    print(
        f"\n{out.relative_to(REPO) if out.is_relative_to(REPO) else out}: "
        f"{meta['total_seconds']} s, load average {meta['load_avg_at_start']} at start, "
        f"{meta['load_avg_at_end']} at end ({meta['machine']['cores']} cores)"
    )


if __name__ == "__main__":
    main()
