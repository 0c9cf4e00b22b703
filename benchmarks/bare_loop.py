"""The reference for training throughput: a bare PyTorch loop, no Lightning, no logging.

Same network, optimizer, schedule and batch size as `make train` (composed from `conf/`),
over the same in-memory uint8 tensors (the same 55k split), normalized a batch at a time,
shuffled each epoch. Prints images/s for the NCHW and channels_last layouts.

    uv run --frozen python -m benchmarks.bare_loop [--steps 400 | --epochs 1] [--results FILE]

It never imports Lightning: importing it alone makes every `optimizer.step()` of a CUDA build
of torch slower on a machine without a GPU (see `convlens.module.skip_cuda_graph_check`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from benchmarks.common import merge_results, parser, print_json
from benchmarks.config import train_config
from convlens.preprocessing import normalize


def train_tensors(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split as `MNISTDataModule.setup` makes it: uint8 images, int64 labels."""
    from torchvision.datasets import MNIST

    data = MNIST(cfg.data.root, train=True, download=False)
    generator = torch.Generator().manual_seed(cfg.data.split_seed)
    order = torch.randperm(len(data.targets), generator=generator)
    index = order[cfg.data.val_size :]
    if cfg.data.subset:
        index = index[: cfg.data.subset]
    return data.data[index], data.targets[index]


def bare_train(
    cfg,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    channels_last: bool,
    steps: int | None = None,
    epochs: int = 1,
    warmup: int = 20,
    device: str = "cpu",
) -> dict:
    """Train for `epochs` (or `steps` when given); images/s over the timed steps. On another
    `device` (`benchmarks.gpu`: "cuda") the data moves there first, whole, as uint8."""
    torch.manual_seed(cfg.seed)
    net = instantiate(cfg.model, _convert_="all")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device=device, memory_format=memory_format).train()
    images, labels = images.to(device), labels.to(device)
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    batch = cfg.data.batch_size
    per_epoch = (len(labels) + batch - 1) // batch
    total = steps + warmup if steps else per_epoch * epochs
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer, total_steps=total)

    done, timed_images, start, loss = 0, 0, None, None
    while done < total:
        order = torch.randperm(len(labels), device=device)
        for i in range(0, len(labels), batch):
            if done == warmup:
                synchronize()
                start, timed_images = time.perf_counter(), 0
            index = order[i : i + batch]
            x = normalize(images[index]).contiguous(memory_format=memory_format)
            y = labels[index]
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            timed_images += len(y)
            done += 1
            if done == total:
                break
    synchronize()
    seconds = time.perf_counter() - start
    return {
        "device": device,
        "layout": "channels_last" if channels_last else "nchw",
        "batch_size": batch,
        "timed_steps": total - warmup,
        "seconds": round(seconds, 3),
        "images_per_s": round(timed_images / seconds, 1),
        "final_loss": round(float(loss.detach()), 4),
    }


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=400, help="timed steps per layout")
    p.add_argument("--epochs", type=int, default=0, help="whole epochs instead of --steps")
    p.add_argument("--layouts", default="nchw,channels_last")
    p.add_argument("--json-out", type=Path, default=None, help="also write the result here")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for make train")
    args = p.parse_args(argv)
    cfg = train_config(*args.overrides)
    images, labels = train_tensors(cfg)
    result = {
        layout: bare_train(
            cfg,
            images,
            labels,
            channels_last=layout == "channels_last",
            steps=None if args.epochs else args.steps,
            epochs=args.epochs or 1,
            warmup=0 if args.epochs else 20,  # whole epochs: timed from the first step, as
        )  # benchmarks.train times `make train`
        for layout in args.layouts.split(",")
    }
    print_json(result)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    merge_results(args.results, "bare_loop", result)
    return result


if __name__ == "__main__":
    main()
