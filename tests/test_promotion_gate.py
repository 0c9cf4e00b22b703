"""The feedback gate: a challenger that beats the champion on test_acc still stays out when it
falls behind on the same feedback hold-out, and the decision says so with both figures."""

import uuid

import pytest
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from convlens.config import FeedbackGate, Settings, compose
from convlens.feedback_data import HOLDOUT
from convlens.registry import champion, promote, register
from convlens.run_record import MNISTSplit
from convlens.store import client as store_client

GATE = FeedbackGate(max_drop=0.0, min_holdout=50)
HOLDOUT_DIGEST = "0123456789abcdef"


@pytest.fixture()
def registry(tmp_path):
    """A real MLflow store and registry, and a factory of model versions whose runs carry a
    feedback/acc on a feedback hold-out dataset, as training logs them. The gate reads runs
    and tags only, so each version's model is a stand-in artifact, not a trained network."""
    client = store_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    name = f"gate-test-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment("gate", artifact_location=str(tmp_path / "art"))

    def new_version(test_acc: float, feedback_acc: float | None, digest=HOLDOUT_DIGEST, n=100):
        run_id = client.create_run(experiment_id).info.run_id
        client.log_text(run_id, "stand-in", "model/weights.txt")
        source = f"runs:/{run_id}/model"
        if feedback_acc is not None:
            client.log_metric(run_id, "feedback/acc", feedback_acc)
            holdout = MNISTSplit(LocalArtifactDatasetSource("sqlite:///f.db"), HOLDOUT, digest, n)
            context = InputTag(MLFLOW_DATASET_CONTEXT, "testing")
            client.log_inputs(run_id, [DatasetInput(holdout._to_mlflow_entity(), [context])])
        return register(client, name, source, run_id, {"test_acc": f"{test_acc:.6f}"})

    def champion_with(test_acc: float, feedback_acc: float | None, **kwargs):
        version = new_version(test_acc, feedback_acc, **kwargs)
        assert promote(client, name, version, test_acc, "better", GATE).promoted
        return version

    return client, name, new_version, champion_with


def test_challenger_behind_on_the_holdout_is_refused_with_both_figures(registry):
    client, name, new_version, champion_with = registry
    best = champion_with(0.980, 0.90)
    challenger = new_version(0.985, 0.85)
    decision = promote(client, name, challenger, 0.985, "better", GATE)
    assert not decision.promoted
    assert champion(client, name).version == best.version
    assert "0.9850" in decision.reason and "0.9800" in decision.reason  # test_acc, both
    assert "0.8500" in decision.reason and "0.9000" in decision.reason  # feedback_acc, both
    assert "falls behind" in decision.reason


def test_refusal_is_tagged_with_both_feedback_figures_on_version_and_run(registry):
    client, name, new_version, champion_with = registry
    champion_with(0.980, 0.90)
    challenger = new_version(0.985, 0.85)
    promote(client, name, challenger, 0.985, "better", GATE)
    tags = client.get_model_version(name, challenger.version).tags
    assert tags["promotion.decision"] == "kept"
    assert float(tags["promotion.candidate_feedback_acc"]) == pytest.approx(0.85)
    assert float(tags["promotion.champion_feedback_acc"]) == pytest.approx(0.90)
    assert tags["promotion.feedback_holdout"] == f"{HOLDOUT_DIGEST} (100 digits)"
    run_tags = client.get_run(challenger.run_id).data.tags
    assert run_tags["promotion.reason"] == tags["promotion.reason"]


def test_challenger_as_good_on_the_holdout_and_better_on_test_is_promoted(registry):
    client, name, new_version, champion_with = registry
    champion_with(0.980, 0.90)
    challenger = new_version(0.985, 0.90)
    decision = promote(client, name, challenger, 0.985, "better", GATE)
    assert decision.promoted
    assert "feedback_acc 0.9000 vs champion's 0.9000" in decision.reason


def test_a_drop_within_the_threshold_is_allowed(registry):
    client, name, new_version, champion_with = registry
    champion_with(0.980, 0.90)
    challenger = new_version(0.985, 0.89)
    lenient = FeedbackGate(max_drop=0.02, min_holdout=50)
    assert promote(client, name, challenger, 0.985, "better", lenient).promoted


def test_better_on_the_holdout_does_not_rescue_a_worse_test_acc(registry):
    client, name, new_version, champion_with = registry
    champion_with(0.980, 0.80)
    challenger = new_version(0.975, 0.95)
    assert not promote(client, name, challenger, 0.975, "better", GATE).promoted


def test_different_holdouts_are_not_compared_and_the_reason_says_so(registry):
    client, name, new_version, champion_with = registry
    champion_with(0.980, 0.90)
    challenger = new_version(0.985, 0.50, digest="fedcba9876543210")
    decision = promote(client, name, challenger, 0.985, "better", GATE)
    assert decision.promoted
    assert "feedback gate not applied: different hold-outs" in decision.reason


def test_a_holdout_below_the_minimum_size_is_not_compared(registry):
    client, name, new_version, champion_with = registry
    champion_with(0.980, 0.90, n=10)
    challenger = new_version(0.985, 0.50, n=10)
    decision = promote(client, name, challenger, 0.985, "better", GATE)
    assert decision.promoted
    assert "10 held-out digits, fewer than 50" in decision.reason


def test_a_challenger_trained_without_feedback_is_judged_on_test_acc_and_told(registry):
    client, name, new_version, champion_with = registry
    champion_with(0.980, 0.90)
    challenger = new_version(0.985, None)
    decision = promote(client, name, challenger, 0.985, "better", GATE)
    assert decision.promoted
    assert "the challenger has no feedback/acc" in decision.reason
    tags = client.get_model_version(name, challenger.version).tags
    assert tags["promotion.candidate_feedback_acc"] == "none"


def test_the_gate_thresholds_come_from_conf_registry():
    assert Settings.of(compose([])).feedback_gate == FeedbackGate(max_drop=0.0, min_holdout=50)
    overridden = Settings.of(compose(["registry.feedback_max_drop=0.01"]))
    assert overridden.feedback_gate.max_drop == 0.01
