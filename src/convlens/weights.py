"""A network as two plain files: safetensors weights and architecture JSON, never a pickle.

Training writes them beside the MLflow model; serving rebuilds the network from them after
checking the weights' sha256 against the one registered with the model version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from convlens.model import ConvNet

WEIGHTS_FILE = "model.safetensors"
ARCHITECTURE_FILE = "architecture.json"


class WeightsMismatch(ValueError):
    """The weights on disk are not the ones registered: tampered with or mixed up."""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_weights(net: ConvNet, folder: Path) -> str:
    """Write the weights and architecture into `folder`; returns the weights' sha256."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / ARCHITECTURE_FILE).write_text(json.dumps(net.architecture, indent=2))
    return sha256_of(folder / WEIGHTS_FILE)


def load_weights(folder: Path, expected_sha256: str | None = None) -> ConvNet:
    """Rebuild the network in eval mode, refusing weights whose digest is not the expected one."""
    folder = Path(folder)
    weights = folder / WEIGHTS_FILE
    if expected_sha256 is not None:
        actual = sha256_of(weights)
        if actual != expected_sha256:
            raise WeightsMismatch(
                f"{weights} has sha256 {actual}, but the registered weights have "
                f"{expected_sha256}: refusing to load them"
            )
    net = ConvNet(**json.loads((folder / ARCHITECTURE_FILE).read_text()))
    net.load_state_dict(load_file(str(weights)))
    return net.eval()
