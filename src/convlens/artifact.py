"""The model artifact contract: what training logs, registration tags and serving loads.

A logged model is an MLflow model named `model` whose `extra_files/` folder holds two plain
files, safetensors weights and the architecture JSON (`convlens.weights`), never read from the
pickle beside them. The weights' sha256 travels with it: a tag on the logged model and on the
registered version, then a label on the BentoML model, and every loader checks it.

MLflow is imported inside the functions only: serving imports this module for its names and
ships without MLflow.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from convlens.weights import ARCHITECTURE_FILE, WEIGHTS_FILE, load_weights, sha256_of

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from convlens.model import ConvNet

LOGGED_MODEL = "model"  # log_model(name=...): one logged model per run
EXTRA_FILES = "extra_files"  # the folder inside it holding FILES
FILES = (WEIGHTS_FILE, ARCHITECTURE_FILE)
# Optional files, logged when training wrote them: a model logged before they existed lacks
# them, and packaging and serving carry on without (the endpoints that need one say so).
TOP_PATCHES_FILE = "top_patches.npz"  # convlens.top_patches: what each conv channel looks for
EMBEDDING_SAMPLE_FILE = "embedding_sample.npz"  # convlens.embedding: the fixed test digits
OPTIONAL_FILES = (TOP_PATCHES_FILE, EMBEDDING_SAMPLE_FILE)
EMBEDDING_FILE = "embedding.npz"  # in the BentoML model only: the t-SNE map `make package` made

# Tags on the logged model and on the registered version.
WEIGHTS_SHA256 = "weights_sha256"
TEST_ACC = "test_acc"


MODEL_ENV = "CONVLENS_MODEL"  # the BentoML model tag the service loads (serving/settings.py)


class Label:
    """The labels `make package` puts on a BentoML model and serving reads back."""

    MODEL = "mlflow_model"  # the registered model's name
    VERSION = "mlflow_version"
    RUN_ID = "mlflow_run_id"
    RUN_URL = "mlflow_run_url"  # the run's page in the MLflow UI
    TEST_ACC = TEST_ACC
    WEIGHTS_SHA256 = WEIGHTS_SHA256


__all__ = [
    "ARCHITECTURE_FILE",
    "EMBEDDING_FILE",
    "EMBEDDING_SAMPLE_FILE",
    "EXTRA_FILES",
    "FILES",
    "LOGGED_MODEL",
    "Label",
    "MODEL_ENV",
    "OPTIONAL_FILES",
    "TEST_ACC",
    "TOP_PATCHES_FILE",
    "WEIGHTS_FILE",
    "WEIGHTS_SHA256",
    "download_files",
    "load_logged_net",
    "load_weights",
    "log_model",
    "sha256_of",
]


@contextmanager
def download_files(model_location: str, tracking_uri: str) -> Iterator[Path]:
    """The two files of a logged model (its artifact location, e.g. a model version's download
    URI), in a temporary folder that lives as long as the `with` block."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        folder = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model_location.rstrip('/')}/{EXTRA_FILES}",
            dst_path=tmp,
            tracking_uri=tracking_uri,
        )
        yield Path(folder)


def load_logged_net(
    client: MlflowClient, model_location: str, expected_sha256: str | None
) -> ConvNet:
    """A logged model rebuilt from its safetensors weights, refusing weights whose sha256 is not
    the logged one (`convlens.weights.WeightsMismatch`); nothing is unpickled."""
    with download_files(model_location, client.tracking_uri) as folder:
        return load_weights(folder, expected_sha256=expected_sha256 or None)


def log_model(tracking_uri: str, run_id: str, folder: Path) -> str:
    """Log the network saved in `folder` (`convlens.weights.save_weights`) as the run's model;
    returns its URI.

    The model is rebuilt from the safetensors file, so what MLflow holds is exactly what
    serving will load; MLflow's own loaders get a pickled module beside it (`mlflow.pytorch`'s
    default `pt2` format would not give the eager, named-layer module back).
    """
    import mlflow
    import torch

    import convlens
    from convlens.preprocessing import INPUT_SHAPE, normalize

    folder = Path(folder)
    net = load_weights(folder)
    example = normalize(torch.zeros(2, *INPUT_SHAPE[1:], dtype=torch.uint8)).numpy()
    with torch.inference_mode():
        output = net(torch.from_numpy(example)).numpy()
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            net,
            name=LOGGED_MODEL,
            signature=mlflow.models.infer_signature(example, output),
            input_example=example,
            extra_files=[str(folder / name) for name in FILES]
            + [str(folder / name) for name in OPTIONAL_FILES if (folder / name).exists()],
            code_paths=[str(Path(convlens.__file__).parent)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
            serialization_format="pickle",
            tags={WEIGHTS_SHA256: sha256_of(folder / WEIGHTS_FILE)},
        )
    return info.model_uri
