"""The trials of a hyperparameter sweep, best first, from their MLflow runs.

    python -m pipelines.sweep_report                  the newest sweep
    python -m pipelines.sweep_report --sweep-id ID    that one (the runs' `sweep.id` tag)

`make sweep` runs it after the sweep. Trials are ranked by `val/acc_best`, the value the sweep
maximised; the columns are the parameters that differ between trials. The best trial's run
gets the tag `sweep.best=true` (the others `false`), and the report says how to release it.
"""

from __future__ import annotations

import json
import math

from mlflow import MlflowClient
from mlflow.entities import Run

from convlens.cli import Parser, add_overrides, run_cli
from convlens.config import settings
from convlens.store import SWEEP_ID, open_store

OBJECTIVE = "val/acc_best"


def sweep_runs(client: MlflowClient, experiment: str, sweep_id: str | None) -> list[Run]:
    """The runs of the sweep asked for, or of the newest sweep when `sweep_id` is None."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    ids = [found.experiment_id]
    if sweep_id is None:
        newest = client.search_runs(
            ids,
            filter_string=f"tags.`{SWEEP_ID}` != ''",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not newest:
            return []
        sweep_id = newest[0].data.tags[SWEEP_ID]
    return client.search_runs(
        ids, filter_string=f"tags.`{SWEEP_ID}` = '{sweep_id}'", max_results=10_000
    )


def score(run: Run) -> float:
    value = run.data.metrics.get(OBJECTIVE)
    return value if value is not None and not math.isnan(value) else -math.inf


def overrides(run: Run) -> dict[str, str]:
    """The trial's command-line overrides (`sweep.overrides`), as key -> value."""
    items = json.loads(run.data.tags.get("sweep.overrides", "[]"))
    pairs = (item.split("=", 1) for item in items if "=" in item)
    return {key.lstrip("+~"): value for key, value in pairs}


def varying(runs: list[Run]) -> list[str]:
    """The override keys whose values differ between trials: the swept parameters."""
    per_run = [overrides(run) for run in runs]
    keys = list(dict.fromkeys(key for found in per_run for key in found))
    return [k for k in keys if len({found.get(k) for found in per_run}) > 1]


def number(value: str | None) -> str:
    try:
        return f"{float(value):.4g}" if "." in str(value) or "e" in str(value) else str(value)
    except (TypeError, ValueError):
        return str(value) if value is not None else "-"


def report(client: MlflowClient, runs: list[Run]) -> Run:
    ranked = sorted(runs, key=lambda r: (-score(r), int(r.data.tags.get("sweep.trial", 0))))
    params = varying(runs)
    columns = ["trial", OBJECTIVE, "test/acc", *params, "status", "run"]
    rows = []
    for run in ranked:
        metrics = run.data.metrics
        rows.append(
            [
                run.data.tags.get("sweep.trial", "?"),
                f"{metrics[OBJECTIVE]:.4f}" if OBJECTIVE in metrics else "-",
                f"{metrics['test/acc']:.4f}" if "test/acc" in metrics else "-",
                *(number(overrides(run).get(p)) for p in params),
                run.info.status.lower(),
                run.info.run_id,
            ]
        )
    widths = [max(len(str(v)) for v in column) for column in zip(columns, *rows, strict=True)]
    for line in [columns, *rows]:
        print("  ".join(str(v).rjust(w) for v, w in zip(line, widths, strict=True)))
    best = ranked[0]
    for run in runs:
        client.set_tag(run.info.run_id, "sweep.best", str(run is best).lower())
    return best


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m pipelines.sweep_report", description=__doc__.splitlines()[0])
    parser.add_argument("--sweep-id", help="the sweep.id tag of the trials (default: newest)")
    add_overrides(parser)
    args = parser.parse_args(argv)

    found = settings(args.overrides)
    experiment = found.experiment
    client = open_store(found.tracking_uri)
    runs = sweep_runs(client, experiment, args.sweep_id)
    if not runs:
        which = f"sweep {args.sweep_id!r}" if args.sweep_id else "sweep"
        print(f"nothing to report: no {which} runs in experiment {experiment!r}")
        return 0
    sweep_id = runs[0].data.tags[SWEEP_ID]
    print(f"sweep {sweep_id}: {len(runs)} trials, ranked by {OBJECTIVE}\n")
    best = report(client, runs)
    if score(best) == -math.inf:
        print(f"\nno trial logged {OBJECTIVE}: nothing to release")
        return 0
    run_id = best.info.run_id
    print(
        f"\nbest       trial {best.data.tags.get('sweep.trial', '?')}, run {run_id}: "
        f"{OBJECTIVE} {score(best):.4f}"
        f"\nrelease it python -m pipelines.evaluate --run-id {run_id}"
        f" && python -m pipelines.register --run-id {run_id}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
