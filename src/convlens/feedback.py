"""What users teach back: their digits and the labels they give, in a database.

Each row is one uploaded image, keyed by the sha256 of its bytes as sent: the original bytes,
the 28x28 digit the model saw (`convlens.preprocessing.to_mnist`), the user's label, what the
model predicted, which model version predicted it, and when. Any SQLAlchemy URL works: an
SQLite file by default, PostgreSQL in compose (`FEEDBACK_URL_ENV` names the one in use).

Re-sending an image is idempotent: the same bytes are the same row. A re-send with another
label is the user correcting themselves: the newest label replaces the old one (and the
prediction and model version that came with it), `created_at` keeps the first time and
`updated_at` says when it changed. So one image never counts twice, whatever is clicked.

A database that cannot be reached, is read-only or full raises `FeedbackUnavailable`, whose
message is safe to show a client (no URL, no password); a failed write is rolled back, so
what was stored before stays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
from sqlalchemy import (
    case,
    delete,
    func,
    select,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from convlens import UserError
from convlens.database import BadURL, failure_reason, open_engine, shown
from convlens.feedback_rows import (
    DIGIT_SHAPE,
    MAX_MODEL_VERSION,
    FeedbackRow,
    Record,
    digit_array,
    record_of,
)

FEEDBACK_URL_ENV = "CONVLENS_FEEDBACK_URL"  # the one env var naming the store
DEFAULT_FILE = "feedback.db"  # the SQLite file's name when no URL is given (`default_url`)
LABELS = range(10)

T = TypeVar("T")


def default_url(folder: str | Path) -> str:
    """The SQLite file `DEFAULT_FILE` in `folder` (the BentoML home, where serving writes)."""
    return f"sqlite:///{Path(folder).resolve() / DEFAULT_FILE}"


class InvalidFeedback(UserError, ValueError):
    """A label, prediction, digit or image the store refuses; the message says which."""


class FeedbackUnavailable(UserError, RuntimeError):
    """The database is down, unreachable, read-only or full; nothing was written."""

    exit_status = 75  # EX_TEMPFAIL: try again when the database is back


@dataclass(frozen=True)
class Example:
    sha256: str  # of the original bytes as sent
    digit: np.ndarray  # (28, 28) uint8, the digit as the model saw it
    label: int  # what the user says it is


def sha256_of(original: bytes) -> str:
    return hashlib.sha256(original).hexdigest()


def _digit_bytes(digit: np.ndarray) -> bytes:
    array = np.asarray(digit)
    if array.shape != DIGIT_SHAPE or array.dtype != np.uint8:
        raise InvalidFeedback(
            f"the digit must be a (28, 28) uint8 array, got {array.shape} {array.dtype}"
        )
    return np.ascontiguousarray(array).tobytes()


def _check_label(value: int | None, what: str, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value not in LABELS:
        raise InvalidFeedback(f"{what} must be a digit 0-9, got {value!r}")
    return int(value)


class FeedbackStore:
    """The feedback table behind one SQLAlchemy URL. Safe to share between threads."""

    def __init__(self, url: str) -> None:
        """Connect and create the table if missing; `FeedbackUnavailable` if the database
        cannot be reached or written."""
        self.url = url
        try:
            self.engine = open_engine(url)
        except BadURL as error:
            raise InvalidFeedback(f"the feedback URL cannot be used: {error}") from None
        except OSError as error:
            raise FeedbackUnavailable(
                f"the feedback database's folder cannot be created: {error.strerror}"
            ) from None
        try:
            FeedbackRow.metadata.create_all(self.engine)
        except DBAPIError:  # down, or another process creating the table at the same moment
            self._guarded(lambda: FeedbackRow.metadata.create_all(self.engine))

    @property
    def url_shown(self) -> str:
        """The URL with its password hidden, for logs and terminals."""
        return shown(self.url)

    def __repr__(self) -> str:
        return f"FeedbackStore({self.url_shown!r})"

    def _guarded(self, work: Callable[[], T]) -> T:
        """Run `work`, turning the database's failures into `FeedbackUnavailable`."""
        try:
            return work()
        except (DBAPIError, PoolTimeout, OSError) as error:
            if isinstance(error, IntegrityError):
                raise
            raise FeedbackUnavailable(
                f"the feedback database is unavailable: {failure_reason(error)}"
            ) from None

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine) as session, session.begin():
            yield session

    # writing

    def add(
        self,
        original: bytes,
        digit: np.ndarray,
        label: int,
        predicted: int | None,
        model_version: str | None,
    ) -> tuple[str, bool]:
        """Store one answer; (sha256 of `original`, whether a new row was created).

        The same bytes again update the row's label, prediction and model version (the
        newest answer wins) instead of adding a row."""
        if not isinstance(original, bytes | bytearray) or not original:
            raise InvalidFeedback("the image is empty")
        label = _check_label(label, "the label")
        predicted = _check_label(predicted, "the prediction", optional=True)
        if model_version is not None and len(model_version) > MAX_MODEL_VERSION:
            raise InvalidFeedback(f"the model version is over {MAX_MODEL_VERSION} characters")
        pixels = _digit_bytes(digit)
        sha = sha256_of(bytes(original))
        answer = {"label": label, "predicted": predicted, "model_version": model_version}

        def write() -> bool:
            now = datetime.now(UTC)
            with self._session() as session:
                row = session.get(FeedbackRow, sha, with_for_update=True)
                if row is not None:
                    if any(getattr(row, key) != value for key, value in answer.items()):
                        for key, value in answer.items():
                            setattr(row, key, value)
                        row.updated_at = now
                    return False
                session.add(
                    FeedbackRow(
                        sha256=sha,
                        image=bytes(original),
                        digit=pixels,
                        created_at=now,
                        updated_at=now,
                        **answer,
                    )
                )
                return True

        try:
            created = self._guarded(write)
        except IntegrityError:  # another request stored the same image first: update it
            created = self._guarded(write)
        return sha, created

    def delete(self, sha256: str) -> bool:
        """Delete the row of this image; whether there was one."""
        statement = delete(FeedbackRow).where(FeedbackRow.sha256 == sha256.strip().lower())

        def work() -> bool:
            with self._session() as session:
                return session.execute(statement).rowcount > 0

        return self._guarded(work)

    def delete_all(self) -> int:
        """Delete every row; how many there were."""

        def work() -> int:
            with self._session() as session:
                return session.execute(delete(FeedbackRow)).rowcount

        return self._guarded(work)

    # reading

    def examples(self) -> list[Example]:
        """Every stored digit with its label, ordered by sha256 (stable across databases)."""
        statement = select(FeedbackRow.sha256, FeedbackRow.digit, FeedbackRow.label).order_by(
            FeedbackRow.sha256
        )

        def work() -> list[Example]:
            with self._session() as session:
                return [
                    Example(sha256=sha, digit=digit_array(digit), label=int(label))
                    for sha, digit, label in session.execute(statement)
                ]

        return self._guarded(work)

    def counts(self) -> dict[int, int]:
        """Rows per label, for the labels that have any, in label order."""
        statement = (
            select(FeedbackRow.label, func.count())
            .group_by(FeedbackRow.label)
            .order_by(FeedbackRow.label)
        )

        def work() -> dict[int, int]:
            with self._session() as session:
                return {int(label): int(n) for label, n in session.execute(statement)}

        return self._guarded(work)

    def agreement(self) -> tuple[int, int]:
        """(rows where the user agreed with the prediction, rows with a prediction)."""
        agreed = func.sum(case((FeedbackRow.label == FeedbackRow.predicted, 1), else_=0))
        statement = select(agreed, func.count(FeedbackRow.predicted))

        def work() -> tuple[int, int]:
            with self._session() as session:
                right, predicted = session.execute(statement).one()
                return int(right or 0), int(predicted)

        return self._guarded(work)

    def records(self) -> list[Record]:
        """Every row in full, oldest first (then by sha256)."""
        statement = select(FeedbackRow).order_by(FeedbackRow.created_at, FeedbackRow.sha256)

        def work() -> list[Record]:
            with self._session() as session:
                return [record_of(row) for row in session.scalars(statement)]

        return self._guarded(work)

    def get(self, sha256: str) -> Record | None:
        def work() -> Record | None:
            with self._session() as session:
                row = session.get(FeedbackRow, sha256.strip().lower())
                return None if row is None else record_of(row)

        return self._guarded(work)

    def close(self) -> None:
        self.engine.dispose()
