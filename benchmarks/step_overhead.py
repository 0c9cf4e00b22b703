"""What Lightning adds to each training step, in CPU milliseconds, measured in one process.

    uv run --frozen python -m benchmarks.step_overhead [--before REV] [--steps 600] [--repeats 3]

Wall-clock ratios on a shared 2-core machine move by tens of percent from one minute to the
next; the CPU time of one thread does not. So: one torch thread, the CPU time per step
(`time.process_time`) of

- `bare`: the bare loop (`benchmarks.bare_loop`), the reference;
- `lightning`: `Trainer.fit` as `make train` builds it (`convlens.training.build_trainer`:
  the MLflow logger into a scratch store, every callback of `conf/callbacks/default.yaml`),
  validation off, timed by a callback from step 20 on;

for the tutorial CNN and for a `tiny` network (flatten + one dense layer) whose own cost is
nearly nothing, so that its Lightning-minus-bare difference is the framework's fixed cost per
step. Rounds alternate bare and Lightning; the minimum of the rounds is reported.

`--before REV` also measures the module and callbacks of git revision REV (e.g. the commit
before the performance work): `src/convlens/module.py` and `conf/callbacks/default.yaml` are
taken from it, the rest of the tree is the current one.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, merge_results, parser, print_json

TINY = ["model.layers=[{name:flatten,type:flatten},{name:fc2,type:dense,out_features:10}]"]


def load_before(rev: str, folder: Path) -> tuple[str, Path]:
    """The module and callbacks config of revision `rev`; returns (module target, yaml)."""
    module = subprocess.run(
        ["git", "show", f"{rev}:src/convlens/module.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    callbacks = subprocess.run(
        ["git", "show", f"{rev}:conf/callbacks/default.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (folder / "before_module.py").write_text(module)
    (folder / "before_callbacks.yaml").write_text(callbacks)
    spec = importlib.util.spec_from_file_location("before_module", folder / "before_module.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    sys.modules["before_module"] = loaded
    return "before_module.Classifier", folder / "before_callbacks.yaml"


def lightning_ms(overrides: list[str], steps: int, folder: Path, before=None) -> float:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict
    from pytorch_lightning import Callback

    from benchmarks.config import train_config
    from convlens.training import build_trainer

    class Clock(Callback):
        def __init__(self):
            self.t: list[float] = []

        def on_train_batch_start(self, *args):
            self.t.append(time.process_time())

    cfg = train_config(*overrides)
    out = tempfile.mkdtemp(dir=folder)
    with open_dict(cfg):
        cfg.trainer.limit_train_batches = steps + 20
        cfg.trainer.limit_val_batches = 0
        cfg.trainer.max_epochs = 1
        cfg.trainer.enable_model_summary = False
        cfg.paths.output_dir = out
        cfg.logger.mlflow.artifact_location = f"{folder}/mlartifacts"
        if "outbox_dir" in cfg.logger.mlflow:
            cfg.logger.mlflow.outbox_dir = f"{out}/outbox"
        if before is not None:
            cfg.module._target_ = before[0]
            cfg.callbacks = OmegaConf.load(before[1])
            cfg.callbacks.model_checkpoint.dirpath = f"{out}/checkpoints"
            if "checkpoint_on_stop" in cfg.callbacks:
                cfg.callbacks.checkpoint_on_stop.dirpath = f"{out}/checkpoints"
    datamodule = instantiate(cfg.data, download=False)
    net = instantiate(cfg.model, _convert_="all")
    module = instantiate(
        cfg.module,
        net=net,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
    )
    trainer = build_trainer(cfg)
    clock = Clock()
    trainer.callbacks.append(clock)
    trainer.fit(module, datamodule=datamodule)
    t = clock.t[20:]
    return (t[-1] - t[0]) / (len(t) - 1) * 1000


def bare_ms(overrides: list[str], steps: int) -> float:
    import benchmarks.bare_loop as bare
    from benchmarks.config import train_config

    cfg = train_config(*overrides)
    images, labels = bare.train_tensors(cfg)
    # Lightning, imported in this process, makes torch's CUDA check use NVML; a process
    # running only the bare loop would not pay for that, so neither does this measurement.
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"
    clock = bare.time.perf_counter
    bare.time.perf_counter = time.process_time  # the loop's own timer, as CPU time
    try:
        r = bare.bare_train(cfg, images, labels, channels_last=True, steps=steps)
    finally:
        bare.time.perf_counter = clock
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    return r["seconds"] / r["timed_steps"] * 1000


def run(steps: int, repeats: int, before_rev: str | None) -> dict:
    import torch

    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="convlens-bench-steps-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    before = load_before(before_rev, folder) if before_rev else None
    result = {"threads": 1, "steps": steps, "before_rev": before_rev}
    for name, overrides in (("tiny", TINY), ("cnn", [])):
        rounds: dict[str, list[float]] = {}
        for _ in range(repeats):
            rounds.setdefault("bare", []).append(bare_ms(overrides, steps))
            if before:
                rounds.setdefault("lightning_before", []).append(
                    lightning_ms(overrides, steps, folder, before)
                )
            rounds.setdefault("lightning", []).append(lightning_ms(overrides, steps, folder))
        best = {k: round(min(v), 3) for k, v in rounds.items()}
        figures = {
            "cpu_ms_per_step": best,
            "rounds": {k: [round(x, 3) for x in v] for k, v in rounds.items()},
        }
        for k in best:
            if k != "bare":
                figures[f"{k}_overhead_ms"] = round(best[k] - best["bare"], 3)
                figures[f"{k}_ratio"] = round(best["bare"] / best[k], 3)
        result[name] = figures
    return result


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--before", default=None, help="git revision to compare with")
    args = p.parse_args(argv)
    result = run(args.steps, args.repeats, args.before)
    print_json(result)
    merge_results(args.results, "step_overhead", result)
    return result


if __name__ == "__main__":
    main()
