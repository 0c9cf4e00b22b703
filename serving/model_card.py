"""`/model_info`: which model is serving, its layers, and what the endpoints accept."""

from __future__ import annotations

from typing import Any

from convlens.images import FORMATS, MODES, ImageLimits
from convlens.kernels import KERNELS
from convlens.model import describe
from serving.loading import LoadedModel
from serving.settings import CONFIG


def model_info(model: LoadedModel, limits: ImageLimits) -> dict[str, Any]:
    """The registry's facts about `model`, its layers, and the service's limits."""
    net = model.net
    layers = describe(net)
    return {
        "name": model.name,
        "version": model.version,
        "run_id": model.run_id,
        "run_url": model.run_url,
        "test_accuracy": model.test_accuracy,
        "bento_model": model.tag,
        "weights_sha256": model.weights_sha256,
        "parameters": sum(row["parameters"] for row in layers),
        "layers": layers,
        "feature_map_layers": net.spatial_layer_names(),
        "filter_layers": net.conv_layer_names(),
        "kernels": list(KERNELS),
        "input": {
            "shape": list(net.architecture["input_shape"]),
            "image": {
                "formats": list(FORMATS),
                "modes": list(MODES),
                "max_bytes": limits.max_bytes,
                "max_pixels": limits.max_pixels,
            },
            "array": {
                "shapes": ["(N, 28, 28)", "(N, 1, 28, 28)"],
                "values": "integers 0-255 or floats 0-1",
                "max_images": CONFIG.max_batch_images,
            },
            "max_request_bytes": CONFIG.max_request_bytes,
        },
        "traffic": {
            "workers": CONFIG.workers,
            "threads_per_worker": CONFIG.threads,
            "max_concurrency": CONFIG.max_concurrency,
            "timeout_s": CONFIG.timeout_s,
        },
    }
