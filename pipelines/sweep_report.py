"""The trials of a sweep's Optuna study, best first, with the commands that rerun and release
the best one.

    python -m pipelines.sweep_report                                the default study
    python -m pipelines.sweep_report sweep.study_name=NAME          another one
    python -m pipelines.sweep_report sweep.storage=postgresql+psycopg2://...

`make sweep` runs it after its workers. Trials are ranked by their value (`val/acc_best`, the
best validation accuracy); pruned trials follow, by the last value they reported. Each trial's
MLflow child run gets the tag `sweep.best=true` (the best) or `false`.
"""

from __future__ import annotations

import math
from pathlib import Path

from convlens.cli import Parser, add_overrides, run_cli

OBJECTIVE = "val/acc_best"
DEFAULT_SEARCH = "hparams_search=mnist_optuna"


def with_search(overrides: list[str]) -> list[str]:
    """The overrides, with the default search space unless they name one."""
    named = any(o.lstrip("+~").startswith("hparams_search=") for o in overrides)
    return overrides if named else [DEFAULT_SEARCH, *overrides]


def rank_key(trial, maximize: bool) -> tuple:
    """Complete trials by value, then pruned ones by their last report, then the rest."""
    from optuna.trial import TrialState

    sign = -1 if maximize else 1
    if trial.state == TrialState.COMPLETE:
        return (0, sign * trial.value, trial.number)
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        last = trial.intermediate_values[max(trial.intermediate_values)]
        return (1, sign * last, trial.number)
    return (2, 0.0, trial.number)


def short(name: str) -> str:
    return name.removeprefix("model.layers.")


def number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(rows: list[list[str]]) -> None:
    widths = [max(len(str(v)) for v in column) for column in zip(*rows, strict=True)]
    for line in rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(line, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m pipelines.sweep_report", description=__doc__.splitlines()[0])
    add_overrides(parser)
    args = parser.parse_args(argv)

    import optuna

    from convlens.store import open_store, run_page
    from convlens.sweep import (
        OVERRIDES_ATTR,
        PARENT_ATTR,
        RUN_ATTR,
        SURPLUS_ATTR,
        plan,
        safe_url,
        train_command,
    )

    p = plan(with_search(args.overrides))
    where = safe_url(p.storage)
    missing = (
        f"nothing to report: no study {p.study_name!r} in {where}, "
        f"so no sweep trials in experiment {p.experiment!r}"
    )
    if p.storage.startswith("sqlite:///") and not Path(p.storage[10:]).exists():
        print(missing)
        return 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=p.study_name, storage=p.storage)
    except KeyError:
        print(missing)
        return 0
    trials = [t for t in study.get_trials() if SURPLUS_ATTR not in t.user_attrs]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(trials, key=lambda t: rank_key(t, maximize))
    client = open_store(p.tracking_uri)
    runs = {}
    for trial in ranked:
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id:
            runs[trial.number] = client.get_run(run_id)
    names = list(dict.fromkeys(name for t in ranked for name in t.params))
    print(f"study {p.study_name!r} in {where}: {len(trials)} trials, ranked by {OBJECTIVE}\n")
    rows = [["trial", "state", OBJECTIVE, "test/acc", *map(short, names), "run"]]
    for trial in ranked:
        run = runs.get(trial.number)
        test_acc = run.data.metrics.get("test/acc") if run else None
        rows.append(
            [
                str(trial.number),
                trial.state.name.lower(),
                f"{trial.value:.4f}" if trial.value is not None else "-",
                f"{test_acc:.4f}" if test_acc is not None else "-",
                *(number(trial.params[n]) if n in trial.params else "-" for n in names),
                run.info.run_id if run else "-",
            ]
        )
    table(rows)
    complete = [t for t in ranked if t.state == optuna.trial.TrialState.COMPLETE]
    best = complete[0] if complete and not math.isnan(complete[0].value) else None
    for number_, run in runs.items():
        is_best = best is not None and number_ == best.number
        client.set_tag(run.info.run_id, "sweep.best", str(is_best).lower())
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent:
        experiment_id = client.get_run(parent).info.experiment_id
        print(f"\nMLflow     {run_page(p.tracking_uri, p.mlflow_ui, experiment_id, parent)}")
    if best is None:
        print(f"\nno trial finished with {OBJECTIVE}: nothing to release")
        return 0
    run = runs.get(best.number)
    run_id = run.info.run_id if run else "?"
    print(
        f"\nbest       trial {best.number}, run {run_id}: {OBJECTIVE} {best.value:.4f}"
        f"\nrerun it   {train_command(best.user_attrs.get(OVERRIDES_ATTR, []))}"
        f"\nrelease it python -m pipelines.evaluate --run-id {run_id}"
        f" && python -m pipelines.register --run-id {run_id}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
