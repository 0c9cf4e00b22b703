"""The served model: from the BentoML model store to a checked `ConvNet`, or the reason why not.

A stored model is an architecture JSON and safetensors weights, rebuilt as a plain `ConvNet`
after checking the weights' sha256 against the registered one, so nothing is unpickled and a
file changed after registration never serves. The labels `make package` puts on the stored
model (`convlens.artifact.Label`) say which registered version it is. Without a usable model
the service still starts: `MODEL_STATUS` holds the reason, and every API answers 503 with it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import bentoml
import torch
from bentoml.exceptions import NotFound

from convlens.artifact import EMBEDDING_FILE, TOP_PATCHES_FILE, Label
from convlens.embedding import EmbeddingMap
from convlens.model import ConvNet
from convlens.top_patches import LayerPatches
from convlens.top_patches import load as load_top_patches
from convlens.weights import WeightsMismatch, load_weights

logger = logging.getLogger("convlens.serving")


@dataclass(frozen=True)
class LoadedModel:
    """The checked network, and which registered version it is (from the model's labels)."""

    net: ConvNet
    tag: str
    name: str
    version: str
    run_id: str
    test_accuracy: float | None
    weights_sha256: str
    run_url: str | None = None  # the training run's page in the MLflow UI, when packaged with it
    folder: Path | None = None  # the stored model's folder, holding its optional files


def load_model(folder: Path, labels: Mapping[str, str], tag: str) -> LoadedModel:
    """Rebuild the network from a stored model's weights and architecture, refusing weights
    that are not the registered ones (`convlens.weights.WeightsMismatch`).

    The expected digest is the registered version's `Label.WEIGHTS_SHA256`, copied into the
    model's labels by `make package`, so a file changed after registration never serves.
    """
    expected = labels.get(Label.WEIGHTS_SHA256)
    if not expected:
        raise RuntimeError(
            f"{tag} has no {Label.WEIGHTS_SHA256} label: package it with `make package`"
        )
    net = load_weights(folder, expected_sha256=expected)
    accuracy = labels.get(Label.TEST_ACC)
    return LoadedModel(
        net=net.to(memory_format=torch.channels_last),
        tag=tag,
        name=labels.get(Label.MODEL, tag.split(":")[0]),
        version=labels.get(Label.VERSION, ""),
        run_id=labels.get(Label.RUN_ID, ""),
        test_accuracy=float(accuracy) if accuracy else None,
        weights_sha256=expected,
        run_url=labels.get(Label.RUN_URL) or None,
        folder=Path(folder),
    )


class ModelUnavailable(RuntimeError):
    """No usable model; the message is safe to show to clients (no paths, no digests)."""


class ModelStatus:
    """This worker's model, or why it has none. One per process, shared by the service
    instance and the middleware; set once, when the service starts."""

    def __init__(self) -> None:
        self.model: LoadedModel | None = None
        self.problem: str | None = "the model is still loading"

    def loaded(self, model: LoadedModel) -> None:
        self.model, self.problem = model, None

    def failed(self, problem: str) -> None:
        self.model, self.problem = None, problem

    @property
    def error(self) -> str:
        return f"no usable model: {self.problem}"


MODEL_STATUS = ModelStatus()


def declared_model(tag: str) -> bentoml.models.BentoModel | None:
    """The model for BentoML to record in the Bento: declared only when the store has it.

    `bentoml serve` resolves every declared model before it starts a worker, and without a
    local copy it would try BentoCloud and exit; undeclared, the service starts and reports
    what is missing (`open_model`).
    """
    try:
        bentoml.models.get(tag)
    except Exception:  # not in the store, or an invalid tag: open_model says which
        return None
    return bentoml.models.BentoModel(tag)


def open_model(tag: str) -> LoadedModel:
    """The model `tag` from the BentoML store, checked; `ModelUnavailable` says why not."""
    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        raise ModelUnavailable(
            f"{tag} is not in the BentoML model store: import one with `make package`"
        ) from None
    except Exception as error:
        logger.exception("cannot read %s from the BentoML model store", tag)
        raise ModelUnavailable(
            f"{tag} cannot be read from the BentoML model store: {error}"
        ) from None
    try:
        return load_model(Path(stored.path), stored.info.labels, str(stored.tag))
    except WeightsMismatch as error:
        logger.error("refusing %s: %s", stored.tag, error)
        raise ModelUnavailable(
            f"the weights of {stored.tag} do not match the registered sha256 "
            "(changed after registration, or corrupt): refusing to load them"
        ) from None
    except Exception as error:
        logger.exception("cannot load %s", stored.tag)
        raise ModelUnavailable(
            f"{stored.tag} cannot be loaded ({type(error).__name__}): see the server log"
        ) from None


class MissingInsight(LookupError):
    """The served model was packaged without a file an endpoint needs (before it existed)."""


@functools.lru_cache(maxsize=2)
def _embedding_map(path: Path) -> EmbeddingMap:
    return EmbeddingMap.load(path)


@functools.lru_cache(maxsize=2)
def _top_patches(path: Path) -> dict[str, LayerPatches]:
    return load_top_patches(path)


def _optional_file(model: LoadedModel, name: str, what: str, endpoint: str) -> Path:
    path = (model.folder or Path("/nonexistent")) / name
    if not path.is_file():
        raise MissingInsight(
            f"{model.tag} was packaged without {what} ({name}), so {endpoint} has nothing to "
            "show: train and package a model with this version of convlens"
        )
    return path


def embedding_map_of(model: LoadedModel) -> EmbeddingMap:
    """The t-SNE map `make package` made for this model (`convlens.embedding`), read once."""
    path = _optional_file(model, EMBEDDING_FILE, "an embedding map", "the map")
    return _embedding_map(path)


def top_patches_of(model: LoadedModel) -> dict[str, LayerPatches]:
    """Each conv channel's top test patches, logged by training (`convlens.top_patches`)."""
    path = _optional_file(model, TOP_PATCHES_FILE, "top patches", "/top_patches")
    return _top_patches(path)


def limit_torch_threads(threads: int) -> None:
    """One intra-op thread per worker: parallelism comes from workers, not from threads that
    would oversubscribe the cores the workers share."""
    torch.set_num_threads(threads)
    # Only settable before the first inter-op parallel work; if that happened, keep it.
    with suppress(RuntimeError):
        torch.set_num_interop_threads(threads)
