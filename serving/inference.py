"""How the service runs the model on what a client sent: the upload as the digit the model
sees, the network's input and class probabilities, /predict's answer, the check that a layer
exists, and the warm-up pass that tells a usable model from one that only loads."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from convlens.images import ImageLimits, decode_image, read_image
from convlens.model import ConvNet
from convlens.preprocessing import INPUT_SHAPE, normalize, to_mnist
from serving import monitoring
from serving.errors import UnknownLayer, client_error, client_errors
from serving.loading import LoadedModel, ModelUnavailable
from serving.schemas import ImagePrediction, ModelRef

logger = logging.getLogger("convlens.serving")


def model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float digits as the network takes them: normalized, channels_last."""
    return normalize(images).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def class_probabilities(net: ConvNet, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities for (N, 28, 28) or (N, 1, 28, 28) digits."""
    return torch.softmax(net(model_input(images)), dim=1)


def upload_digit(image: Path, limits: ImageLimits) -> np.ndarray:
    """The upload as the 28x28 uint8 digit the model sees (`to_mnist` does the work)."""
    with client_errors():
        return to_mnist(read_image(image, limits))


def prediction(model: LoadedModel, digit: np.ndarray) -> ImagePrediction:
    """/predict's answer for a 28x28 uint8 digit, recorded by the monitoring."""
    probabilities = class_probabilities(model.net, torch.from_numpy(digit)[None])
    monitoring.record_inputs(digit[None])
    monitoring.record_prediction(probabilities, model.version, "predict")
    row = probabilities[0]
    ref = ModelRef(name=model.name, version=model.version)
    return ImagePrediction(label=int(row.argmax()), probabilities=row.tolist(), model=ref)


def prediction_json(model: LoadedModel, data: bytes, limits: ImageLimits) -> bytes:
    """/predict's answer for an uploaded file's bytes, as BentoML would send it; the
    library's errors are raised as they are (`serving.shortcut` leaves them to BentoML)."""
    digit = to_mnist(decode_image(data, limits))
    return prediction(model, digit).model_dump_json().encode()


def check_layer(layer: str, allowed: list[str], what: str) -> None:
    """A 400 naming the choices, for a layer the endpoint does not show."""
    if layer not in allowed:
        choices = ", ".join(allowed)
        raise client_error(UnknownLayer(f"unknown {what} layer {layer!r}: choose one of {choices}"))


def warm_up(model: LoadedModel) -> None:
    """One forward pass before the first request; a model that fails it is unusable."""
    try:
        class_probabilities(model.net, torch.zeros(1, *INPUT_SHAPE))
    except Exception as error:
        logger.exception("%s fails on a blank input", model.tag)
        raise ModelUnavailable(
            f"{model.tag} fails on a blank input ({type(error).__name__}): see the log"
        ) from None
