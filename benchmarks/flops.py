"""What one image costs the CNN: FLOPs forward and forward+backward, counted by torch.

    uv run --frozen python -m benchmarks.flops [--results FILE]

Counted with `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add; convs and
matmuls only, so ReLU, pooling and the optimizer are not in it).
"""

from __future__ import annotations

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


def main(argv=None) -> dict:
    args = parser(__doc__).parse_args(argv)
    result = count(train_config())
    print_json(result)
    merge_results(args.results, "flops", result)
    return result


if __name__ == "__main__":
    main()
