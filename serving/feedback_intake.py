"""POST /feedback's work behind the endpoint: the database, opened when first needed, one row
stored, and the receipt or the reason nothing was stored."""

from __future__ import annotations

import logging

import numpy as np
from starlette.responses import Response

from convlens.feedback import FeedbackStore, FeedbackUnavailable, InvalidFeedback
from serving import monitoring
from serving.errors import client_error, error_response
from serving.schemas import FeedbackReceipt

logger = logging.getLogger("convlens.serving")


class FeedbackIntake:
    """Users' labels for the digits they sent, on their way to the feedback database."""

    def __init__(self, url: str):
        self.url = url
        self._store: FeedbackStore | None = None

    def store(self) -> FeedbackStore:
        """The feedback database, opened on first use, and again after a failed open: one
        that is down when the service starts is used as soon as it is back."""
        if self._store is None:
            try:
                self._store = FeedbackStore(self.url)
            except InvalidFeedback as error:  # a bad URL: the deployment's fault, not the client's
                raise FeedbackUnavailable(
                    f"the feedback database is misconfigured: {error}"
                ) from None
        return self._store

    def take(
        self,
        upload: bytes,
        digit: np.ndarray,
        label: int,
        predicted: int | None,
        model_version: str | None,
    ) -> FeedbackReceipt | Response:
        """Store one labelled digit; a database that is down is a 503 with the reason."""
        try:
            sha256, created = self.store().add(upload, digit, label, predicted, model_version)
        except FeedbackUnavailable as error:
            logger.warning("feedback not stored: %s", error)
            return error_response(error)
        except InvalidFeedback as error:
            raise client_error(error) from None
        if created and predicted is not None and model_version:  # a re-sent image counts once
            monitoring.record_feedback(model_version, agreed=predicted == label)
        message = "saved" if created else f"saved before; its label is now {label}"
        return FeedbackReceipt(sha256=sha256, created=created, label=label, message=message)
