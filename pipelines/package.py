"""`make package`: the MLflow champion into the BentoML model store, then a Bento to deploy.

    python -m pipelines.package              import models:/convlens-mnist@champion, build a Bento
    python -m pipelines.package --no-build   only import the model (what `make serve` needs)
    python -m pipelines.package --if-empty   do nothing if the store holds any convlens-mnist model

The MLflow store is MLFLOW_TRACKING_URI, default sqlite:///<repo>/mlflow.db (as for training);
the BentoML home is BENTOML_HOME, default <repo>/bentoml. Only the safetensors weights and the
architecture JSON are copied, never the pickled MLflow model: serving rebuilds the network from
them and checks the weights' sha256 against the one registered with the version.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from convlens import UserError

# The two files training logs with the MLflow model; the BentoML model keeps their names.
from convlens.weights import ARCHITECTURE_FILE, WEIGHTS_FILE, sha256_of

REPO = Path(__file__).resolve().parents[1]
BENTOFILE = REPO / "serving" / "bentofile.yaml"
REGISTRY_CONF = REPO / "conf" / "registry" / "default.yaml"


class PackageError(UserError):
    """Something the user has to fix first (no store, no champion, altered weights)."""


@dataclass(frozen=True)
class Champion:
    name: str
    version: str
    run_id: str
    test_acc: str
    weights_sha256: str

    @property
    def bento_tag(self) -> str:
        """The model's tag in the BentoML store, `convlens-mnist:v3-<sha256 prefix>`: one entry
        per registered version, and no clash when another MLflow store has a version with the
        same number."""
        return f"{self.name}:v{self.version}-{self.weights_sha256[:12]}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO}/mlflow.db"


def registered_name() -> str:
    return yaml.safe_load(REGISTRY_CONF.read_text())["name"]


def use_defaults() -> None:
    """The repo's BentoML home unless BENTOML_HOME says otherwise (set before bentoml loads),
    and no usage reporting to BentoML unless BENTOML_DO_NOT_TRACK says otherwise."""
    os.environ.setdefault("BENTOML_HOME", str(REPO / "bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def find_champion(uri: str, name: str) -> Champion:
    """The version the `champion` alias points at, with the tags training registered on it."""
    from mlflow import MlflowClient

    from convlens.registry import CHAMPION, champion

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise PackageError(f"no MLflow store at {uri}: run `make train` first")
    version = champion(MlflowClient(uri, registry_uri=uri), name)
    if version is None:
        raise PackageError(f"{name} has no @{CHAMPION} in {uri}: run `make train` first")
    if "weights_sha256" not in version.tags:
        raise PackageError(f"{name} v{version.version} has no weights_sha256 tag to verify")
    return Champion(
        name=name,
        version=str(version.version),
        run_id=version.run_id or "",
        test_acc=version.tags.get("test_acc", ""),
        weights_sha256=version.tags["weights_sha256"],
    )


def download_model_files(champ: Champion, uri: str, dst: Path) -> Path:
    """The weights and architecture files of that exact version (not the alias, which may
    move meanwhile), checked against the registered digest."""
    import mlflow
    from mlflow import MlflowClient

    # The version's own artifact location: a `models:/` URI would be resolved against the
    # default registry, not necessarily `uri`.
    location = MlflowClient(uri, registry_uri=uri).get_model_version_download_uri(
        champ.name, champ.version
    )
    folder = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{location.rstrip('/')}/extra_files", dst_path=str(dst), tracking_uri=uri
    )
    folder = Path(folder)
    digest = sha256_of(folder / WEIGHTS_FILE)
    if digest != champ.weights_sha256:
        raise PackageError(
            f"{champ.name} v{champ.version}: {WEIGHTS_FILE} has sha256 {digest}, "
            f"the registered version says {champ.weights_sha256}"
        )
    return folder


def stored_model(tag: str) -> Any | None:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return bentoml.models.get(tag)
    except NotFound:
        return None


def import_champion(champ: Champion, uri: str) -> tuple[str, bool]:
    """Copy the champion into the BentoML model store; returns (tag, whether it was new)."""
    import bentoml

    if stored_model(champ.bento_tag) is not None:
        return champ.bento_tag, False
    with tempfile.TemporaryDirectory() as tmp:
        files = download_model_files(champ, uri, Path(tmp))
        architecture = json.loads((files / ARCHITECTURE_FILE).read_text())
        labels = {
            "mlflow_model": champ.name,
            "mlflow_version": champ.version,
            "mlflow_run_id": champ.run_id,
            "test_acc": champ.test_acc,
            "weights_sha256": champ.weights_sha256,
        }
        metadata = {
            "source": f"models:/{champ.name}/{champ.version}",
            "test_accuracy": float(champ.test_acc) if champ.test_acc else None,
            "architecture": architecture,
            "files": [WEIGHTS_FILE, ARCHITECTURE_FILE],
        }
        with bentoml.models.create(champ.bento_tag, labels=labels, metadata=metadata) as model:
            for name in (WEIGHTS_FILE, ARCHITECTURE_FILE):
                shutil.copyfile(files / name, model.path_of(name))
    return champ.bento_tag, True


def build_bento(champ: Champion, model_tag: str) -> str:
    """Build the serving Bento from `serving/bentofile.yaml` holding exactly this model."""
    import bentoml

    # The service reads its model tag at import; building imports it, so the Bento pins
    # this model rather than whichever one is `latest` in the store.
    os.environ["CONVLENS_MODEL"] = model_tag
    bento = bentoml.bentos.build_bentofile(
        str(BENTOFILE),
        build_ctx=str(REPO),
        labels={"mlflow_version": champ.version, "mlflow_run_id": champ.run_id},
    )
    return str(bento.tag)


def store_is_empty(name: str) -> bool:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return not bentoml.models.list(name)
    except NotFound:  # what BentoML answers when it has never seen the name
        return True


def package(build: bool = True, if_empty: bool = False) -> None:
    use_defaults()
    name = registered_name()
    home = os.environ["BENTOML_HOME"]
    if if_empty and not store_is_empty(name):
        print(f"the BentoML store ({home}) already holds a {name} model; not packaging")
        return
    uri = tracking_uri()
    champ = find_champion(uri, name)
    print(
        f"champion   {champ.name} v{champ.version} "
        f"(run {champ.run_id}, test acc {champ.test_acc or 'unknown'})"
    )
    tag, created = import_champion(champ, uri)
    if created:
        print(f"model      {tag}: imported into {home}")
    else:
        print(f"model      {tag}: already in {home}, v{champ.version} not imported again")
    if build:
        bento = build_bento(champ, tag)
        print(f"bento      {bento}: `make containerize` makes it a Docker image")
    print(f"serve it   make serve MODEL={tag}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true", help="only import the model")
    parser.add_argument(
        "--if-empty", action="store_true", help="skip if the store holds any model of that name"
    )
    args = parser.parse_args(argv)
    try:
        package(build=not args.no_build, if_empty=args.if_empty)
    except PackageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
