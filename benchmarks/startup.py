"""The fixed cost of `make train` before its first training step, piece by piece.

    uv run --frozen python -m benchmarks.startup [--results FILE]

Each piece is timed in a fresh interpreter, in the order training pays for it:

- `interpreter`: `python -c pass`;
- `imports`: torch; torch._dynamo (pulled in by torchvision.ops, which torchmetrics imports for
  one image metric, which Lightning imports to check its version); torchvision; Lightning and
  torchmetrics; MLflow; Hydra; then the rest of `pipelines.train` and `convlens.training`.
  With the bytecode cache warm, and cold (no .pyc at all, which is what every run pays when
  PYTHONDONTWRITEBYTECODE=1 is set and the environment was installed without compiling);
- `data`: `MNISTDataModule.prepare_data()` and `setup("fit")` (files to uint8 tensors);
- `mlflow`: building the trainer with its MLflow logger (opens the sqlite store), creating the
  run, logging the config (`convlens.tracking.log_config`), in a store created beforehand.

The whole figure, process start to first training step, comes from a real `make train` in
`benchmarks.train` (`startup_to_first_step_s`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, data_root, merge_results, parser, print_json

IMPORT_STEPS = [
    ("torch", "import torch"),
    ("torch._dynamo", "import torch._dynamo"),
    ("torchvision", "import torchvision"),
    ("pytorch_lightning + torchmetrics", "import pytorch_lightning, torchmetrics"),
    ("mlflow", "import mlflow, mlflow.pytorch"),
    ("hydra + omegaconf", "import hydra, omegaconf, hydra.utils"),
    ("pipelines.train + convlens.training", "import pipelines.train, convlens.training"),
]

IMPORTS_CODE = """
import json, time
steps = json.loads(STEPS)
out = {}
for name, code in steps:
    t = time.perf_counter()
    exec(code)
    out[name] = round(time.perf_counter() - t, 3)
print("RESULT " + json.dumps(out))
"""

PIECES_CODE = """
import json, os, time
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from convlens.training import build_trainer
from convlens.tracking import log_config, mlflow_logger
from hydra.utils import instantiate
out = {}
with initialize_config_dir(os.environ["CONF"], version_base="1.3"):
    t = time.perf_counter()
    cfg = compose("train", overrides=[], return_hydra_config=False)
    out["hydra_compose_s"] = round(time.perf_counter() - t, 3)
with open_dict(cfg):
    cfg.paths.root_dir = os.environ["WORK"]
    cfg.paths.output_dir = os.environ["WORK"] + "/out"
    cfg.logger.mlflow.artifact_location = os.environ["WORK"] + "/mlartifacts"
t = time.perf_counter()
dm = instantiate(cfg.data)
dm.prepare_data()
out["data_prepare_s"] = round(time.perf_counter() - t, 3)
t = time.perf_counter()
dm.setup("fit")
out["data_setup_s"] = round(time.perf_counter() - t, 3)
t = time.perf_counter()
trainer = build_trainer(cfg)
out["build_trainer_and_logger_s"] = round(time.perf_counter() - t, 3)
logger = mlflow_logger(trainer)
t = time.perf_counter()
logger.run_id
out["mlflow_create_run_s"] = round(time.perf_counter() - t, 3)
t = time.perf_counter()
log_config(logger, cfg)
out["mlflow_log_config_s"] = round(time.perf_counter() - t, 3)
print("RESULT " + json.dumps(out))
"""


def python(code: str, env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    return json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])


def interpreter_s(env: dict, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        times.append(time.perf_counter() - t)
    return round(min(times), 3)


def imports(env: dict) -> dict:
    steps = python(IMPORTS_CODE.replace("STEPS", repr(json.dumps(IMPORT_STEPS))), env)
    return {"total_s": round(sum(steps.values()), 2), "by_step_s": steps}


def run(workdir: Path) -> dict:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "CONVLENS_DATA_DIR": data_root()}
    warm = dict(env)
    warm.pop("PYTHONDONTWRITEBYTECODE", None)  # let the cache fill (or be used) as usual
    cold = {
        **env,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPYCACHEPREFIX": str(workdir / "empty-pycache"),  # nothing to read, none written
    }
    imports(warm)  # make sure the cache is warm
    result = {
        "interpreter_s": interpreter_s(warm),
        "imports_warm_bytecode": imports(warm),
        "imports_cold_no_bytecode": imports(cold),
    }
    store = f"sqlite:///{workdir}/mlflow.db"
    pieces_env = {
        **warm,
        "MLFLOW_TRACKING_URI": store,
        "CONF": str(REPO / "conf"),
        "WORK": str(workdir),
    }
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import mlflow; mlflow.MlflowClient().search_experiments()"],
        env=pieces_env,
        check=True,
        capture_output=True,
    )
    result["mlflow_new_store_once_s"] = round(time.perf_counter() - t, 2)
    result["pieces"] = python(PIECES_CODE, pieces_env)
    return result


def main(argv=None) -> dict:
    args = parser(__doc__).parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="convlens-bench-startup-") as tmp:
        result = run(Path(tmp))
    print_json(result)
    merge_results(args.results, "startup", result)
    return result


if __name__ == "__main__":
    main()
