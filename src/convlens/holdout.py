"""The feedback gate's evidence: challenger and champion scored on the same user digits, now.

Each run logs `feedback/acc` on the hold-out it saw, but the hold-out grows as users send
corrections, so two runs' logged figures are rarely on the same digits, and a champion
trained before any feedback has none. So at promotion both models are rebuilt from the
registry and scored on the store's current hold-out: the digits that `held_out` keeps out of
every training run (`data.feedback_holdout`), whatever either model was trained with. Like
with like, every time the store has enough of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from convlens.artifact import WEIGHTS_SHA256, load_logged_net
from convlens.config import FeedbackGate
from convlens.feedback_data import (
    FeedbackPart,
    NoStore,
    StoreUnreadable,
    read_examples,
    redacted,
    split,
)
from convlens.preprocessing import normalize


@dataclass(frozen=True)
class HoldoutScore:
    """A model's accuracy on the feedback hold-out, and which digits those were."""

    acc: float
    digest: str
    examples: int

    def __str__(self) -> str:
        return f"{self.acc:.4f} on {self.examples} held-out digits ({self.digest})"


@dataclass(frozen=True)
class Comparison:
    """Both scores on one hold-out, or why there are none (`why`)."""

    candidate: HoldoutScore | None
    champion: HoldoutScore | None
    why: str = ""


def current_holdout(gate: FeedbackGate) -> FeedbackPart | str:
    """The store's hold-out digits, or why there are none to score on."""
    url = gate.store_url
    if not url:
        return "no feedback store is configured (paths.feedback_url)"
    try:
        examples = read_examples(url)
    except NoStore:
        return f"no feedback store at {redacted(url)} yet"
    except StoreUnreadable as error:
        return f"the feedback store at {redacted(url)} cannot be read ({error})"
    holdout = split(examples, gate.every).holdout
    if len(holdout) < gate.min_holdout:
        return (
            f"{len(holdout)} held-out digits in the feedback store, fewer than {gate.min_holdout}"
        )
    return holdout


def accuracy(net: torch.nn.Module, part: FeedbackPart) -> float:
    with torch.inference_mode():
        predicted = net.eval()(normalize(part.images)).argmax(1)
    return float((predicted == part.labels).float().mean())


def score(client: MlflowClient, version: ModelVersion, part: FeedbackPart) -> HoldoutScore:
    """The registered version's model, rebuilt from its files (weights checked), on `part`."""
    location = client.get_model_version_download_uri(version.name, version.version)
    net = load_logged_net(client, location, version.tags.get(WEIGHTS_SHA256))
    return HoldoutScore(accuracy(net, part), part.digest(), len(part))


def compare(
    client: MlflowClient, gate: FeedbackGate, candidate: ModelVersion, champion: ModelVersion
) -> Comparison:
    """Score both versions on the current hold-out, or say why the gate cannot apply."""
    found = current_holdout(gate)
    if isinstance(found, str):
        return Comparison(None, None, f"feedback gate not applied: {found}")
    return Comparison(score(client, candidate, found), score(client, champion, found))


def verdict(gate: FeedbackGate, comparison: Comparison) -> tuple[bool, str]:
    """(whether the challenger falls behind on the hold-out, the figures or why not counted)."""
    ours, theirs = comparison.candidate, comparison.champion
    if ours is None or theirs is None:
        return False, comparison.why
    drop = theirs.acc - ours.acc
    if drop > gate.max_drop:
        return True, (
            f"feedback_acc {ours.acc:.4f} falls behind the champion's {theirs.acc:.4f} by "
            f"{drop:.4f} (more than {gate.max_drop}) on {ours.examples} held-out digits"
        )
    return False, (
        f"feedback_acc {ours.acc:.4f} vs the champion's {theirs.acc:.4f} on "
        f"{ours.examples} held-out digits"
    )
