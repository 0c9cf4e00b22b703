"""The feedback gate: a challenger that beats the champion on test_acc still stays out when it
falls behind on the users' held-out digits, both models scored on them at promotion, and the
decision says so with both figures."""

import uuid

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from convlens.artifact import TEST_ACC, WEIGHTS_SHA256, log_model
from convlens.config import FeedbackGate, Settings, compose
from convlens.feedback import FeedbackStore, sha256_of
from convlens.feedback_data import held_out, split
from convlens.registry import champion, promote, register
from convlens.store import client as store_client
from convlens.weights import save_weights

EVERY = 5  # data.feedback_holdout's default
HOLDOUT = {3: 60, 5: 40}  # held-out digits per label: "always 3" scores 0.6, "always 5" 0.4


def always(label: int) -> torch.nn.Module:
    """The default network with weights that answer `label` for every input."""
    net = instantiate(compose([]).model, _convert_="all")
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
        net.fc2.bias[label] = 1.0
    return net


def fill_store(url: str, per_label: dict[int, int]) -> None:
    """Held-out digits with these labels; the digits the 1-in-EVERY rule keeps for training
    in between are stored as 0s, and never count."""
    store = FeedbackStore(url)
    wanted = [label for label, n in per_label.items() for _ in range(n)]
    i = 0
    while wanted:
        original = f"photo {i}".encode()
        label = wanted.pop() if held_out(sha256_of(original), EVERY) else 0
        store.add(original, np.zeros((28, 28), np.uint8), label, None, None)
        i += 1
    store.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Two logged models, "always 3" and "always 5", in a real MLflow store; each test
    registers versions of them under a registered model of its own."""
    root = tmp_path_factory.mktemp("gate")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = store_client(uri)
    experiment_id = client.create_experiment("gate", artifact_location=str(root / "art"))
    logged = {}
    for label in (3, 5):
        run_id = client.create_run(experiment_id).info.run_id
        sha = save_weights(always(label), root / f"always{label}")
        logged[label] = (log_model(uri, run_id, root / f"always{label}"), sha)
        client.set_terminated(run_id)
    return {"client": client, "experiment_id": experiment_id, "logged": logged}


@pytest.fixture()
def registry(models, tmp_path):
    """(client, model name, gate on a fresh store, new_version(label, test_acc), champion_with)."""
    client, logged = models["client"], models["logged"]
    name = f"gate-test-{uuid.uuid4().hex[:8]}"
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    gate = FeedbackGate(max_drop=0.0, min_holdout=50, store_url=url, every=EVERY)

    def new_version(label: int, test_acc: float):
        run_id = client.create_run(models["experiment_id"]).info.run_id
        model_uri, sha = logged[label]
        tags = {TEST_ACC: f"{test_acc:.6f}", WEIGHTS_SHA256: sha}
        return register(client, name, model_uri, run_id, tags)

    def champion_with(label: int, test_acc: float):
        version = new_version(label, test_acc)
        assert promote(client, name, version, test_acc, "better", gate).promoted
        return version

    return client, name, gate, new_version, champion_with


def test_challenger_behind_on_the_holdout_is_refused_with_both_figures(registry):
    client, name, gate, new_version, champion_with = registry
    fill_store(gate.store_url, HOLDOUT)
    best = champion_with(3, 0.980)
    decision = promote(client, name, new_version(5, 0.985), 0.985, "better", gate)
    assert not decision.promoted
    assert champion(client, name).version == best.version
    assert "0.9850" in decision.reason and "0.9800" in decision.reason  # test_acc, both
    assert "0.4000" in decision.reason and "0.6000" in decision.reason  # feedback_acc, both
    assert "falls behind" in decision.reason and "100 held-out digits" in decision.reason


def test_refusal_is_tagged_with_both_feedback_figures_on_version_and_run(registry):
    client, name, gate, new_version, champion_with = registry
    fill_store(gate.store_url, HOLDOUT)
    champion_with(3, 0.980)
    challenger = new_version(5, 0.985)
    promote(client, name, challenger, 0.985, "better", gate)
    tags = client.get_model_version(name, challenger.version).tags
    assert tags["promotion.decision"] == "kept"
    assert float(tags["promotion.candidate_feedback_acc"]) == pytest.approx(0.4)
    assert float(tags["promotion.champion_feedback_acc"]) == pytest.approx(0.6)
    holdout = split(FeedbackStore(gate.store_url).examples(), EVERY).holdout
    assert tags["promotion.feedback_holdout"] == f"{holdout.digest()} (100 digits)"
    run_tags = client.get_run(challenger.run_id).data.tags
    assert run_tags["promotion.reason"] == tags["promotion.reason"]


def test_the_scores_are_the_models_own_not_a_logged_metric(registry):
    """Neither run logged feedback/acc (a champion trained before any feedback has none); a
    figure logged on the challenger's run is not what decides."""
    client, name, gate, new_version, champion_with = registry
    fill_store(gate.store_url, HOLDOUT)
    champion_with(3, 0.980)
    challenger = new_version(5, 0.985)
    client.log_metric(challenger.run_id, "feedback/acc", 0.99)
    decision = promote(client, name, challenger, 0.985, "better", gate)
    assert not decision.promoted
    assert decision.candidate_feedback.acc == pytest.approx(0.4)


def test_challenger_as_good_on_the_holdout_and_better_on_test_is_promoted(registry):
    client, name, gate, new_version, champion_with = registry
    fill_store(gate.store_url, HOLDOUT)
    champion_with(3, 0.980)
    decision = promote(client, name, new_version(3, 0.985), 0.985, "better", gate)
    assert decision.promoted
    assert "feedback_acc 0.6000 vs the champion's 0.6000 on 100 held-out digits" in decision.reason


def test_a_drop_within_the_threshold_is_allowed(registry):
    client, name, gate, new_version, champion_with = registry
    fill_store(gate.store_url, HOLDOUT)
    champion_with(3, 0.980)
    lenient = FeedbackGate(0.25, gate.min_holdout, gate.store_url, gate.every)
    assert promote(client, name, new_version(5, 0.985), 0.985, "better", lenient).promoted


def test_better_on_the_holdout_does_not_rescue_a_worse_test_acc(registry):
    client, name, gate, new_version, champion_with = registry
    fill_store(gate.store_url, HOLDOUT)
    champion_with(5, 0.980)
    assert not promote(client, name, new_version(3, 0.975), 0.975, "better", gate).promoted


def test_a_holdout_below_the_minimum_size_is_not_compared_and_the_reason_says_so(registry):
    client, name, gate, new_version, champion_with = registry
    fill_store(gate.store_url, {3: 6, 5: 4})
    champion_with(3, 0.980)
    challenger = new_version(5, 0.985)
    decision = promote(client, name, challenger, 0.985, "better", gate)
    assert decision.promoted
    assert "10 held-out digits in the feedback store, fewer than 50" in decision.reason
    tags = client.get_model_version(name, challenger.version).tags
    assert tags["promotion.candidate_feedback_acc"] == "none"


def test_without_a_feedback_store_test_acc_decides_and_no_store_is_created(registry, tmp_path):
    client, name, gate, new_version, champion_with = registry
    champion_with(3, 0.980)
    decision = promote(client, name, new_version(5, 0.985), 0.985, "better", gate)
    assert decision.promoted
    assert "feedback gate not applied: no feedback store at" in decision.reason
    assert not (tmp_path / "feedback.db").exists()


def test_an_unreachable_store_is_named_in_the_reason_without_its_password(registry):
    client, name, gate, new_version, champion_with = registry
    champion_with(3, 0.980)
    down = FeedbackGate(0.0, 50, "postgresql+psycopg2://convlens:s3cret@127.0.0.1:9/feedback")
    decision = promote(client, name, new_version(5, 0.985), 0.985, "better", down)
    assert decision.promoted
    assert "cannot be read" in decision.reason and "127.0.0.1:9" in decision.reason
    assert "s3cret" not in decision.reason


def test_the_gate_comes_from_conf_registry_with_the_stores_url_and_holdout_rule():
    cfg = compose([])
    assert Settings.of(cfg).feedback_gate == FeedbackGate(
        max_drop=0.0, min_holdout=50, store_url=cfg.paths.feedback_url, every=EVERY
    )
    overridden = Settings.of(
        compose(["registry.feedback_max_drop=0.01", "data.feedback_holdout=3"])
    )
    assert overridden.feedback_gate.max_drop == 0.01
    assert overridden.feedback_gate.every == 3
