"""`make evaluate`: test a run's logged model on the MNIST test set and record the result.

    python -m pipelines.evaluate                     the newest finished run with a model
    python -m pipelines.evaluate --run-id RUN_ID     that run
    python -m pipelines.evaluate --version 3         the run behind registered version 3
    python -m pipelines.evaluate --test-subset 2000  only the first 2,000 test images

Training already tests the best checkpoint; this re-tests what was *logged* (the safetensors
weights and architecture that registration and serving use), fetched through MLflow, so it
works against a remote tracking server too. It logs the metric `eval/test_acc` and the tags
`release.evaluated`, `release.eval_test_acc`, `release.eval_test_images` and
`release.eval_weights_sha256` on the run. A run already evaluated on the same images with the
same weights is not evaluated again (pass --force to redo it).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.common import (
    TAG,
    Parser,
    StepError,
    add_store_arguments,
    default_tracking_uri,
    experiment_name,
    get_run,
    latest_run,
    logged_model,
    open_store,
    record,
    registry_name,
    run_cli,
)

if TYPE_CHECKING:  # torch and the model code load only once there is something to evaluate
    import torch

    from convlens.model import ConvNet

METRIC = "eval/test_acc"


@dataclass(frozen=True)
class Evaluation:
    run_id: str
    test_acc: float
    images: int
    weights_sha256: str
    cached: bool  # True: the run had already been evaluated so, nothing was recomputed


def load_logged_net(client: MlflowClient, run_id: str) -> tuple[ConvNet, str]:
    """The run's logged network rebuilt from its safetensors weights (checked against the
    sha256 logged with it) and architecture JSON: nothing is unpickled."""
    from convlens.weights import WEIGHTS_FILE, WeightsMismatch, load_weights, sha256_of

    model = logged_model(client, get_run(client, run_id))
    if model is None:
        raise StepError(f"run {run_id} has no logged model (did its training finish?)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model.artifact_location.rstrip('/')}/extra_files",
            dst_path=tmp,
            tracking_uri=client.tracking_uri,
        )
        try:
            net = load_weights(Path(folder), model.tags.get("weights_sha256"))
        except WeightsMismatch as error:
            raise StepError(f"run {run_id}: {error}") from None
        digest = sha256_of(Path(folder) / WEIGHTS_FILE)
    return net, digest


def mnist_test_set(data_root: str, test_subset: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    from convlens.data import load_mnist

    images, labels = load_mnist(data_root, train=False, download=True)
    if test_subset:
        images, labels = images[:test_subset], labels[:test_subset]
    return images, labels


def evaluate_run(
    client: MlflowClient,
    run_id: str,
    data_root: str,
    test_subset: int | None = None,
    force: bool = False,
) -> Evaluation:
    """Test the run's logged model and record it on the run (see the module docstring)."""
    images, labels = mnist_test_set(data_root, test_subset)
    tags = get_run(client, run_id).data.tags
    done = tags.get(TAG + "evaluated") == "true"
    if done and not force and tags.get(TAG + "eval_test_images") == str(len(labels)):
        return Evaluation(
            run_id,
            float(tags[TAG + "eval_test_acc"]),
            len(labels),
            tags.get(TAG + "eval_weights_sha256", ""),
            cached=True,
        )
    from convlens.tracking import predict_labels

    net, digest = load_logged_net(client, run_id)
    correct = (predict_labels(net, images) == labels).sum().item()
    accuracy = correct / len(labels)
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


def pick_run(
    client: MlflowClient, run_id: str | None, version: str | None, name: str
) -> str | None:
    """The run asked for: --run-id, the run of --version, or else the newest one with a model."""
    if run_id:
        return run_id
    if version:
        try:
            found = client.get_model_version(name, version)
        except MlflowException:
            raise StepError(f"{name} has no version {version} in {client.tracking_uri}") from None
        if not found.run_id:
            raise StepError(f"{name} v{version} was not registered from a run")
        return found.run_id
    run = latest_run(client, experiment_name())
    return run.info.run_id if run else None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m pipelines.evaluate", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run-id", help="the MLflow run to evaluate")
    which.add_argument("--version", help="evaluate the run behind this registered version")
    parser.add_argument(
        "--test-subset", type=positive_int, default=None, help="first N test images only"
    )
    parser.add_argument(
        "--data-root",
        default=os.environ.get("CONVLENS_DATA_DIR", "data"),
        help="folder holding MNIST/raw/ (default: $CONVLENS_DATA_DIR, else data)",
    )
    parser.add_argument("--force", action="store_true", help="evaluate again even if recorded")
    add_store_arguments(parser)
    args = parser.parse_args(argv)

    client = open_store(args.tracking_uri or default_tracking_uri())
    name = args.model_name or registry_name()
    run_id = pick_run(client, args.run_id, args.version, name)
    if run_id is None:
        print(f"nothing to evaluate: no finished run with a logged model in {experiment_name()!r}")
        return 0
    result = evaluate_run(client, run_id, args.data_root, args.test_subset, args.force)
    done = "already evaluated" if result.cached else "evaluated"
    print(
        f"{done:<17} run {run_id}: test acc {result.test_acc:.4f} on {result.images:,} test images"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
