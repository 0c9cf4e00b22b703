"""The digits users corrected (`convlens.feedback`), split for training and a stable hold-out.

Each stored example goes to one side by its sha256 alone (`held_out`), so a digit never moves
between the hold-out and training as the store grows: `feedback/acc` of two runs on the same
hold-out digest measures the same digits, and no model is scored on digits it was trained on.
The digits are stored as the model saw them (uint8 28x28 from `to_mnist`), so training treats
them exactly like MNIST: the data module's one `normalize` per batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convlens import UserError

TRAIN = "feedback-train"
HOLDOUT = "feedback-holdout"


class FeedbackDataError(UserError):
    """`data.feedback=true` but the store cannot give examples; the message says what to fix."""


def held_out(sha256: str, every: int) -> bool:
    """Whether this example belongs to the hold-out: 1 in `every`, decided by its hash only."""
    return int(sha256, 16) % every == 0


def redacted(url: str) -> str:
    """The store's URL without its password, fit for logs, errors and MLflow."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


@dataclass(frozen=True)
class FeedbackPart:
    """One side of the split: uint8 (N, 28, 28) digits and int64 labels, sorted by sha256."""

    sha256: tuple[str, ...]
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.sha256)

    def digest(self) -> str:
        """What the part holds: its sorted sha256s with their labels (16 hex characters)."""
        lines = "".join(f"{s}:{int(y)}\n" for s, y in zip(self.sha256, self.labels, strict=True))
        return hashlib.sha256(lines.encode()).hexdigest()[:16]


def _part(examples: list) -> FeedbackPart:
    examples = sorted(examples, key=lambda example: example.sha256)
    images = np.stack([np.asarray(e.digit, dtype=np.uint8) for e in examples]).reshape(-1, 28, 28)
    return FeedbackPart(
        tuple(e.sha256 for e in examples),
        torch.from_numpy(images.copy()),
        torch.tensor([int(e.label) for e in examples], dtype=torch.int64),
    )


@dataclass(frozen=True)
class FeedbackSplit:
    train: FeedbackPart
    holdout: FeedbackPart
    source: str  # the store's URL, password hidden


def split(examples: list, every: int, source: str = "") -> FeedbackSplit:
    """Stored examples (`convlens.feedback.Example`) to training and hold-out parts."""
    if every < 2:
        raise FeedbackDataError(f"data.feedback_holdout must be 2 or more, got {every}")
    holdout = [e for e in examples if held_out(e.sha256, every)]
    train = [e for e in examples if not held_out(e.sha256, every)]
    empty = FeedbackPart((), torch.zeros(0, 28, 28, dtype=torch.uint8), torch.zeros(0).long())
    return FeedbackSplit(
        _part(train) if train else empty, _part(holdout) if holdout else empty, source
    )


class NoStore(LookupError):
    """The SQLite file does not exist: nothing to read (and opening it would create it)."""


class StoreUnreadable(RuntimeError):
    """The database cannot be read; the message is the first line of its reason."""


def read_examples(url: str) -> list:
    """Every stored example (`convlens.feedback.Example`), without creating a store.

    Raises NoStore or StoreUnreadable; callers word both for their own command."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise NoStore(redacted(url))
    from sqlalchemy.exc import SQLAlchemyError

    from convlens.feedback import FeedbackStore, FeedbackUnavailable

    try:
        store = FeedbackStore(url)
        try:
            return store.examples()
        finally:
            store.close()
    except (FeedbackUnavailable, SQLAlchemyError, OSError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise StoreUnreadable(reason) from None


def load_examples(url: str | None) -> list:
    """Every stored example, or a one-line error saying why there are none to train with."""
    if not url:
        raise FeedbackDataError(
            "data.feedback=true but no feedback store is configured: set paths.feedback_url "
            "(or CONVLENS_FEEDBACK_URL), or train with data.feedback=false"
        )
    shown = redacted(url)
    try:
        examples = read_examples(url)
    except NoStore:
        raise FeedbackDataError(
            f"data.feedback=true but there is no feedback store at {shown}: point "
            "paths.feedback_url (or CONVLENS_FEEDBACK_URL) at it, or train with data.feedback=false"
        ) from None
    except StoreUnreadable as error:
        raise FeedbackDataError(
            f"data.feedback=true but the feedback store at {shown} cannot be read ({error}): "
            "start it or fix paths.feedback_url, or train with data.feedback=false"
        ) from None
    if not examples:
        raise FeedbackDataError(
            f"data.feedback=true but the feedback store at {shown} holds no examples yet: "
            "collect some (POST /feedback) or train with data.feedback=false"
        )
    return examples


def load_split(url: str | None, every: int) -> FeedbackSplit:
    return split(load_examples(url), every, redacted(url or ""))
