"""What every peer serves: the champion from the BentoML model store, run the service's way.

The same safetensors weights and architecture, checked against the registered sha256 and
rebuilt by the repo's own loading (`serving.loading.load_model`, on `convlens.weights`), the
same `to_mnist` and `normalize` (`convlens.preprocessing`), channels_last under
`inference_mode`, one torch thread per worker. Only the web framework around it differs.

The peer apps read the stored model's folder from CONVLENS_PEER_MODEL_DIR (set by
`benchmarks.peers.compare`, which resolves the tag `make serve` serves).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from convlens.model import ConvNet
from convlens.preprocessing import normalize, to_mnist
from serving.loading import load_model

MODEL_DIR_ENV = "CONVLENS_PEER_MODEL_DIR"


def load_champion(folder: Path | None = None) -> ConvNet:
    """The network of a BentoML store folder (`models/<name>/<version>`), with one torch thread."""
    torch.set_num_threads(1)
    folder = Path(folder or os.environ[MODEL_DIR_ENV])
    info = yaml.safe_load((folder / "model.yaml").read_text())
    tag = f"{info['name']}:{info['version']}"
    return load_model(folder, info["labels"], tag).net


@torch.inference_mode()
def probabilities(net: ConvNet, images: torch.Tensor) -> torch.Tensor:
    x = normalize(images).contiguous(memory_format=torch.channels_last)
    return torch.softmax(net(x), dim=1)


def predict_image(net: ConvNet, data: bytes) -> dict[str, Any]:
    """One uploaded image file, as a user would write it: open, `to_mnist`, forward."""
    digit = to_mnist(Image.open(io.BytesIO(data)))
    row = probabilities(net, torch.from_numpy(digit)[None])[0]
    return {"label": int(row.argmax()), "probabilities": row.tolist()}


def predict_images(net: ConvNet, images: Any) -> list[dict[str, Any]]:
    """A batch of MNIST-form images (nested lists of 0-255 integers), one answer per image."""
    rows = probabilities(net, torch.from_numpy(np.asarray(images, dtype=np.uint8)))
    return [{"label": int(row.argmax()), "probabilities": row.tolist()} for row in rows]
