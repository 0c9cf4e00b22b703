"""`make train` itself, timed phase by phase, against the bare PyTorch loop in the same run.

    uv run --frozen python -m benchmarks.train [--seeds 42,43,44] [--no-default] [--results FILE]

Runs, each as a real `make train` process into a private MLflow store:

1. `benchmarks.bare_loop` for one full epoch (the reference, its own process: no Lightning);
2. `make train ARGS="experiment=fast seed=S"` (goal: >= 99.0% test accuracy, mean of the
   seeds, in one epoch), then the bare loop again, for each seed: every run is compared with
   the mean of the bare epochs just before and after it;
3. `make train` with the default config, 5 epochs (goal: >= 99.2%).

A `benchmarks.callbacks.PhaseTimer` added on the command line timestamps each run: process
start, first training step, each epoch's training steps, validation and end-of-epoch work,
the end of fit and of testing; the make process's exit is the registered model. Peak RSS is
the largest process's (`wait4` on make: every descendant that was waited for).

Training throughput (goal 1) = training images / seconds from the first step's start to the
last step's end of each epoch: per-step logging, the progress bar and MLflow writes are in it;
validation and the per-epoch images are reported next to it, and in the all-in figure.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean, median

from benchmarks.common import REPO, data_root, load_avg, merge_results, parser, print_json

TIMER = "+callbacks.bench_timer._target_=benchmarks.callbacks.PhaseTimer"


def run_measured(command: list[str], env: dict, log: Path, timeout: float) -> dict:
    """Run `command`; wall seconds, exit status and the peak RSS over all its processes."""
    start = time.time()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.time() > deadline:
            process.kill()
            pid, status, usage = os.wait4(process.pid, 0)
            break
        time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "started": start,
        "wall_s": round(time.time() - start, 2),
        "returncode": process.returncode,
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def base_env(workdir: Path) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db",
            "CONVLENS_DATA_DIR": data_root(),
            "PYTHONUNBUFFERED": "1",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
    )
    return env


def create_store(workdir: Path) -> float:
    """Create the private MLflow store first, so its one-time schema setup (seconds) is not
    counted as start-up of the runs; returns how long it took."""
    code = "import mlflow; mlflow.MlflowClient().search_experiments()"
    start = time.time()
    subprocess.run(
        [sys.executable, "-c", code], env=base_env(workdir), check=True, capture_output=True
    )
    return round(time.time() - start, 2)


def bare_epoch(workdir: Path, name: str, extra: list[str]) -> dict:
    out = workdir / f"{name}.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.bare_loop",
        "--epochs",
        "1",
        "--layouts",
        "channels_last",
        "--json-out",
        str(out),
        "experiment=fast",
        *extra,
    ]
    subprocess.run(command, cwd=REPO, env=base_env(workdir), check=True, capture_output=True)
    return json.loads(out.read_text())["channels_last"]


def phases(timer: dict, wall: dict) -> dict:
    """Seconds between the PhaseTimer's marks, and the throughput figures."""
    t, epochs = timer["t"], timer["epochs"]
    p0 = t["process_start"]
    steps_s = sum(e["last_step_end"] - e["start"] for e in epochs)
    first_step_s = t["first_step_start"] - p0
    # The first epoch's clock starts at its first step, not at the epoch start hook.
    steps_s -= t["first_step_start"] - epochs[0]["start"]
    val_batches = sum(e.get("val_batches_end", 0) - e.get("val_batches_start", 0) for e in epochs)
    epoch_end = sum(e["end"] - e.get("val_batches_end", e["last_step_end"]) for e in epochs)
    fit_s = t["fit_end"] - t["first_step_start"]
    images = timer["train_images"]
    return {
        "epochs": len(epochs),
        "train_images": images,
        "startup_to_first_step_s": round(first_step_s, 2),
        "train_steps_s": round(steps_s, 2),
        "validation_batches_s": round(val_batches, 2),
        "epoch_end_work_s": round(epoch_end, 2),  # images, checkpoints, metric writes
        "fit_s": round(fit_s, 2),
        "test_s": round(t["test_end"] - t["fit_end"], 2),
        "after_test_to_exit_s": round(wall["started"] + wall["wall_s"] - t["test_end"], 2),
        "python_process_s": round(wall["started"] + wall["wall_s"] - p0, 2),
        "make_wall_s": wall["wall_s"],
        "train_images_per_s": round(images / steps_s, 1),
        "fit_images_per_s_all_in": round(images / fit_s, 1),
        "peak_rss_mib": wall["peak_rss_mib"],
    }


def make_train(workdir: Path, name: str, overrides: list[str], timeout: float = 1800) -> dict:
    timer = workdir / f"{name}.phases.json"
    args = [
        *overrides,
        f"hydra.run.dir={workdir}/outputs/{name}",
        f"logger.mlflow.artifact_location={workdir}/mlartifacts",
        TIMER,
        f"+callbacks.bench_timer.path={timer}",
    ]
    command = ["make", "--no-print-directory", "train", f"ARGS={shlex.join(args)}"]
    log = workdir / f"{name}.log"
    wall = run_measured(command, base_env(workdir), log, timeout)
    text = log.read_text()
    if wall["returncode"] != 0:
        raise RuntimeError(f"make train {' '.join(overrides)} failed:\n{text[-3000:]}")
    accuracy = re.search(r"^test acc\s+([0-9.]+)", text, re.MULTILINE)
    registered = re.search(r"^registered (\S+) version (\d+)", text, re.MULTILINE)
    result = {
        "args": " ".join(overrides),
        "test_acc": float(accuracy.group(1)) if accuracy else None,
        "registered_version": registered.group(2) if registered else None,
        **phases(json.loads(timer.read_text()), wall),
        "load_avg_1m": load_avg()[0],
    }
    return result


def run(seeds: list[int], default: bool, workdir: Path, extra: list[str]) -> dict:
    result: dict = {"workdir": str(workdir), "store_creation_s": create_store(workdir)}
    # Bare loop and make train alternate, so that each run is compared with the reference
    # measured just before and just after it: load from elsewhere on a shared machine moves
    # both alike. ratio = make train / mean(bare before, bare after).
    bare = [bare_epoch(workdir, "bare_0", extra)]
    fast = []
    for i, seed in enumerate(seeds):
        fast.append(
            make_train(workdir, f"fast_seed{seed}", ["experiment=fast", f"seed={seed}", *extra])
        )
        bare.append(bare_epoch(workdir, f"bare_{i + 1}", extra))
    for i, run_ in enumerate(fast):
        reference = mean([bare[i]["images_per_s"], bare[i + 1]["images_per_s"]])
        run_["bare_loop_images_per_s"] = round(reference, 1)
        run_["ratio_to_bare_loop"] = round(run_["train_images_per_s"] / reference, 3)
        run_["ratio_to_bare_loop_all_in"] = round(run_["fit_images_per_s_all_in"] / reference, 3)
    result["bare"] = bare
    result["fast"] = fast
    result["fast_summary"] = {
        "seeds": seeds,
        "test_acc_mean": round(mean(r["test_acc"] for r in fast), 4),
        "test_acc_each": [r["test_acc"] for r in fast],
        "train_steps_s_mean": round(mean(r["train_steps_s"] for r in fast), 2),
        "make_wall_s_mean": round(mean(r["make_wall_s"] for r in fast), 2),
        "startup_to_first_step_s_mean": round(mean(r["startup_to_first_step_s"] for r in fast), 2),
        "bare_loop_images_per_s": round(mean(b["images_per_s"] for b in bare), 1),
        "bare_loop_images_per_s_each": [b["images_per_s"] for b in bare],
        "train_images_per_s_mean": round(mean(r["train_images_per_s"] for r in fast), 1),
        "ratio_to_bare_loop_each": [r["ratio_to_bare_loop"] for r in fast],
        "ratio_to_bare_loop_median": round(median(r["ratio_to_bare_loop"] for r in fast), 3),
        "ratio_to_bare_loop_mean": round(mean(r["ratio_to_bare_loop"] for r in fast), 3),
        "ratio_to_bare_loop_all_in_mean": round(
            mean(r["ratio_to_bare_loop_all_in"] for r in fast), 3
        ),
    }
    if default:
        result["default"] = make_train(workdir, "default", extra)
        reference = mean(b["images_per_s"] for b in bare)
        result["default"]["ratio_to_bare_loop"] = round(
            result["default"]["train_images_per_s"] / reference, 3
        )
    result["tracking_uri"] = f"sqlite:///{workdir}/mlflow.db"
    return result


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--seeds", default="42,43,44", help="seeds of the experiment=fast runs")
    p.add_argument("--no-default", action="store_true", help="skip the 5-epoch default run")
    p.add_argument("--workdir", type=Path, default=None, help="MLflow store, logs, outputs")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run (quick checks)")
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="convlens-bench-train-"))
    workdir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    result = run(seeds, not args.no_default, workdir.resolve(), args.overrides)
    print_json(result)
    merge_results(args.results, "train", result)
    return result


if __name__ == "__main__":
    main()
