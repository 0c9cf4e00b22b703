"""`make package`: the MLflow champion into the BentoML model store, then a Bento to deploy.

    python -m pipelines.package [overrides]             import @champion as it is now, build a Bento
    python -m pipelines.package --no-build [overrides]  only import the model

Overrides are those of `make train` (e.g. registry.name=... paths.tracking_uri=...): the store is
`paths.tracking_uri` (MLFLOW_TRACKING_URI, else ./mlflow.db), the BentoML home
`paths.bentoml_home` (BENTOML_HOME, else ./bentoml). The work is `convlens.packaging`.
"""

from __future__ import annotations

from convlens.cli import Parser, add_overrides, run_cli
from convlens.config import settings


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m pipelines.package", description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true", help="only import the model")
    parser.add_argument(
        "--containerize", metavar="IMAGE", help="then make the Bento this Docker image"
    )
    add_overrides(parser)
    args = parser.parse_args(argv)
    found = settings(args.overrides)
    found.use_bentoml_home()
    from convlens.packaging import package
    from convlens.store import open_store

    done = package(open_store(found.tracking_uri), found, build=not args.no_build)
    champ = done.champion
    print(
        f"champion   {champ.name} v{champ.version} "
        f"(run {champ.run_id}, test acc {champ.test_acc or 'unknown'})"
    )
    where = found.bentoml_home
    if done.imported:
        print(f"model      {done.model_tag}: imported into {where}")
    else:
        print(
            f"model      {done.model_tag}: already in {where}, v{champ.version} not imported again"
        )
    if done.bento_tag:
        how = "built" if done.bento_built else "already built"
        print(f"bento      {done.bento_tag} ({how}): `make containerize` makes it a Docker image")
    print("serve it   make serve")
    if args.containerize and done.bento_tag:
        import subprocess
        import sys

        command = [sys.executable, "-m", "bentoml", "containerize", done.bento_tag]
        return subprocess.call([*command, "--image-tag", args.containerize])
    return 0


if __name__ == "__main__":
    run_cli(main)
