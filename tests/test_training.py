"""One short real training run: what lands in MLflow and the registry."""

import hashlib
import json
import re
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from convlens.data import MNISTDataModule
from convlens.model import ConvNet
from convlens.preprocessing import normalize
from tests.conftest import MODEL_NAME

STEP = re.compile(r"^(?P<key>.+)\+step\+(?P<step>\d+)\+timestamp\+.*(?<!compressed)\.png$")


@pytest.fixture(autouse=True)
def logged_code_stays_off_the_path(monkeypatch):
    """Loading the logged model puts its `code_paths` copy of convlens first on sys.path, for
    the rest of the process (MLflow's doing). Processes that later tests spawn inherit sys.path,
    and would import that copy, which finds no `conf/` beside it. Each test here gives it back."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture(scope="module")
def client(trained) -> MlflowClient:
    """The trained store's client; also makes it MLflow's store, for `models:/` URIs."""
    mlflow.set_tracking_uri(trained.tracking_uri)
    return MlflowClient(trained.tracking_uri)


@pytest.fixture(scope="module")
def run(client, trained):
    return client.get_run(trained.run_id)


@pytest.fixture(scope="module")
def logged_images(client, trained) -> dict[str, set[int]]:
    steps: dict[str, set[int]] = {}
    for item in client.list_artifacts(trained.run_id, "images"):
        match = STEP.match(Path(item.path).name)
        if match:
            steps.setdefault(match["key"].replace("~", "/"), set()).add(int(match["step"]))
    return steps


@pytest.fixture(scope="module")
def test_batch(mnist_root):
    dm = MNISTDataModule(root=str(mnist_root), download=False, test_subset=500)
    dm.setup()
    return normalize(dm.test_set.images), dm.test_set.labels


def test_run_finishes(run):
    assert run.info.status == "FINISHED"


def test_run_lands_in_the_convlens_experiment(client, run):
    assert client.get_experiment(run.info.experiment_id).name == "convlens-mnist"


@pytest.mark.parametrize(
    "metric",
    [
        "train/loss",
        "train/loss_step",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/acc_best",
        "test/loss",
        "test/acc",
    ],
)
def test_run_has_metric(run, metric):
    assert metric in run.data.metrics


def test_test_accuracy_is_far_above_chance(run):
    assert run.data.metrics["test/acc"] > 0.6


def test_params_are_a_few_short_values_that_tell_runs_apart(run):
    """MLflow prints every param above each image on the run page: the whole flattened
    config (~107 params, some long JSON) hid the images. config.yaml holds all of it."""
    params = run.data.params
    assert len(params) <= 20, sorted(params)
    assert all(len(key) <= 40 and len(value) <= 40 for key, value in params.items()), params
    assert float(params["lr"]) == pytest.approx(3e-3)
    assert params["batch_size"] == "64"
    assert params["epochs"] == "1"
    assert params["subset"] == "2000"
    assert params["optimizer"] == "Adam"
    assert params["conv"] == "32,64"


def test_run_params_come_from_the_config_as_short_values():
    from convlens.config import compose
    from convlens.run_record import run_params

    params = run_params(compose(["optimizer=sgd", "scheduler=none", "model=keras_example"]))
    assert (params["optimizer"], params["scheduler"], params["conv"]) == ("SGD", "none", "32,64,64")
    assert "strategy" not in params  # only DDP configs have one
    assert run_params(compose(["trainer=ddp"]))["strategy"] == "ddp"


def recorded_datasets(run) -> dict[str, mlflow.entities.Dataset]:
    """The run's dataset inputs by their context tag."""
    return {
        {tag.key: tag.value for tag in item.tags}.get("mlflow.data.context"): item.dataset
        for item in run.inputs.dataset_inputs
    }


def test_each_split_is_a_dataset_input_with_its_context_and_size(run, mnist_root):
    datasets = recorded_datasets(run)
    assert set(datasets) == {"training", "validation", "testing"}
    sizes = {c: json.loads(d.profile)["num_examples"] for c, d in datasets.items()}
    assert sizes == {"training": 2000, "validation": 1000, "testing": 2000}
    for dataset in datasets.values():
        assert re.fullmatch(r"[0-9a-f]{8}", dataset.digest)
        assert json.loads(dataset.source) == {"uri": str(mnist_root / "MNIST" / "raw")}
    assert len({d.digest for d in datasets.values()}) == 3


def test_train_digest_is_the_configs_and_changes_with_the_subset(client, trained, run, tmp_path):
    from omegaconf import OmegaConf

    from convlens.run_record import dataset_digests

    data = OmegaConf.load(client.download_artifacts(trained.run_id, "config.yaml", str(tmp_path)))
    digests = dataset_digests(data.data)
    recorded = {context: d.digest for context, d in recorded_datasets(run).items()}
    assert recorded == {
        "training": digests["train"],
        "validation": digests["validation"],
        "testing": digests["test"],
    }
    smaller = dataset_digests(OmegaConf.merge(data.data, {"subset": 500}))
    assert smaller["train"] != digests["train"]
    assert (smaller["validation"], smaller["test"]) == (digests["validation"], digests["test"])


def test_run_description_gives_model_accuracy_and_promotion(run):
    note = run.data.tags["mlflow.note.content"]
    assert f"{run.data.metrics['test/acc']:.4f}" in note
    assert "32,64" in note and "225,034 parameters" in note and "1 epoch" in note
    assert "promoted to champion (first model)" in note


def test_resolved_config_is_logged_as_yaml(client, trained, tmp_path):
    path = client.download_artifacts(trained.run_id, "config.yaml", str(tmp_path))
    text = Path(path).read_text()
    assert "_target_: convlens.model.ConvNet" in text and "${" not in text


def test_git_commit_is_tagged(run):
    assert re.fullmatch(r"[0-9a-f]{40}", run.data.tags["mlflow.source.git.commit"])


@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_filters_are_logged_every_epoch_from_the_untrained_network(logged_images, layer):
    assert logged_images[f"filters/{layer}"] == {0, 1}


@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_feature_maps_of_ten_fixed_digits_are_logged_every_epoch(logged_images, layer):
    for digit in range(10):
        assert logged_images[f"feature_maps/{layer}/digit_{digit}"] == {0, 1}


@pytest.mark.parametrize(
    "artifact",
    ["evaluation/confusion_matrix.png", "evaluation/misclassified.png", "model_summary.txt"],
)
def test_end_of_training_artifact_is_logged(client, trained, artifact):
    folder = str(Path(artifact).parent) if "/" in artifact else None
    assert artifact in {a.path for a in client.list_artifacts(trained.run_id, folder)}


def test_confusion_matrix_counts_the_whole_test_split(client, trained, tmp_path):
    path = client.download_artifacts(
        trained.run_id, "evaluation/confusion_matrix.json", str(tmp_path)
    )
    import json

    matrix = np.array(json.loads(Path(path).read_text())["matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 2000


def test_model_summary_matches_the_tutorial(client, trained, tmp_path):
    path = client.download_artifacts(trained.run_id, "model_summary.txt", str(tmp_path))
    assert "Total params: 225,034" in Path(path).read_text()


def test_pytorch_flavor_loads_the_eager_module_with_named_layers(client):
    net = mlflow.pytorch.load_model(f"models:/{MODEL_NAME}@champion")
    assert isinstance(net, ConvNet)
    assert net.layer_names[:4] == ["conv1", "pool1", "conv2", "pool2"]


def test_pyfunc_predicts_the_same_labels_as_the_in_memory_model(client, test_batch):
    images, _ = test_batch
    eager = mlflow.pytorch.load_model(f"models:/{MODEL_NAME}@champion").eval()
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    logits = pyfunc.predict(images.numpy().astype(np.float32))
    with torch.inference_mode():
        expected = eager(images).argmax(1).numpy()
    assert np.array_equal(np.asarray(logits).argmax(1), expected)


def test_safetensors_weights_rebuild_the_model_without_pickle(
    client, trained, test_batch, tmp_path
):
    from safetensors.torch import load_file

    folder = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{MODEL_NAME}@champion", dst_path=str(tmp_path)
        )
    )
    import json

    net = ConvNet(**json.loads((folder / "extra_files" / "architecture.json").read_text()))
    net.load_state_dict(load_file(folder / "extra_files" / "model.safetensors"))
    eager = mlflow.pytorch.load_model(f"models:/{MODEL_NAME}@champion").eval()
    images, _ = test_batch
    with torch.inference_mode():
        assert torch.allclose(net.eval()(images), eager(images), atol=1e-5)


def test_registered_version_carries_the_weights_sha256(client, trained, tmp_path):
    version = client.get_model_version(MODEL_NAME, trained.version)
    folder = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{MODEL_NAME}@champion", dst_path=str(tmp_path)
        )
    )
    digest = hashlib.sha256((folder / "extra_files" / "model.safetensors").read_bytes()).hexdigest()
    assert version.tags["weights_sha256"] == digest


def test_first_model_becomes_champion_and_the_decision_is_recorded(client, run, trained):
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert version.version == trained.version and version.run_id == trained.run_id
    assert version.tags["promotion.decision"] == "promoted"
    assert run.data.tags["promotion.decision"] == "promoted"


def test_checkpoints_load_with_weights_only(trained):
    checkpoints = list(trained.workdir.glob("outputs/**/checkpoints/*.ckpt"))
    assert checkpoints
    for path in checkpoints:
        torch.load(path, map_location="cpu", weights_only=True)
