"""The champion CNN as a BentoML 1.4 service: predictions, and a look inside the network.

    bentoml serve serving.service:ConvLens        (or `make serve`)

This module is the service class and nothing else; its parts live beside it: settings
(`serving.settings`), the model (`serving.loading`), running it on an upload
(`serving.inference`), the look-inside answers (`serving.insights`), `model_card`,
`monitoring`, `feedback_intake`, shapes (`serving.schemas`, `serving.rendering`), errors
(`serving.errors`), the layers around the API (`serving.request_flow`, installed below), the
OpenAPI document (`serving.openapi`) and BentoML workarounds (`serving.bentoml_private`).

Without a usable model (none in the store, weights that fail the check) the service still
starts, and `/readyz` and every API answer 503 with the reason, so the failure is visible from
outside. Every error is answered with the body {"error": "<what was wrong>"}.
"""

from __future__ import annotations

import gc
import logging
import warnings
from pathlib import Path
from typing import Any

import bentoml
import torch
from PIL import Image

from convlens.artifact import MODEL_ENV
from convlens.model import ConvNet
from serving import bentoml_private, insights, model_card, monitoring, request_flow
from serving.errors import client_error
from serving.feedback_intake import FeedbackIntake
from serving.inference import check_layer, class_probabilities, prediction, upload_digit, warm_up
from serving.loading import (
    MODEL_STATUS,
    LoadedModel,
    ModelUnavailable,
    declared_model,
    limit_torch_threads,
    open_model,
)
from serving.openapi import SERVICE_DESCRIPTION
from serving.rendering import png_response
from serving.schemas import (
    PNG,
    BuildingBlocks,
    Channel,
    DigitClass,
    Embedding,
    ExplainMethod,
    Explanation,
    FeatureMaps,
    FeedbackReceipt,
    Filters,
    Format,
    ImageArray,
    ImagePrediction,
    Index,
    KernelName,
    ModelVersion,
    Neighbours,
    Placement,
    Prediction,
    ReceptiveField,
    TopPatches,
)
from serving.settings import CONFIG
from serving.traffic import APIThreads
from serving.ui_app import ui_app

logger = logging.getLogger("convlens.serving")
# Pillow warns above 89 Mpx; `convlens.images` refuses anything over the configured limit from
# the header already, so the warning would only add noise to the log.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
bentoml_private.apply()
api_threads = APIThreads(CONFIG.threads)


@bentoml.asgi_app(ui_app, path="/ui")
@bentoml.service(
    name="convlens",
    description=SERVICE_DESCRIPTION,
    workers=CONFIG.workers,
    threads=CONFIG.threads,
    traffic={"timeout": CONFIG.timeout_s, "max_concurrency": CONFIG.max_concurrency},
    logging={"access": {"enabled": CONFIG.access_log}},
    metrics={"enabled": CONFIG.metrics},
    tracing=CONFIG.tracing_options,
    # Recorded in the Bento, so a container built from it serves the model it was built with.
    envs=[{"name": MODEL_ENV, "value": CONFIG.model}],
)
class ConvLens:
    """Classify handwritten digits and show what the CNN computes on them."""

    # Recorded in the Bento by `make package`; None when the store lacks it (`declared_model`).
    bento_model = declared_model(CONFIG.model)

    def __init__(self) -> None:
        """Load the model, or record why there is none: the process starts either way and
        answers 503 with the reason instead of exiting (a restart would not help)."""
        limit_torch_threads(CONFIG.torch_threads)
        self.limits = CONFIG.image_limits
        self.feedback_intake = FeedbackIntake(CONFIG.feedback_url)
        try:
            model = open_model(CONFIG.model)
            warm_up(model)
        except ModelUnavailable as error:
            MODEL_STATUS.failed(str(error))
            logger.error("%s; /readyz and the API answer 503 until fixed", MODEL_STATUS.error)
        else:
            MODEL_STATUS.loaded(model)
        monitoring.start()
        # The ~250k objects of torch, BentoML and pydantic are here for good: moved out of the
        # collector's sight, a full collection no longer stalls every request for ~130 ms.
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        """BentoML's readiness hook (`/readyz`); `JSONErrors` answers with the reason first."""
        return MODEL_STATUS.model is not None

    @property
    def model(self) -> LoadedModel:
        model = MODEL_STATUS.model
        if model is None:  # `JSONErrors` answers before this; a 503 all the same
            raise client_error(ModelUnavailable(MODEL_STATUS.error))
        return model

    @property
    def net(self) -> ConvNet:
        return self.model.net

    @bentoml.api
    @api_threads.off_loop
    def predict(self, image: Path) -> ImagePrediction:
        """Classify one uploaded digit (PNG, JPEG, BMP, GIF or WebP; any size; L, RGB, RGBA or P).

        Light or dark background, centred or not: it is made to look like MNIST first.
        """
        with monitoring.counting_no_digit():
            seen = upload_digit(image, self.limits)
        return prediction(self.model, seen)

    @bentoml.api(
        batchable=True,
        max_batch_size=CONFIG.max_batch_size,
        max_latency_ms=CONFIG.max_latency_ms,
    )
    @api_threads.off_loop
    def predict_batch(self, images: ImageArray) -> list[Prediction]:
        """Classify digits already in MNIST form: {"images": [...]} shaped (N, 28, 28) or
        (N, 1, 28, 28), integers 0-255 or floats 0-1. One prediction per image, in order.

        Concurrent requests are batched into one forward pass (adaptive batching).
        """
        probabilities = class_probabilities(self.net, torch.from_numpy(images))
        monitoring.record_inputs(images)
        monitoring.record_prediction(probabilities, self.model.version, "predict_batch")
        return [
            Prediction(label=int(row.argmax()), probabilities=row.tolist()) for row in probabilities
        ]

    @bentoml.api
    @api_threads.off_loop
    def feature_maps(self, image: Path, layer: str, format: Format = "png") -> FeatureMaps:
        """What a conv or pooling layer outputs for the uploaded digit: a PNG grid of all
        channels (predicted label in the X-Predicted-Label header), or the activations as JSON."""
        check_layer(layer, self.net.spatial_layer_names(), "conv or pooling")
        return insights.feature_maps(self.net, upload_digit(image, self.limits), layer, format)

    @bentoml.api
    @api_threads.off_loop
    def filters(self, layer: str, format: Format = "png") -> Filters:
        """The learned kernels of a conv layer: a PNG grid, or the weights as JSON."""
        check_layer(layer, self.net.conv_layer_names(), "conv")
        return insights.filters(self.net, layer, format)

    @bentoml.api
    @api_threads.off_loop
    def preprocessed(self, image: Path) -> PNG:
        """The 28x28 grayscale PNG the model sees for the uploaded image."""
        return png_response(Image.fromarray(upload_digit(image, self.limits)))

    @bentoml.api
    @api_threads.off_loop
    def building_blocks(self, image: Path, kernel: KernelName) -> BuildingBlocks:
        """The tutorial's conv block by hand on the uploaded digit: convolve with a classic
        kernel, ReLU, 2x2 max pooling; each stage as values and as a PNG data URL."""
        return insights.building_blocks(upload_digit(image, self.limits), kernel)

    @bentoml.api
    @api_threads.off_loop
    def explain(
        self,
        image: Path,
        method: ExplainMethod = "integrated_gradients",
        target: DigitClass | None = None,
        format: Format = "png",
    ) -> Explanation:
        """Why the model scores a class (default: the predicted one) as it does on the uploaded
        digit: Integrated Gradients, Saliency, Grad-CAM (last conv layer, upsampled to 28x28)
        or Occlusion, by Captum. A PNG over the digit (red: evidence for the class, blue:
        against; label in X-Predicted-Label, class in X-Explained-Class), or the values."""
        digit = upload_digit(image, self.limits)
        return insights.explanation(self.net, digit, method, target, format)

    @bentoml.api
    @api_threads.off_loop
    def receptive_field(
        self, image: Path, layer: str, channel: Index, y: Index, x: Index
    ) -> ReceptiveField:
        """How one value of a conv or pooling layer's output comes about on the uploaded digit:
        the input pixels it sees (its receptive field) and its arithmetic with the model's own
        weights: a conv layer's patch, kernel, bias, sum and ReLU (for many input channels,
        the largest contributions); a pooling layer's window and its maximum."""
        check_layer(layer, self.net.spatial_layer_names(), "conv or pooling")
        digit = upload_digit(image, self.limits)
        return insights.receptive_field_of(self.net, digit, layer, channel, y, x)

    @bentoml.api
    @api_threads.off_loop
    def feedback(
        self,
        image: Path,
        label: DigitClass,
        predicted: DigitClass | None = None,
        model_version: ModelVersion | None = None,
    ) -> FeedbackReceipt:
        """Tell the service what an uploaded digit really is: the image as sent to /predict,
        the right label, and what /predict answered (label and model version).

        Stored with the 28x28 digit the model saw, for training. The same image again is the
        same row (by sha256), whose label becomes the newest one. 503 if the feedback database
        is down or full: nothing is stored then, and nothing stored before is lost."""
        digit = upload_digit(image, self.limits)
        return self.feedback_intake.take(image.read_bytes(), digit, label, predicted, model_version)

    @bentoml.api
    @api_threads.off_loop
    def embedding(self) -> Embedding:
        """The served model's map of 2,000 fixed MNIST test digits: t-SNE of its last hidden
        layer, computed once by `make package`; positions in [0, 1], with labels and test-set
        indices. 404 for a model packaged before maps existed."""
        return insights.embedding(insights.embedding_map(self.model))

    @bentoml.api
    @api_threads.off_loop
    def embedding_sprite(self) -> PNG:
        """The map's digits in one PNG, `sprite_columns` to a row in the order of /embedding."""
        return insights.embedding_sprite(insights.embedding_map(self.model))

    @bentoml.api
    @api_threads.off_loop
    def embed(self, image: Path, neighbours: Neighbours = 10) -> Placement:
        """Where the uploaded digit falls on the /embedding map, and its nearest map digits
        (in the last hidden layer) as 28x28 PNG data URLs, nearest first. t-SNE has no
        transform: the position is the distance-weighted mean of the neighbours' positions."""
        emap = insights.embedding_map(self.model)
        return insights.placement(self.net, emap, upload_digit(image, self.limits), neighbours)

    @bentoml.api
    @api_threads.off_loop
    def top_patches(self, layer: str, channel: Channel) -> TopPatches:
        """The nine test-image patches (the channel's receptive field) that excite a conv
        channel most, strongest first, each also shown in its whole digit (PNG data URLs).
        404 for a model packaged before top patches existed."""
        check_layer(layer, self.net.conv_layer_names(), "conv")
        return insights.top_patches(self.model, layer, channel)

    @bentoml.api
    @api_threads.off_loop
    def model_info(self) -> dict[str, Any]:
        """Which model is serving (registry name, version, run and its MLflow page, test
        accuracy), its layers with output shapes and parameter counts, and what the endpoints
        accept."""
        return model_card.model_info(self.model, self.limits)


request_flow.install(ConvLens, api_threads)
bentoml_private.answer_media_types(ConvLens)
