"""The MLflow champion into the BentoML model store, and the Bento that deploys it.

Only the safetensors weights and the architecture JSON are copied, never the pickled MLflow
model: serving rebuilds the network from them and checks the weights' sha256 against the one
registered with the version. A model's tag in the BentoML store names its registered version
and weights (`convlens-mnist:v3-<sha256 prefix>`), so `make serve` can tell whether the store
already holds the champion as it is now, and no two MLflow stores' version 3 clash.

Call `Settings.use_bentoml_home()` before this module imports `bentoml`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient

from convlens import UserError
from convlens.artifact import (
    ARCHITECTURE_FILE,
    EMBEDDING_SAMPLE_FILE,
    FILES,
    MODEL_ENV,
    OPTIONAL_FILES,
    TEST_ACC,
    WEIGHTS_FILE,
    WEIGHTS_SHA256,
    Label,
    download_files,
    sha256_of,
)
from convlens.config import REPO, Settings
from convlens.registry import CHAMPION, champion
from convlens.store import TAG, record, run_page

BENTOFILE = REPO / "serving" / "bentofile.yaml"
SERVICE = "serving.service:ConvLens"
SERVING_GROUP = "serving"  # pyproject.toml's dependency group the Bento installs


class PackageError(UserError):
    """Something the user has to fix first (no store, no champion, altered weights)."""


@dataclass(frozen=True)
class Champion:
    name: str
    version: str
    run_id: str
    run_url: str
    test_acc: str
    weights_sha256: str

    @property
    def bento_tag(self) -> str:
        return f"{self.name}:v{self.version}-{self.weights_sha256[:12]}"


def find_champion(client: MlflowClient, settings: Settings) -> Champion:
    """The version `@champion` points at now, with the tags training registered on it."""
    name = settings.model_name
    version = champion(client, name)
    if version is None:
        raise PackageError(
            f"{name} has no @{CHAMPION} in {client.tracking_uri}: run `make train` first"
        )
    if WEIGHTS_SHA256 not in version.tags:
        raise PackageError(f"{name} v{version.version} has no {WEIGHTS_SHA256} tag to verify")
    run_url = ""
    if version.run_id:
        run = client.get_run(version.run_id)
        run_url = run_page(
            client.tracking_uri, settings.mlflow_ui, run.info.experiment_id, version.run_id
        )
    return Champion(
        name=name,
        version=str(version.version),
        run_id=version.run_id or "",
        run_url=run_url,
        test_acc=version.tags.get(TEST_ACC, ""),
        weights_sha256=version.tags[WEIGHTS_SHA256],
    )


def stored_model(tag: str) -> Any | None:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return bentoml.models.get(tag)
    except NotFound:
        return None


def import_champion(client: MlflowClient, champ: Champion) -> tuple[str, bool]:
    """Copy the champion into the BentoML model store unless it holds that exact version;
    returns (tag, whether it was imported now)."""
    import bentoml

    if stored_model(champ.bento_tag) is not None:
        return champ.bento_tag, False
    # The version's own artifact location, not the alias, which may move meanwhile.
    location = client.get_model_version_download_uri(champ.name, champ.version)
    with download_files(location, client.tracking_uri) as files:
        digest = sha256_of(files / WEIGHTS_FILE)
        if digest != champ.weights_sha256:
            raise PackageError(
                f"{champ.name} v{champ.version}: {WEIGHTS_FILE} has sha256 {digest}, "
                f"the registered version says {champ.weights_sha256}"
            )
        labels = {
            Label.MODEL: champ.name,
            Label.VERSION: champ.version,
            Label.RUN_ID: champ.run_id,
            Label.RUN_URL: champ.run_url,
            Label.TEST_ACC: champ.test_acc,
            Label.WEIGHTS_SHA256: champ.weights_sha256,
        }
        metadata = {
            "source": f"models:/{champ.name}/{champ.version}",
            "test_accuracy": float(champ.test_acc) if champ.test_acc else None,
            "architecture": json.loads((files / ARCHITECTURE_FILE).read_text()),
            "files": list(FILES),
        }
        extras = [name for name in OPTIONAL_FILES if (files / name).exists()]
        metadata["optional_files"] = extras
        with bentoml.models.create(champ.bento_tag, labels=labels, metadata=metadata) as model:
            for name in FILES + tuple(extras):
                shutil.copyfile(files / name, model.path_of(name))
            add_embedding_map(files, Path(model.path))
    return champ.bento_tag, True


def add_embedding_map(files: Path, folder: Path) -> Path | None:
    """The served model's t-SNE map of the logged embedding sample (`convlens.embedding`),
    computed once, here, into the BentoML model's `EMBEDDING_FILE`; None for a model logged
    before the sample existed (the service then says the map is missing)."""
    if not (files / EMBEDDING_SAMPLE_FILE).exists():
        return None
    from convlens.embedding import Sample, build_map
    from convlens.weights import load_weights

    net = load_weights(files)
    return build_map(net, Sample.load(files / EMBEDDING_SAMPLE_FILE)).save(folder)


def locked_requirements() -> list[str]:
    """The `serving` dependency group at the versions `uv.lock` holds: the Bento installs what
    the tests ran with, and nothing for training."""
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        raise PackageError("uv is needed to export the Bento's requirements from uv.lock")
    exported = subprocess.run(
        [uv, "export", "--frozen", "--only-group", SERVING_GROUP, "--no-emit-project"]
        + ["--no-hashes", "--no-header", "--no-annotate", "--quiet"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = (line.strip() for line in exported.splitlines())
    return [line for line in lines if line and not line.startswith("bentoml==")]  # BentoML adds it


def build_bento(champ: Champion, model_tag: str) -> str:
    """Build the serving Bento from `serving/bentofile.yaml` holding exactly this model."""
    import bentoml

    # The service reads its model tag at import; building imports it, so the Bento pins
    # this model rather than whichever one is `latest` in the store.
    os.environ[MODEL_ENV] = model_tag
    options = yaml.safe_load(BENTOFILE.read_text())
    labels = {**options.pop("labels", {}), Label.VERSION: champ.version, Label.RUN_ID: champ.run_id}
    python = {**options.pop("python", {}), "packages": locked_requirements()}
    bento = bentoml.bentos.build(**options, python=python, labels=labels, build_ctx=str(REPO))
    return str(bento.tag)


@dataclass(frozen=True)
class Packaged:
    champion: Champion
    model_tag: str
    imported: bool
    bento_tag: str | None  # None: not built (only the model was asked for)
    bento_built: bool = False


def package(
    client: MlflowClient, settings: Settings, build: bool = True, expected: str | None = None
) -> Packaged:
    """The champion as it is now into the store, then (with `build`) its Bento, unless the
    version records a Bento that this BentoML home still holds; records what it did.
    `expected`: the version the caller just promoted; refuse if `@champion` moved since."""
    import bentoml
    from bentoml.exceptions import NotFound

    champ = find_champion(client, settings)
    if expected is not None and champ.version != str(expected):
        raise PackageError(f"@champion moved to v{champ.version} while packaging v{expected}")
    model_tag, imported = import_champion(client, champ)
    if not build:
        return Packaged(champ, model_tag, imported, None)
    registered = client.get_model_version(champ.name, champ.version)
    recorded = registered.tags.get(TAG + "bento")
    if recorded and registered.tags.get(TAG + "bentoml_home") == settings.bentoml_home:
        try:
            bentoml.bentos.get(recorded)
            return Packaged(champ, model_tag, imported, recorded)
        except NotFound:
            pass  # deleted since: build it again
    bento_tag = build_bento(champ, model_tag)
    tags = {"bentoml_model": model_tag, "bento": bento_tag, "bentoml_home": settings.bentoml_home}
    record(client, tags, run_id=champ.run_id or None, version=registered)
    return Packaged(champ, model_tag, imported, bento_tag, bento_built=True)
