"""What one image costs the CNN, and what this machine can do: FLOPs per image, GEMM peak.

    uv run --frozen python -m benchmarks.flops [--threads 2,1] [--results FILE]

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add;
convs and matmuls only, so ReLU, pooling and the optimizer are not in it).

The float32 peak is measured, not looked up: `gemm_peak` times large square float32 matrix
products (`torch.mm`, oneDNN/MKL, as near the hardware as PyTorch gets on a CPU) and keeps
the best rate. `benchmarks.inference` measures it again in its own process, at each thread
count, right beside the model, and reports the model's throughput as a fraction of it.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import merge_results, parser, print_json
from benchmarks.config import train_config


def count(cfg, batch: int = 64) -> dict:
    net = instantiate(cfg.model, _convert_="all")
    x = torch.randn(batch, *cfg.model.input_shape)
    y = torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        net(x)
    with FlopCounterMode(display=False) as both:
        F.cross_entropy(net(x), y).backward()
    per_layer = {
        name.removeprefix("Global.").removeprefix("ConvNet."): sum(ops.values()) / batch / 1e6
        for name, ops in forward.get_flop_counts().items()
        if name not in ("Global", "ConvNet")
    }
    return {
        "parameters": sum(p.numel() for p in net.parameters()),
        "forward_mflop_per_image": round(forward.get_total_flops() / batch / 1e6, 3),
        "train_mflop_per_image": round(both.get_total_flops() / batch / 1e6, 3),
        "forward_mflop_by_layer": {k: round(v, 3) for k, v in per_layer.items()},
    }


def gemm_peak(threads: int | None = None, seconds: float = 1.0, size: int = 1024) -> dict:
    """Best float32 GFLOP/s of `size`-square `torch.mm` over `seconds` (2 n^3 FLOPs each)."""
    if threads:
        torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    for _ in range(3):
        torch.mm(a, b, out=out)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return {
        "threads": torch.get_num_threads(),
        "size": size,
        "gflop_per_s": round(2 * size**3 / best / 1e9, 1),
    }


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--threads", default="2,1", help="torch thread counts for the GEMM peak")
    args = p.parse_args(argv)
    result = count(train_config())
    result["gemm_peak"] = {f"threads_{t}": gemm_peak(int(t)) for t in args.threads.split(",")}
    print_json(result)
    merge_results(args.results, "flops", result)
    return result


if __name__ == "__main__":
    main()
