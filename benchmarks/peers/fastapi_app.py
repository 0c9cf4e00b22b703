"""The champion behind plain FastAPI + uvicorn, written the straightforward way.

    CONVLENS_PEER_MODEL_DIR=<bentoml home>/models/convlens-mnist/<version> \
        uvicorn benchmarks.peers.fastapi_app:app --host 127.0.0.1 --port 8000 --workers 2

Sync endpoints (FastAPI runs them in its thread pool), an `UploadFile` for the image and a
pydantic model for the batch, as the FastAPI tutorial shows. No limits, no error shape, no
overload control: what a user would otherwise run, which the service is compared with.
"""

from __future__ import annotations

from fastapi import FastAPI, UploadFile
from pydantic import BaseModel

from benchmarks.peers.champion import load_champion, predict_image, predict_images

app = FastAPI(title="convlens peer: plain FastAPI")
net = load_champion()


class Batch(BaseModel):
    images: list[list[list[int]]]


@app.get("/readyz")
def readyz() -> str:
    return "ok"


@app.post("/predict")
def predict(image: UploadFile) -> dict:
    return predict_image(net, image.file.read())


@app.post("/predict_batch")
def predict_batch(batch: Batch) -> list[dict]:
    return predict_images(net, batch.images)
