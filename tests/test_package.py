"""`make package`: the registry's champion into the BentoML store, and a serving-only Bento."""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow import MlflowClient

from convlens.artifact import EMBEDDING_FILE, FILES, OPTIONAL_FILES
from tests.conftest import MODEL_NAME, REPO
from tests.serving_fixtures import bentoml_env, run_package

pytest_plugins = ["tests.serving_fixtures"]

SERVING_MODULES = {
    "serving/__init__.py",
    "serving/bentoml_private.py",
    "serving/errors.py",
    "serving/feedback_intake.py",
    "serving/inference.py",
    "serving/loading.py",
    "serving/middleware.py",
    "serving/monitoring.py",
    "serving/insights.py",
    "serving/model_card.py",
    "serving/openapi.py",
    "serving/rendering.py",
    "serving/request_flow.py",
    "serving/schemas.py",
    "serving/service.py",
    "serving/settings.py",
    "serving/shortcut.py",
    "serving/traffic.py",
    "serving/ui_app.py",
    "convlens/__init__.py",
    "convlens/artifact.py",
    "convlens/preprocessing.py",
    "convlens/ink.py",
    "convlens/components.py",
    "convlens/drift.py",
    "convlens/model.py",
    "convlens/visuals.py",
    "convlens/kernels.py",
    "convlens/images.py",
    "convlens/weights.py",
    "convlens/feedback.py",
    "convlens/feedback_rows.py",
    "convlens/database.py",
    "convlens/attribution.py",
    "convlens/receptive.py",
    "convlens/embedding.py",
    "convlens/top_patches.py",
}
TRAINING_LIBRARIES = (
    "pytorch_lightning",
    "lightning",
    "hydra",
    "omegaconf",
    "mlflow",
    "torchvision",
)


def test_package_imports_the_champion_with_its_registry_labels(packaged, trained):
    version = MlflowClient(trained.tracking_uri).get_model_version(MODEL_NAME, trained.version)
    labels = packaged.model_labels
    assert labels["mlflow_model"] == MODEL_NAME
    assert labels["mlflow_version"] == str(trained.version)
    assert labels["mlflow_run_id"] == trained.run_id
    assert labels["test_acc"] == version.tags["test_acc"]
    assert labels["weights_sha256"] == version.tags["weights_sha256"]


def test_package_records_architecture_and_source_as_metadata(packaged, trained):
    metadata = yaml.safe_load((packaged.model_dir / "model.yaml").read_text())["metadata"]
    assert metadata["source"] == f"models:/{MODEL_NAME}/{trained.version}"
    assert [layer["name"] for layer in metadata["architecture"]["layers"]][:2] == ["conv1", "pool1"]
    assert metadata["test_accuracy"] == float(packaged.model_labels["test_acc"])


def test_package_copies_only_weights_architecture_and_the_insight_arrays(packaged):
    files = {path.name for path in packaged.model_dir.iterdir()}
    assert files == {"model.yaml", *FILES, *OPTIONAL_FILES, EMBEDDING_FILE}
    assert not any(name.endswith((".pt", ".pth", ".pkl", ".ckpt")) for name in files)
    digest = hashlib.sha256((packaged.model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert digest == packaged.model_labels["weights_sha256"]


def test_package_again_says_so_and_does_not_duplicate_the_model(packaged, trained):
    result = run_package(trained, packaged.bentoml_home, "--no-build")
    assert result.returncode == 0, result.stderr
    assert f"{packaged.model_tag}: already in" in result.stdout
    versions = [p for p in (packaged.model_dir.parent).iterdir() if p.name != "latest"]
    assert versions == [packaged.model_dir]


def test_package_no_build_imports_into_an_empty_store_without_a_bento(trained, tmp_path):
    """What `make serve` does first on a fresh clone."""
    home = tmp_path / "bentoml"
    result = run_package(trained, home, "--no-build")
    assert result.returncode == 0, result.stderr
    assert "imported into" in result.stdout
    assert not (home / "bentos").exists() or not any((home / "bentos").iterdir())


def test_package_without_a_store_tells_to_train_first(trained, tmp_path):
    missing = f"sqlite:///{tmp_path}/none.db"
    result = run_package(trained, tmp_path / "bentoml", tracking_uri=missing)
    assert result.returncode == 2
    assert "make train" in result.stderr
    assert not (tmp_path / "none.db").exists()


def test_bento_pins_the_packaged_model_and_its_registry_version(packaged, trained):
    bento = yaml.safe_load((packaged.bento_dir / "bento.yaml").read_text())
    assert [m["tag"] for m in bento["services"][0]["models"]] == [packaged.model_tag]
    assert bento["labels"]["mlflow_version"] == str(trained.version)
    assert bento["labels"]["mlflow_run_id"] == trained.run_id


def test_bento_holds_only_the_serving_code(packaged):
    src = packaged.bento_dir / "src"
    modules = {str(p.relative_to(src)) for p in src.rglob("*.py")}
    assert modules == SERVING_MODULES
    for module in modules:
        imported = imported_on_import((src / module).read_text())
        assert not imported & set(TRAINING_LIBRARIES), (module, imported & set(TRAINING_LIBRARIES))


def test_the_bentos_own_code_imports_the_service(packaged, tmp_path):
    """The service imported from the Bento's files alone: every module of this repo that it
    loads comes from the Bento, so a file left out of `bentofile.yaml` fails here."""
    src = packaged.bento_dir / "src"
    listing = (
        "sys.path.insert(0, '.'); import serving.service; "
        "print([m.__file__ for n, m in sys.modules.items() "
        "if n.split('.')[0] in ('serving', 'convlens')])"
    )
    files = ast.literal_eval(import_in_a_fresh_process(listing, src, tmp_path))
    assert files and all(Path(f).is_relative_to(src) for f in files), files


def imported_on_import(text: str) -> set[str]:
    """The packages a module imports when it is imported: not those imported inside functions
    or under `if TYPE_CHECKING:` (`convlens.artifact` imports MLflow there, for the training
    side; serving uses only its names)."""
    names: set[str] = set()

    def visit(nodes) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            elif isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
                visit(node.orelse)
            else:
                visit(ast.iter_child_nodes(node))

    visit(ast.parse(text).body)
    return names


def test_bento_requirements_leave_out_training_dependencies(packaged):
    requirements = (packaged.bento_dir / "env" / "python" / "requirements.txt").read_text()
    names = {
        re.split(r"[=<>\[ ]", line)[0].lower()
        for line in requirements.splitlines()
        if line and not line.startswith(("#", "-"))
    }
    assert {"torch", "numpy", "pillow", "safetensors", "bentoml"} <= names
    assert not names & {"pytorch-lightning", "lightning", "hydra-core", "mlflow", "torchvision"}


def test_bento_installs_the_locked_versions_the_tests_run_with(packaged):
    """The Bento's requirements come from uv.lock, so they are what this venv holds."""
    requirements = (packaged.bento_dir / "env" / "python" / "requirements.txt").read_text()
    pinned = dict(
        line.split(";")[0].strip().split("==")
        for line in requirements.splitlines()
        if "==" in line and not line.startswith(("#", "-"))
    )
    for name in ("torch", "numpy", "pillow", "safetensors", "matplotlib", "uvloop", "bentoml"):
        installed = importlib.metadata.version(name).split("+")[0]
        assert pinned[name].split("+")[0] == installed, f"{name}: Bento {pinned[name]}"


def test_serving_imports_no_training_library(tmp_path):
    """What the Bento leaves out must not be needed: import the service in a fresh process."""
    loaded = "import serving.service; "
    loaded += f"print([m for m in {TRAINING_LIBRARIES!r} if m in sys.modules])"
    assert import_in_a_fresh_process(loaded, REPO, tmp_path) == "[]"


def import_in_a_fresh_process(code: str, cwd: Path, tmp_path: Path) -> str:
    """The last line `import sys; <code>` prints, run by a new Python in `cwd` with a BentoML
    home of its own."""
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; {code}"],
        cwd=cwd,
        env=bentoml_env(tmp_path / "bentoml"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def test_bento_records_the_model_it_serves_for_containers(packaged):
    """A container built from the Bento gets no CONVLENS_MODEL from `make serve`."""
    bento = yaml.safe_load((packaged.bento_dir / "bento.yaml").read_text())
    envs = {env["name"]: env["value"] for env in bento["envs"]}
    assert envs["CONVLENS_MODEL"] == packaged.model_tag
