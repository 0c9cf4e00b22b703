"""`make sweep`: an Optuna search whose study lives in a database, worked on by n processes.

python -m pipelines.sweep hparams_search=mnist_optuna [overrides]     e.g. sweep.n_trials=20
python -m pipelines.sweep hparams_search=mnist_optuna sweep.workers=4 (make sweep WORKERS=4)

The same command again resumes the study (`sweep.study_name` in `sweep.storage`); on another
machine with the same storage URL it joins it. `python -m pipelines.sweep_report` ranks it.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

from convlens.cli import Parser, add_overrides, run_cli
from convlens.console import quiet_console


def spawn(overrides: list[str], index: int) -> subprocess.Popen:
    """Worker `index` of this machine: this command again, told which seed offset it has."""
    command = [sys.executable, "-m", "pipelines.sweep", "--worker", str(index), *overrides]
    return subprocess.Popen(command)


def stop_workers(children: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """After Ctrl-C: a terminal's reached the workers too, so give them `grace_s` to stop
    before passing one on (`kill -INT` of this process reached only it)."""
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGINT)
    for child in children:
        child.wait()


def log_to_file(path: Path) -> None:
    """Every worker's log records in one file beside the study's trial folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))


INTERRUPTED = 130  # as a shell reports a command stopped by Ctrl-C


def interrupted(study_name: str) -> int:
    """One line for Ctrl-C: what was kept, and the command that carries on."""
    print(
        f"error: sweep interrupted; finished trials are kept and a running one is marked failed. "
        f"The same command resumes study {study_name!r}",
        file=sys.stderr,
        flush=True,
    )
    return INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m pipelines.sweep", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--worker",
        type=int,
        metavar="I",
        help="run as worker I of a study this machine's launcher created (used by the launcher)",
    )
    parser.add_argument(
        "--storage-url", action="store_true", help="print the study's storage URL and exit"
    )
    add_overrides(parser)
    args = parser.parse_args(argv)
    from convlens import sweep

    p = sweep.plan(args.overrides)
    log_to_file(Path(p.root_dir, "outputs", "sweeps", p.study_name, "sweep.log"))
    quiet_console()  # third-party chatter to that file only, as in `make train`
    if args.storage_url:  # for `make sweep-ui`: optuna-dashboard on the same storage
        print(p.storage)
        return 0
    from convlens import sweep_record
    from convlens.reachability import check_reachable

    check_reachable(p.tracking_uri)
    storage = sweep.open_storage(p)
    if args.worker is not None:  # a launcher's child: the study and parent exist
        offset = args.worker if args.worker >= 0 else None  # -1: joined, a fresh seed
        study = sweep.load_study(p, storage, offset)
        try:
            sweep.work(p, sweep_record.ensure_parent(p, study, created=False), offset)
        except KeyboardInterrupt:
            return INTERRUPTED  # the launcher says it once
        return 0

    created = sweep.create_or_join(p, storage)
    study = sweep.load_study(p, storage, 0 if created else None)
    parent = sweep_record.ensure_parent(p, study, created)
    where = sweep.safe_url(p.storage)
    print(
        f"study {p.study_name!r} in {where}: {'new' if created else 'resumed'}, "
        f"{p.n_trials} trials, {p.workers} worker(s) here; MLflow parent run {parent}",
        flush=True,
    )
    if p.workers == 1:
        try:
            sweep.work(p, parent, 0 if created else None)
        except KeyboardInterrupt:
            sweep_record.stop_parent(p, study, parent)
            return interrupted(p.study_name)
    else:
        children = [spawn(args.overrides, i if created else -1) for i in range(p.workers)]
        try:
            codes = [child.wait() for child in children]
        except KeyboardInterrupt:
            stop_workers(children)
            sweep_record.stop_parent(p, study, parent)
            return interrupted(p.study_name)
        if any(codes):
            print(f"error: sweep workers exited with {codes}", file=sys.stderr)
            return 1
    sweep_record.refresh(p, study, parent)
    counts = sweep.tally(study)
    print(
        f"study {p.study_name!r}: "
        + ", ".join(f"{counts[s]} {s.name.lower()}" for s in sweep.TrialState if counts[s]),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
