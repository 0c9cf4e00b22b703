"""The GPU figures, for a machine with one: training, the bare loop, inference, torch.compile.

    uv run --frozen python -m benchmarks.gpu [--skip-train] [--results FILE] [--json-out FILE]
    uv run --frozen python -m benchmarks.gpu --dry-run      # the plan; runs nothing

Each in order, the figures printed as a Markdown table for BENCHMARKS.md and written as JSON:

1. `make train ARGS="trainer=gpu"` (the default 5 epochs, private MLflow store): epoch time
   (training steps per epoch), end to end, test accuracy;
2. `make train ARGS="trainer=gpu experiment=fast"`: time to 99% (the one-epoch recipe's
   training and end-to-end seconds, and whether its test accuracy reached 0.99);
3. the bare loop (`benchmarks.bare_loop`) with the whole training set on the GPU, uint8,
   channels_last and NCHW;
4. model-only inference, channels_last under `inference_mode`, at batch 64 and 1,024, eager
   and `torch.compile`d (its build time reported apart), logits checked against eager.

Without CUDA it says so and exits 0 (`{"skipped": ...}` in the results): nothing in
`make test` or `make bench` needs a GPU.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, merge_results, parser, print_json

BATCHES = (64, 1024)
PLAN = [
    "make train ARGS='trainer=gpu' (default, 5 epochs): epoch time, test accuracy",
    "make train ARGS='trainer=gpu experiment=fast': time to 99% test accuracy",
    "benchmarks.bare_loop on cuda, data resident on the GPU: images/s",
    f"inference batch {' and '.join(map(str, BATCHES))}: eager and torch.compile",
]


def device_info() -> dict:
    import torch

    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "count": torch.cuda.device_count(),
    }


def trainings(workdir: Path) -> dict:
    from benchmarks.train import create_store, make_train

    create_store(workdir)
    default = make_train(workdir, "gpu_default", ["trainer=gpu", "trainer.devices=1"])
    fast = make_train(workdir, "gpu_fast", ["trainer=gpu", "trainer.devices=1", "experiment=fast"])
    default["epoch_s"] = round(default["train_steps_s"] / max(1, default["epochs"]), 2)
    fast["reached_99"] = fast["test_acc"] is not None and fast["test_acc"] >= 0.99
    return {"default": default, "fast": fast}


def bare_loop_on_gpu(steps: int) -> dict:
    from benchmarks.bare_loop import bare_train, train_tensors
    from benchmarks.config import train_config

    cfg = train_config()
    images, labels = train_tensors(cfg)
    return {
        layout: bare_train(
            cfg, images, labels, channels_last=layout == "channels_last", steps=steps, device="cuda"
        )
        for layout in ("channels_last", "nchw")
    }


def inference(seconds: float) -> dict:
    import torch
    from hydra.utils import instantiate

    from benchmarks.config import train_config
    from benchmarks.inference import images

    cfg = train_config()
    net = instantiate(cfg.model, _convert_="all").eval()
    net = net.to(device="cuda", memory_format=torch.channels_last)
    compiled = torch.compile(net, dynamic=False)
    found: dict = {}
    for batch in BATCHES:
        x = images(batch).to("cuda").contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            reference = net(x)
        for name, model in (("eager", net), ("compiled", compiled)):
            with torch.inference_mode():
                start = time.perf_counter()
                out = model(x)
                torch.cuda.synchronize()
                first = time.perf_counter() - start
                for _ in range(10):
                    model(x)
                torch.cuda.synchronize()
                done, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    for _ in range(20):
                        model(x)
                    torch.cuda.synchronize()
                    done += 20 * batch
                elapsed = time.perf_counter() - start
            found[f"batch{batch}_{name}"] = {
                "images_per_s": round(done / elapsed, 1),
                "first_call_s": round(first, 3),
                "max_abs_diff_vs_eager": round(float((out - reference).abs().max()), 7),
            }
    return found


def table(result: dict) -> str:
    rows = ["| figure | value |", "| --- | --- |"]
    rows.append(f"| device | {result['device']['name']} ({result['device']['memory_gib']} GiB) |")
    train = result.get("train") or {}
    if train:
        d, f = train["default"], train["fast"]
        rows.append(f"| default training (trainer=gpu): epoch time | {d['epoch_s']} s |")
        rows.append(f"| default training: test accuracy | {d['test_acc']} |")
        rows.append(f"| default training: end to end | {d['make_wall_s']} s |")
        rows.append(
            f"| experiment=fast: time to 99% | {f['train_steps_s']} s training, "
            f"{f['make_wall_s']} s end to end (test acc {f['test_acc']}) |"
        )
    for layout, run in result["bare_loop"].items():
        rows.append(f"| bare loop, data on the GPU, {layout} | {run['images_per_s']:,.0f} img/s |")
    for name, run in result["inference"].items():
        rows.append(
            f"| inference {name} | {run['images_per_s']:,.0f} img/s "
            f"(first call {run['first_call_s']} s) |"
        )
    return "\n".join(rows)


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    p.add_argument("--skip-train", action="store_true", help="no make train runs")
    p.add_argument("--steps", type=int, default=400, help="bare-loop steps per layout")
    p.add_argument("--seconds", type=float, default=2.0, help="per inference figure")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json-out", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.dry_run:
        steps = "\n".join(f"  {i}. {step}" for i, step in enumerate(PLAN, 1))
        print(f"benchmarks.gpu would run:\n{steps}")
        return {"dry_run": PLAN}
    import torch

    if not torch.cuda.is_available():
        result: dict = {"skipped": "no CUDA device: torch.cuda.is_available() is False"}
        print(result["skipped"])
        merge_results(args.results, "gpu", result)
        return result
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="convlens-bench-gpu-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = {"device": device_info(), "machine": machine()}
    if not args.skip_train:
        result["train"] = trainings(workdir)
    result["bare_loop"] = bare_loop_on_gpu(args.steps)
    result["inference"] = inference(args.seconds)
    print_json(result)
    print(table(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    merge_results(args.results, "gpu", result)
    return result


if __name__ == "__main__":
    main()
