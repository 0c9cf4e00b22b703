"""Promotion: the champion alias moves only to a better model, unless the policy says otherwise."""

import uuid

import pytest
from mlflow import MlflowClient

from convlens.registry import champion, promote, register


@pytest.fixture()
def registry(trained):
    """A fresh registered-model name in the real store, and a factory of real model versions."""
    client = MlflowClient(trained.tracking_uri)
    name = f"registry-test-{uuid.uuid4().hex[:8]}"
    source = client.get_model_version("convlens-mnist", trained.version).source
    experiment_id = client.get_run(trained.run_id).info.experiment_id

    def new_version(acc: float):
        run = client.create_run(experiment_id)
        version = register(client, name, source, run.info.run_id, {"test_acc": f"{acc:.6f}"})
        return version, acc

    return client, name, new_version


def test_first_model_takes_champion(registry):
    client, name, new_version = registry
    version, acc = new_version(0.95)
    assert promote(client, name, version, acc, "better").promoted
    assert champion(client, name).version == version.version


def test_worse_model_does_not_take_champion(registry):
    client, name, new_version = registry
    best, best_acc = new_version(0.99)
    promote(client, name, best, best_acc, "better")
    worse, worse_acc = new_version(0.90)
    decision = promote(client, name, worse, worse_acc, "better")
    assert not decision.promoted
    assert champion(client, name).version == best.version


def test_better_model_takes_champion(registry):
    client, name, new_version = registry
    first, first_acc = new_version(0.97)
    promote(client, name, first, first_acc, "better")
    better, better_acc = new_version(0.99)
    assert promote(client, name, better, better_acc, "better").promoted
    assert champion(client, name).version == better.version


def test_equal_accuracy_does_not_take_champion(registry):
    client, name, new_version = registry
    first, acc = new_version(0.98)
    promote(client, name, first, acc, "better")
    twin, _ = new_version(0.98)
    assert not promote(client, name, twin, acc, "better").promoted


def test_promote_always_takes_champion_even_when_worse(registry):
    client, name, new_version = registry
    best, best_acc = new_version(0.99)
    promote(client, name, best, best_acc, "better")
    worse, worse_acc = new_version(0.50)
    assert promote(client, name, worse, worse_acc, "always").promoted
    assert champion(client, name).version == worse.version


def test_promote_never_leaves_the_alias_alone(registry):
    client, name, new_version = registry
    version, acc = new_version(0.99)
    assert not promote(client, name, version, acc, "never").promoted
    assert champion(client, name) is None


def test_decision_and_both_accuracies_are_tagged_on_version_and_run(registry):
    client, name, new_version = registry
    best, best_acc = new_version(0.99)
    promote(client, name, best, best_acc, "better")
    worse, worse_acc = new_version(0.90)
    promote(client, name, worse, worse_acc, "better")
    tags = client.get_model_version(name, worse.version).tags
    assert tags["promotion.decision"] == "kept"
    assert float(tags["promotion.candidate_test_acc"]) == pytest.approx(0.90)
    assert float(tags["promotion.champion_test_acc"]) == pytest.approx(0.99)
    assert client.get_run(worse.run_id).data.tags["promotion.decision"] == "kept"


def test_registering_a_run_twice_returns_the_same_version(registry):
    client, name, new_version = registry
    version, _ = new_version(0.9)
    again = register(client, name, version.source, version.run_id, {})
    assert again.version == version.version


def test_unknown_policy_is_refused(registry):
    client, name, new_version = registry
    version, acc = new_version(0.9)
    with pytest.raises(ValueError, match="always, better, never"):
        promote(client, name, version, acc, "sometimes")
