"""How every command fails: one line, `error: <what to fix>`, exit status 2, no traceback wall.

`run_cli` wraps an argparse step's `main`; Hydra commands wrap their body in `errors_as_lines`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from convlens import UserError

USAGE = UserError.exit_status  # 2: anything the user can fix
TEMPFAIL = 75  # EX_TEMPFAIL: trained, but tracking waits for a server that is gone


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of the usage block."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(USAGE)


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """Hydra overrides, as `make train` takes them, so every step sees the same config."""
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="Hydra overrides of conf/train.yaml, e.g. registry.name=... "
        "logger.mlflow.experiment_name=... paths.tracking_uri=...",
    )


def message_of(error: BaseException) -> str | None:
    """The one line to print for an error the user can act on; None for a bug.

    MLflow is only looked at once loaded (only then can it have raised): importing it takes
    3 s, which a config error, found first, should not wait for."""
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, OmegaConfBaseException):  # e.g. an interpolation that cannot resolve
        return f"config: {str(error).strip().splitlines()[0]}"
    mlflow_errors = sys.modules.get("mlflow.exceptions")
    if mlflow_errors is not None and isinstance(error, mlflow_errors.MlflowException):
        return f"MLflow: {error.message.strip().splitlines()[0]}"
    return None


@contextmanager
def errors_as_lines() -> Iterator[None]:
    """Print a user's error as one line and exit 2; let bugs raise with their traceback."""
    try:
        yield
    except Exception as error:
        message = message_of(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(getattr(error, "exit_status", USAGE))


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a step's main with `errors_as_lines`; its return value is the exit status."""
    from convlens.console import quiet_console

    quiet_console()
    with errors_as_lines():
        status = main(argv) or 0
    sys.exit(status)
