"""The outbox writes what waited during an outage, and keeps exactly what it could not write."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from convlens.outbox import DELIVERY_THREADS, Outbox


@pytest.fixture
def run(tmp_path: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("outbox", artifact_location=str(tmp_path / "artifacts"))
    return client, client.create_run(experiment).info.run_id


def waiting_images(folder: Path, count: int) -> Outbox:
    box = Outbox(folder)
    for step in range(count):
        box.add_image(Image.new("L", (8, 8), step), "filters/conv1", step)
    return box


def logged_steps(client: MlflowClient, run_id: str) -> set[int]:
    names = [a.path for a in client.list_artifacts(run_id, "images")]
    return {int(n.split("+step+")[1].split("+")[0]) for n in names if n.endswith(".png")}


def test_every_waiting_image_is_written_with_its_step(run, tmp_path):
    client, run_id = run
    box = waiting_images(tmp_path / "box", 2 * DELIVERY_THREADS + 3)
    box.deliver(client, run_id)
    assert len(box) == 0
    assert logged_steps(client, run_id) == set(range(2 * DELIVERY_THREADS + 3))
    assert not list((tmp_path / "box" / "images").iterdir())


def test_an_image_that_cannot_be_written_stays_waiting_and_the_rest_are_not_sent_twice(
    run, tmp_path
):
    client, run_id = run
    box = waiting_images(tmp_path / "box", 3 * DELIVERY_THREADS)
    broken = box.images[DELIVERY_THREADS + 1]
    Path(broken["path"]).write_bytes(b"not a png")
    with pytest.raises(Exception):  # noqa: B017 - whatever Pillow raises for a broken file
        box.deliver(client, run_id)
    assert box.images[0] is broken
    waiting = {item["step"] for item in box.images}
    written = logged_steps(client, run_id)
    assert set(range(broken["step"])) <= written
    assert written | waiting == set(range(3 * DELIVERY_THREADS))
    assert not written & waiting
    Path(broken["path"]).unlink()
    box.images.pop(0)
    box.deliver(client, run_id)
    assert logged_steps(client, run_id) == set(range(3 * DELIVERY_THREADS)) - {broken["step"]}
