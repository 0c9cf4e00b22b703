"""What a model does on the MNIST test set: the end-of-run evaluation artifacts, and the release
step that re-tests a *logged* model.

Training writes the confusion matrix, a gallery of misclassified digits and the model summary
(`write_evaluation`). `evaluate_run` re-tests what was logged (the safetensors weights and
architecture that registration and serving use), fetched through MLflow, so it works against a
remote tracking server too; it logs `eval/test_acc` and `release.eval_*` tags on the run, and a
run already evaluated on the same images is not evaluated again unless forced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mlflow import MlflowClient

from convlens.artifact import WEIGHTS_SHA256, load_logged_net
from convlens.data import TensorImages, load_mnist
from convlens.model import ConvNet, summary
from convlens.preprocessing import normalize
from convlens.store import TAG, StepError, get_run, logged_model, record
from convlens.visuals import confusion_figure, digit_gallery
from convlens.weights import WeightsMismatch

METRIC = "eval/test_acc"
EVALUATION_DIR = "evaluation"  # the run's artifact folder for the files below
SUMMARY_FILE = "model_summary.txt"


@torch.inference_mode()
def predict_labels(net: ConvNet, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    batches = range(0, len(images), batch_size)
    return torch.cat([net(normalize(images[i : i + batch_size])).argmax(1) for i in batches])


def write_evaluation(folder: Path, net: ConvNet, test_set: TensorImages) -> None:
    """`folder/evaluation/` (confusion matrix as PNG and JSON, misclassified digits) and the
    model summary, written locally so nothing depends on the tracking server."""
    out = Path(folder) / EVALUATION_DIR
    out.mkdir(parents=True, exist_ok=True)
    preds = predict_labels(net, test_set.images).numpy()
    labels = test_set.labels.numpy()
    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (labels, preds), 1)
    confusion_figure(matrix).savefig(out / "confusion_matrix.png", dpi=100)
    (out / "confusion_matrix.json").write_text(json.dumps({"matrix": matrix.tolist()}))
    wrong = np.flatnonzero(preds != labels)[:64]
    if len(wrong):
        captions = [f"{labels[i]} as {preds[i]}" for i in wrong]
        gallery = digit_gallery(test_set.images[wrong].numpy(), captions)
        gallery.save(out / "misclassified.png")
    (Path(folder) / SUMMARY_FILE).write_text(summary(net))


@dataclass(frozen=True)
class Evaluation:
    run_id: str
    test_acc: float
    images: int
    weights_sha256: str
    cached: bool  # True: the run had already been evaluated so, nothing was recomputed


def evaluate_run(
    client: MlflowClient,
    run_id: str,
    data_root: str,
    test_subset: int | None = None,
    force: bool = False,
) -> Evaluation:
    """Test the run's logged model and record it on the run (see the module docstring)."""
    images, labels = load_mnist(data_root, train=False, download=True)
    if test_subset:
        images, labels = images[:test_subset], labels[:test_subset]
    run = get_run(client, run_id)
    tags = run.data.tags
    done = tags.get(TAG + "evaluated") == "true"
    if done and not force and tags.get(TAG + "eval_test_images") == str(len(labels)):
        return Evaluation(
            run_id,
            float(tags[TAG + "eval_test_acc"]),
            len(labels),
            tags.get(TAG + "eval_weights_sha256", ""),
            cached=True,
        )
    model = logged_model(client, run)
    if model is None:
        raise StepError(f"run {run_id} has no logged model (did its training finish?)")
    digest = model.tags.get(WEIGHTS_SHA256, "")
    try:
        net = load_logged_net(client, model.artifact_location, digest)
    except WeightsMismatch as error:
        raise StepError(f"run {run_id}: {error}") from None
    accuracy = (predict_labels(net, images) == labels).sum().item() / len(labels)
    client.log_metric(run_id, METRIC, accuracy)
    record(
        client,
        {
            "evaluated": "true",
            "eval_test_acc": f"{accuracy:.6f}",
            "eval_test_images": str(len(labels)),
            "eval_weights_sha256": digest,
        },
        run_id=run_id,
    )
    return Evaluation(run_id, accuracy, len(labels), digest, cached=False)
