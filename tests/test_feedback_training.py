"""Training on what users taught back: `data.feedback=true` mixes the stored digits in, keeps a
stable hold-out by sha256, records both as MLflow datasets and scores the hold-out."""

import hashlib
import json

import pytest
import torch
from mlflow import MlflowClient

from convlens.data import MNISTDataModule
from convlens.feedback import FeedbackStore
from convlens.feedback_data import HOLDOUT, TRAIN, held_out, load_examples, split
from tests.conftest import run_train, with_store
from tests.harness import mnist_test_set, png_bytes

FIRST = 5000  # MNIST test digits from here on play the users' digits: smoke tests on 0-1999
DIGITS = 200


def fill(url: str, start: int = FIRST, count: int = DIGITS) -> FeedbackStore:
    """A real feedback store holding real MNIST digits, added as the service adds them."""
    images, labels = mnist_test_set()
    store = FeedbackStore(url)
    for i in range(start, start + count):
        store.add(png_bytes(images[i]), images[i].copy(), int(labels[i]), None, "1")
    return store


@pytest.fixture(scope="module")
def feedback_url(tmp_path_factory, mnist_root) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('feedback') / 'feedback.db'}"
    fill(url)
    return url


def expected_digest(examples) -> str:
    """The spec of the hold-out digest: its sorted sha256s with their labels."""
    lines = "".join(f"{e.sha256}:{e.label}\n" for e in sorted(examples, key=lambda e: e.sha256))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def test_the_same_sha256_always_lands_on_the_same_side(feedback_url):
    examples = load_examples(feedback_url)
    early = split(examples[:80], every=5)
    later = split(examples, every=5)
    assert set(early.holdout.sha256) <= set(later.holdout.sha256)
    assert set(early.train.sha256) <= set(later.train.sha256)
    assert all(held_out(sha, 5) for sha in later.holdout.sha256)


def test_about_one_in_five_is_held_out_and_none_is_trained_on(feedback_url):
    found = split(load_examples(feedback_url), every=5)
    assert 20 <= len(found.holdout) <= 60
    assert len(found.holdout) + len(found.train) == DIGITS
    assert not set(found.holdout.sha256) & set(found.train.sha256)


def test_training_split_holds_the_feedback_digits_repeated(feedback_url, mnist_root):
    dm = MNISTDataModule(
        root=str(mnist_root), download=False, subset=300, feedback=True,
        feedback_url=feedback_url, feedback_repeat=3,
    )  # fmt: skip
    dm.setup()
    found = dm.feedback_split()
    assert len(dm.train_set) == 300 + 3 * len(found.train)
    assert torch.equal(dm.train_set.images[300 : 300 + len(found.train)], found.train.images)
    assert torch.equal(dm.feedback_set.images, found.holdout.images)
    assert len(dm.test_dataloader()) == 2


def test_feedback_off_changes_nothing(mnist_root):
    dm = MNISTDataModule(root=str(mnist_root), download=False, subset=300)
    dm.setup()
    assert len(dm.train_set) == 300 and dm.feedback_set is None
    assert not isinstance(dm.test_dataloader(), list)


@pytest.fixture(scope="module")
def feedback_run(tmp_path_factory, feedback_url, mnist_root):
    workdir = with_store(tmp_path_factory.mktemp("feedback-run"))
    result = run_train(
        workdir,
        "experiment=smoke",
        "data.subset=1000",
        "data.feedback=true",
        env={"CONVLENS_FEEDBACK_URL": feedback_url},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run


def datasets_of(run) -> dict:
    return {i.dataset.name: i for i in run.inputs.dataset_inputs}


def test_training_with_feedback_logs_feedback_acc_next_to_test_acc(feedback_run):
    metrics = feedback_run.data.metrics
    assert 0.0 <= metrics["feedback/acc"] <= 1.0
    assert "test/acc" in metrics
    assert not any("dataloader_idx" in name for name in metrics)


def test_training_with_feedback_records_both_parts_as_datasets(feedback_run, feedback_url):
    found = split(load_examples(feedback_url), every=5)
    inputs = datasets_of(feedback_run)
    holdout, train = inputs[HOLDOUT], inputs[TRAIN]
    assert holdout.dataset.digest == expected_digest(
        [e for e in load_examples(feedback_url) if held_out(e.sha256, 5)]
    )
    assert json.loads(holdout.dataset.profile)["num_examples"] == len(found.holdout)
    assert json.loads(train.dataset.profile)["num_examples"] == len(found.train)
    contexts = {i.dataset.name: i.tags[0].value for i in feedback_run.inputs.dataset_inputs}
    assert contexts[HOLDOUT] == "testing" and contexts[TRAIN] == "training"
    assert {"mnist-train", "mnist-validation", "mnist-test"} <= set(inputs)


def test_training_without_feedback_has_no_feedback_dataset_or_metric(trained):
    run = MlflowClient(trained.tracking_uri).get_run(trained.run_id)
    assert "feedback/acc" not in run.data.metrics
    assert not {HOLDOUT, TRAIN} & set(datasets_of(run))


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


def test_an_empty_store_is_a_one_line_error_naming_the_fix(tmp_path, mnist_root):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    FeedbackStore(url)  # the table exists, no rows
    result = run_train(
        tmp_path, "experiment=smoke", "data.feedback=true", env={"CONVLENS_FEEDBACK_URL": url}
    )
    line = one_line_error(result)
    assert "holds no examples" in line and "data.feedback=false" in line


def test_a_missing_store_is_a_one_line_error_naming_the_setting(tmp_path, mnist_root):
    url = f"sqlite:///{tmp_path / 'nowhere' / 'feedback.db'}"
    result = run_train(
        tmp_path, "experiment=smoke", "data.feedback=true", env={"CONVLENS_FEEDBACK_URL": url}
    )
    line = one_line_error(result)
    assert "no feedback store at" in line and "CONVLENS_FEEDBACK_URL" in line
