"""`make register`: register a run's model and move `@champion` to it only if it is better.

    python -m pipelines.register                          the newest finished run with a model
    python -m pipelines.register --run-id RUN_ID          that run
    python -m pipelines.register registry.promote=always  any override of `make train`

The accuracy compared is the run's `release.eval_test_acc` when `pipelines.evaluate` has
recorded one, else the test accuracy training logged (`test/acc`). Registering a run twice
returns its existing version; the decision is recorded as `promotion.*` tags, the step as
`release.registered_*` tags (`convlens.registry.register_run`).
"""

from __future__ import annotations

from convlens.cli import Parser, add_overrides, run_cli
from convlens.config import POLICIES, settings
from convlens.registry import describe, register_run
from convlens.store import latest_run, open_store


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m pipelines.register", description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", help="the MLflow run whose model to register")
    parser.add_argument(
        "--policy", choices=POLICIES, default=None, help="short for registry.promote=POLICY"
    )
    add_overrides(parser)
    args = parser.parse_args(argv)

    policy = [f"registry.promote={args.policy}"] if args.policy else []
    found = settings([*args.overrides, *policy])
    client = open_store(found.tracking_uri)
    run_id = args.run_id
    if run_id is None:
        run = latest_run(client, found.experiment)
        if run is None:
            print(f"nothing to register: no finished run with a model in {found.experiment!r}")
            return 0
        run_id = run.info.run_id
    registration = register_run(client, found.model_name, run_id, found.policy, found.feedback_gate)
    print(describe(registration))
    return 0


if __name__ == "__main__":
    run_cli(main)
