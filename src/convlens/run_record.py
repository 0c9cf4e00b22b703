"""What describes a run in MLflow: its params, its datasets, its description.

Params are what tells runs apart, chosen in `conf/train.yaml` (`run_params`), because the run
page's image cards list every param above each image (MLflow 3.12+): the whole flattened
config (~107 params) pushed the filters and feature maps out of their cards. The whole config
is the run's `config.yaml`. Each split is a dataset input whose digest changes with what picks
its examples, so the run page's "Datasets" section says what the model saw. The description
(`mlflow.note.content`) is written last, once the promotion decision is known.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate
from mlflow import MlflowClient
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_RUN_NOTE
from omegaconf import DictConfig, ListConfig, OmegaConf

from convlens.data import raw_folder
from convlens.weights import load_weights

if TYPE_CHECKING:
    from convlens.registry import Registration

MAX_PARAM_CHARS = 40  # longer values are cut; config.yaml holds them whole
CONTEXTS = {
    "train": "training",
    "validation": "validation",
    "test": "testing",
    "feedback-train": "training",  # convlens.feedback_data.TRAIN
    "feedback-holdout": "testing",  # convlens.feedback_data.HOLDOUT: scored as feedback/acc
}


# ------------------------------------------------------------------ params


def conv_channels(layers: Any) -> str:
    """The conv layers' widths, "32,64": the architecture in one short value."""
    return ",".join(str(spec["out_channels"]) for spec in layers if spec.get("type") == "conv")


def model_facts(model_dir: Path) -> tuple[str, int]:
    """(conv widths, parameter count) of the model a run saved (`convlens.weights`)."""
    net = load_weights(model_dir)
    return conv_channels(net.architecture["layers"]), sum(p.numel() for p in net.parameters())


def _short(path: str, value: Any) -> str:
    if path.endswith("_target_"):  # a class path says which class: its name is enough
        return str(value).rsplit(".", 1)[-1] if value else "none"
    text = ",".join(map(str, value)) if isinstance(value, list | ListConfig) else str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 1] + "…"


def run_params(cfg: DictConfig) -> dict[str, str]:
    """`cfg.run_params` (param name: config path) as short strings, plus `conv`, the conv
    widths ("32,64"), derived from `model.layers`.

    A path the config lacks is left out (e.g. `trainer.strategy` off DDP), except a
    `_target_`, which logs as "none" (e.g. `scheduler=none`)."""
    params: dict[str, str] = {}
    for name, path in (cfg.get("run_params") or {}).items():
        value = OmegaConf.select(cfg, path, default=KeyError)
        if value is not KeyError or path.endswith("_target_"):
            params[name] = _short(path, None if value is KeyError else value)
    if cfg.get("model") and "layers" in cfg.model:
        params["conv"] = conv_channels(cfg.model.layers)
    return params


# ------------------------------------------------------------------ datasets


def file_sha256(paths: list[Path]) -> dict[str, str]:
    """sha256 of each file, by name: what the split's examples are, whoever copied them where
    (the 55 MB of MNIST hash in a fraction of a second)."""
    sums = {}
    for path in paths:
        with path.open("rb") as file:
            sums[path.name] = hashlib.file_digest(file, "sha256").hexdigest()
    return sums


class MNISTSplit(MetaDataset):
    """A split as MLflow sees it: source folder, digest, and its size as the profile."""

    def __init__(self, source: LocalArtifactDatasetSource, name: str, digest: str, examples: int):
        self._examples = examples
        super().__init__(source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, int]:
        return {"num_examples": self._examples}

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def split_datasets(data_cfg: DictConfig | Mapping) -> dict[str, MNISTSplit]:
    """One dataset per split (train, validation, test) of the configured data module.

    Digest: the split's idx files' checksums and its recipe (seeded split, subset caps,
    augmentation), so it changes exactly when the examples or what training does to them can;
    batch sizes and workers do not enter. Empty for a data module without `split_recipes`."""
    datamodule = instantiate(data_cfg)
    if not hasattr(datamodule, "split_recipes"):
        return {}
    folder = raw_folder(datamodule.hparams.root).resolve()
    source = LocalArtifactDatasetSource(str(folder))
    recipes = datamodule.split_recipes()
    names = sorted({file for recipe in recipes.values() for file in recipe["files"]})
    sums = file_sha256([folder / name for name in names])
    datasets = {}
    for split, recipe in recipes.items():
        name = f"mnist-{split}"
        files = {file: sums[file] for file in recipe["files"]}
        spec = json.dumps({"name": name, **recipe, "files": files}, sort_keys=True)
        digest = hashlib.sha256(spec.encode()).hexdigest()[:8]
        datasets[split] = MNISTSplit(source, name, digest, recipe["examples"])
    datasets.update(feedback_datasets(datamodule))
    return datasets


def feedback_datasets(datamodule: Any) -> dict[str, MNISTSplit]:
    """The feedback parts (`data.feedback=true`) as datasets named `feedback-train` and
    `feedback-holdout`, their source the store's URL (password hidden).

    The hold-out's digest is its examples' alone (sorted sha256s with labels), so two runs
    scored on the same digits share it wherever the store lives; the training part's also
    covers the hold-out rule and the oversampling, which change what training sees."""
    recipes = datamodule.feedback_recipes() if hasattr(datamodule, "feedback_recipes") else {}
    datasets = {}
    for split, recipe in recipes.items():
        source = LocalArtifactDatasetSource(recipe["source"])
        if split.endswith("holdout"):
            digest = recipe["examples_digest"]
        else:
            spec = {key: value for key, value in recipe.items() if key != "source"}
            digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        datasets[split] = MNISTSplit(source, split, digest, recipe["examples"])
    return datasets


def dataset_digests(data_cfg: DictConfig | Mapping) -> dict[str, str]:
    """Each split's digest, as `log_datasets` records it."""
    return {split: dataset.digest for split, dataset in split_datasets(data_cfg).items()}


def log_datasets(client: MlflowClient, run_id: str, data_cfg: DictConfig | Mapping) -> None:
    """Record the splits as the run's dataset inputs, tagged with their context."""
    inputs = [
        DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, CONTEXTS[s])])
        for s, dataset in split_datasets(data_cfg).items()
    ]
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


# ------------------------------------------------------------------ description


def run_description(
    *,
    conv_channels: str,
    parameters: int | str,
    epochs: int,
    test_acc: float,
    version: str | None = None,
    promoted: bool | None = None,
    reason: str | None = None,
) -> str:
    """The run in one paragraph: model, training, test accuracy, and what the registry did.

    `version`/`promoted`/`reason` come from the registration (`Registration.version.version`,
    `.decision.promoted`, `.decision.reason`); leave them None for a run not registered."""
    epochs_text = f"{epochs} epoch{'s' if int(epochs) != 1 else ''}"
    text = (
        f"CNN with conv layers of {conv_channels} filters ({int(parameters):,} parameters), "
        f"trained for {epochs_text}: test accuracy {test_acc:.4f}."
    )
    if version is None:
        return f"{text} Not registered."
    outcome = "promoted to champion" if promoted else "not promoted"
    return f"{text} Registered as version {version}, {outcome}" + (
        f" ({reason})." if reason else "."
    )


def set_run_description(client: MlflowClient, run_id: str, text: str) -> None:
    """Show `text` as the run's description on its MLflow page."""
    client.set_tag(run_id, MLFLOW_RUN_NOTE, text)


def describe_run(
    client: MlflowClient,
    run_id: str,
    model_dir: Path,
    epochs: int,
    test_acc: float,
    registration: Registration | None,
) -> str:
    """Write the run's description once training and registration are done; returns it.
    `model_dir`: where the run saved its model (`<final_dir>/model`)."""
    channels, parameters = model_facts(model_dir)
    decision = registration.decision if registration else None
    text = run_description(
        conv_channels=channels,
        parameters=parameters,
        epochs=epochs,
        test_acc=test_acc,
        version=registration.version.version if registration else None,
        promoted=decision.promoted if decision else None,
        reason=decision.reason if decision else None,
    )
    set_run_description(client, run_id, text)
    return text
