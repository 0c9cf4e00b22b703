"""Training movies: the conv1 filters and one digit's feature maps across the epochs, as GIFs
logged to the run (`convlens.movies`, made by `MLflowVisuals` from the frames it logged)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from PIL import Image

from convlens.movies import MOVIES_DIR, frame_count, movie_name, write_gif

MOVIES = ("filters/conv1", "feature_maps/conv1/digit_3")  # conf/callbacks/default.yaml


def logged_movie(trained, key: str, tmp_path: Path) -> Path:
    path = mlflow.artifacts.download_artifacts(
        run_id=trained.run_id,
        artifact_path=f"{MOVIES_DIR}/{movie_name(key)}",
        dst_path=str(tmp_path),
        tracking_uri=trained.tracking_uri,
    )
    return Path(path)


def logged_steps(trained, key: str) -> set[int]:
    """The steps the run logged image `key` at (its files are `<key>+step+<n>+...`)."""
    client = MlflowClient(trained.tracking_uri)
    prefix = key.replace("/", "~") + "+step+"
    names = (Path(a.path).name for a in client.list_artifacts(trained.run_id, "images"))
    return {int(n[len(prefix) :].split("+")[0]) for n in names if n.startswith(prefix)}


def test_each_movie_has_one_frame_per_logged_step(trained, tmp_path):
    """Step 0 (untrained) and one frame per epoch: epochs + 1 frames, in step order."""
    client = MlflowClient(trained.tracking_uri)
    epochs = len(client.get_metric_history(trained.run_id, "val/acc"))
    for key in MOVIES:
        steps = logged_steps(trained, key)
        assert steps == set(range(epochs + 1)), (key, steps)
        assert frame_count(logged_movie(trained, key, tmp_path)) == epochs + 1, key


def test_movie_frames_are_the_logged_grids(trained, tmp_path):
    """The first frame is the step-0 grid as logged (a progress bar below), not a new drawing."""
    client = MlflowClient(trained.tracking_uri)
    names = [Path(a.path).name for a in client.list_artifacts(trained.run_id, "images")]
    step0 = next(
        n
        for n in names
        if n.startswith("filters~conv1+step+0+") and n.endswith(".png") and "compressed" not in n
    )
    logged = Image.open(client.download_artifacts(trained.run_id, f"images/{step0}", str(tmp_path)))
    with Image.open(logged_movie(trained, "filters/conv1", tmp_path)) as gif:
        gif.seek(0)
        first = np.asarray(gif.convert("RGB"))
    assert first.shape[1] == logged.width and first.shape[0] > logged.height
    grid = first[: logged.height].astype(int)
    assert np.abs(grid - np.asarray(logged.convert("RGB")).astype(int)).mean() < 8  # GIF palette


def test_identical_frames_stay_separate_frames(tmp_path):
    """Pillow merges identical neighbouring GIF frames; a movie of an unchanged layer must still
    have one frame per step."""
    frame = Image.new("RGB", (64, 16), (40, 90, 200))
    path = write_gif([frame, frame, frame], tmp_path / "same.gif")
    assert frame_count(path) == 3
