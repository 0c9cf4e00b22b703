"""`make serve`: serve the champion as it is now, or a pinned model, with BentoML.

    python -m pipelines.serve [overrides]                  @champion, imported first if need be
    python -m pipelines.serve --model convlens-mnist:v3-…  exactly that BentoML model
    python -m pipelines.serve --wait-s 30                  no champion yet: ask again every 30 s

It says which registered version it serves, then becomes `bentoml serve serving.service:ConvLens`
with that exact model tag. The compose serving container runs the same command. A second
server on the same BentoML home is refused (`convlens.serve_lock`).
"""

from __future__ import annotations

import os
import sys
import time

from convlens import UserError
from convlens.cli import Parser, add_overrides, run_cli
from convlens.config import REPO, Settings, settings


def champion_tag(found: Settings, wait_s: float | None) -> str:
    """The champion's BentoML tag, imported if the store lacks that version; with `wait_s`,
    wait for a first champion instead of failing (compose starts before the first release)."""
    from mlflow.exceptions import MlflowException
    from requests import RequestException

    from convlens.packaging import package
    from convlens.store import open_store

    while True:
        try:
            done = package(open_store(found.tracking_uri), found, build=False)
        except (UserError, MlflowException, RequestException) as error:
            if wait_s is None:
                raise
            print(
                f"serve: nothing to serve yet ({error}); asking again in {wait_s:g} s", flush=True
            )
            time.sleep(wait_s)
            continue
        champ, how = done.champion, "imported now" if done.imported else "already in the store"
        print(
            f"serving    {champ.name} v{champ.version} (@champion, run {champ.run_id}, "
            f"test acc {champ.test_acc or 'unknown'}) as {done.model_tag}, {how}",
            flush=True,
        )
        return done.model_tag


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m pipelines.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="a BentoML model tag (default: @champion)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="3000")
    parser.add_argument("--wait-s", type=float, default=None, help="wait for a first champion")
    add_overrides(parser)
    args = parser.parse_args(argv)
    found = settings(args.overrides)
    found.use_bentoml_home()
    from convlens.packaging import MODEL_ENV, SERVICE
    from convlens.serve_lock import hold_home

    hold_home(found.bentoml_home)  # held by `bentoml serve` below until the server exits

    if args.model:
        tag = args.model
        print(f"serving    {tag} (pinned with MODEL=)", flush=True)
    else:
        tag = champion_tag(found, args.wait_s)
    os.environ[MODEL_ENV] = tag
    command = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--working-dir", str(REPO)]
    os.execv(sys.executable, [*command, "--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    run_cli(main)
