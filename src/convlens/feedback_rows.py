"""What the feedback table holds (`FeedbackRow`), and a row as it reads back (`Record`).

`convlens.feedback.FeedbackStore` writes and queries these rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import DateTime, LargeBinary, SmallInteger, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

DIGIT_SHAPE = (28, 28)
MAX_MODEL_VERSION = 200  # characters


class _Base(DeclarativeBase):
    pass


class FeedbackRow(_Base):
    """One user's answer about one image (the table `feedback`)."""

    __tablename__ = "feedback"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    image: Mapped[bytes] = mapped_column(LargeBinary)  # the original bytes as sent
    digit: Mapped[bytes] = mapped_column(LargeBinary)  # 784 bytes: uint8 28x28, row-major
    label: Mapped[int] = mapped_column(SmallInteger, index=True)
    predicted: Mapped[int | None] = mapped_column(SmallInteger)
    model_version: Mapped[str | None] = mapped_column(String(MAX_MODEL_VERSION))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class Record:
    """A whole row, for listing and exporting."""

    sha256: str
    image: bytes
    digit: np.ndarray
    label: int
    predicted: int | None
    model_version: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def agreed(self) -> bool | None:
        """Whether the model was right, as far as the user says; None without a prediction."""
        return None if self.predicted is None else self.predicted == self.label


def digit_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape(DIGIT_SHAPE).copy()


def record_of(row: FeedbackRow) -> Record:
    return Record(
        sha256=row.sha256,
        image=bytes(row.image),
        digit=digit_array(row.digit),
        label=int(row.label),
        predicted=row.predicted,
        model_version=row.model_version,
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
    )


def _utc(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes; every stored time is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
