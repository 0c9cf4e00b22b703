"""What a command shows on the terminal: our own lines, Lightning's progress bars, and errors.

A training run pulls in Lightning, torch and MLflow (a release BentoML too), and each of them
talks on the terminal: Lightning's hardware lines and "💡 Tip:" adverts, deprecation and user
warnings from torch and Lightning, MLflow's pickle-serialization warning, its database-migration
lines and its "Downloading artifacts" progress bars. None of that is for the person who typed
`make train`, and all of it may be for whoever later debugs the run. `quiet_console()`, called
once at the start of a command, sends it to the run's log file only (Hydra's
`<output_dir>/<job name>.log`) and leaves the terminal to:

* whatever our code prints or logs (loggers outside `QUIET_LOGGERS`), the `error: ...` lines;
* Lightning's progress bars and model summary, which rich draws on the terminal directly;
* any record at ERROR or above, from any logger;
* any warning not listed in `QUIET_WARNINGS` (by category and the package it is attributed
  to): a warning nobody has looked at yet still shows, in the log file as well.

Nothing is dropped: warnings become log records (`logging.captureWarnings`), and MLflow's
loggers, which MLflow gives a stderr handler of its own when it is imported, hand their records
to the root logger instead (rewired if MLflow is already imported, MLFLOW_CONFIGURE_LOGGING=false
if not yet), whose file handler keeps them all. Where no log file is configured
(`hydra/job_logging=none`) the terminal stays as it was, but for MLflow's artifact progress
bars, which carry nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

# Third-party loggers whose records below ERROR go to the log file only. "mlflow",
# "sqlalchemy.engine", "alembic" and "huey" are the loggers MLflow gives its own stderr handler.
QUIET_LOGGERS = (
    "lightning",
    "lightning_fabric",  # "Seed set to 42"
    "pytorch_lightning",  # "GPU available: ...", "💡 Tip: ...", "Restoring states from ..."
    "mlflow",  # "Creating initial MLflow database tables...", "Saving pytorch model by Pickle ..."
    "sqlalchemy.engine",
    "alembic",
    "huey",
    "bentoml",
    "optuna",  # "A new study created ...", a failed trial's traceback (the sweep says it in a line)
)

# Warnings that go to the log file only: the top-level package a warning is attributed to
# (the file `warnings.warn` names, after its stacklevel), and the categories of it that are
# noise. A warning attributed to our code, or of another category, still shows.
_NOTICES = (DeprecationWarning, FutureWarning, UserWarning)  # incl. Lightning's PossibleUserWarning
QUIET_WARNINGS: dict[str, tuple[type[Warning], ...]] = {
    "pytorch_lightning": _NOTICES,  # FutureWarning: `isinstance(treespec, LeafSpec)` is deprecated
    "lightning_fabric": _NOTICES,
    "torch": _NOTICES,
    "torchvision": _NOTICES,
    "torchmetrics": _NOTICES,
    "mlflow": _NOTICES,
    "bentoml": _NOTICES,
}

# Read by MLflow whenever it downloads or uploads artifacts: off wherever this is called.
PROGRESS_BARS_OFF = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
# Read by MLflow when it is imported: leave its loggers to ours (for a command that imports
# MLflow after `quiet_console`; one that imported it before has them rewired below).
MLFLOW_LOGGING_OFF = {"MLFLOW_CONFIGURE_LOGGING": "false"}
# The levels MLflow would give its database loggers: their INFO is a line per migration.
MLFLOW_DATABASE_LOGGERS = ("sqlalchemy.engine", "alembic", "huey")


def quiet_console() -> None:
    """Send third-party chatter to the log file only; call at the start of a command's `main`.

    Idempotent. Environment variables already set (e.g. to turn progress bars back on) win.
    """
    for name, value in PROGRESS_BARS_OFF.items():
        os.environ.setdefault(name, value)
    root = logging.getLogger()
    if not any(isinstance(h, logging.FileHandler) for h in root.handlers):
        return  # no log file to keep the chatter in: leave the terminal as it is
    for name, value in MLFLOW_LOGGING_OFF.items():
        os.environ.setdefault(name, value)
    for name in MLFLOW_DATABASE_LOGGERS:
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)
    for handler in root.handlers:
        if _on_terminal(handler) and not any(isinstance(f, QuietFilter) for f in handler.filters):
            handler.addFilter(QuietFilter())
    for name in QUIET_LOGGERS:
        # MLflow (and Lightning, when imported before logging was configured) give their
        # loggers a stderr handler of their own and stop propagation: hand them to the root.
        logger = logging.getLogger(name)
        terminal = [h for h in logger.handlers if _on_terminal(h)]
        if terminal:
            for handler in terminal:
                logger.removeHandler(handler)
            logger.propagate = True
    logging.captureWarnings(True)
    warnings.showwarning = _log_warning


class QuietFilter(logging.Filter):
    """On a terminal handler: drop the quiet loggers' records below ERROR, and quiet warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        if getattr(record, "quiet", False):
            return False
        return not any(record.name == q or record.name.startswith(f"{q}.") for q in QUIET_LOGGERS)


def is_quiet_warning(category: type[Warning], filename: str) -> bool:
    """Whether a warning is listed in QUIET_WARNINGS: its category, and the package of
    `filename` (the top-level folder under site-packages, or none)."""
    parts = Path(filename).parts
    roots = [i for i, part in enumerate(parts) if part in ("site-packages", "dist-packages")]
    if not roots or roots[-1] + 1 >= len(parts):
        return False
    package = parts[roots[-1] + 1].removesuffix(".py")
    return issubclass(category, QUIET_WARNINGS.get(package, ()))


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """`logging.captureWarnings`'s showwarning, with quiet warnings marked for QuietFilter."""
    if file is not None:  # asked for an explicit stream: write there, as Python does
        with contextlib.suppress(OSError):
            file.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    # Python's format, without the source line; Lightning's `formatwarning` drops the category.
    logging.getLogger("py.warnings").warning(
        "%s:%s: %s: %s",
        filename,
        lineno,
        category.__name__,
        message,
        extra={"quiet": is_quiet_warning(category, filename)},
    )


def _on_terminal(handler: logging.Handler) -> bool:
    """A handler writing to stdout or stderr (MLflow's writes through a stderr wrapper)."""
    if isinstance(handler, logging.FileHandler) or not isinstance(handler, logging.StreamHandler):
        return False
    stream = handler.stream
    return stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) or (
        type(stream).__name__ == "MlflowLoggingStream"
    )
