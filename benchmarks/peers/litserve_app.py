"""The champion behind LitServe (the release locked in the dev group), one LitAPI per route.

    CONVLENS_PEER_MODEL_DIR=<bentoml home>/models/convlens-mnist/<version> \
        python -m benchmarks.peers.litserve_app --port 8000 --workers 2

`workers` inference workers on the CPU (`workers_per_device`) and, LitServe's default, as
many API server processes; one torch thread each. Written as LitServe's docs show: the
form or JSON arrives in `decode_request`, `predict` runs the model, `encode_response` answers.
"""

from __future__ import annotations

import argparse

import litserve as ls

from benchmarks.peers.champion import load_champion, predict_image, predict_images


class Predict(ls.LitAPI):
    def setup(self, device):
        self.net = load_champion()

    def decode_request(self, request):
        return request["image"].file.read()

    def predict(self, data):
        return predict_image(self.net, data)

    def encode_response(self, output):
        return output


class PredictBatch(ls.LitAPI):
    def setup(self, device):
        self.net = load_champion()

    def decode_request(self, request):
        return request["images"]

    def predict(self, images):
        return predict_images(self.net, images)

    def encode_response(self, output):
        return output


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    server = ls.LitServer(
        [Predict(api_path="/predict"), PredictBatch(api_path="/predict_batch")],
        accelerator="cpu",
        workers_per_device=args.workers,
        healthcheck_path="/readyz",
    )
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
