"""Training movies: the per-epoch pictures `MLflowVisuals` logs, played as animated GIFs.

The frames are the very images logged to the run (step 0 untrained, step k after k epochs);
nothing is drawn again. Each frame is held `FRAME_MS`, the last one longer, and the GIF loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

FRAME_MS = 500
LAST_FRAME_MS = 2000
MOVIES_DIR = "movies"  # the run's artifact folder for the GIFs


def movie_name(key: str) -> str:
    """The GIF's file name for an image key: `filters/conv1` -> `filters_conv1.gif`."""
    return key.replace("/", "_") + ".gif"


PROGRESS_PX = 6


def with_progress(frame: Image.Image, done: int, total: int) -> Image.Image:
    """`frame` above a thin bar filled `done` / `total`: where in training the frame is. It
    also keeps identical neighbouring frames apart (Pillow would merge them), so the GIF has
    exactly one frame per logged step."""
    width, height = frame.size
    out = Image.new("RGB", (width, height + PROGRESS_PX), (235, 235, 235))
    out.paste(frame.convert("RGB"), (0, 0))
    filled = round(width * done / max(total, 1))
    if filled:
        out.paste((60, 60, 60), (0, height + 1, filled, height + PROGRESS_PX))
    return out


def write_gif(frames: Sequence[Image.Image], path: Path) -> Path:
    """`frames` (step 0 first) as a looping GIF at `path`, one frame each."""
    if not frames:
        raise ValueError("a movie needs at least one frame")
    durations = [FRAME_MS] * (len(frames) - 1) + [LAST_FRAME_MS]
    last = len(frames) - 1
    first, *rest = (with_progress(f, i, last) for i, f in enumerate(frames))
    first.save(
        path,
        format="GIF",
        save_all=True,
        append_images=rest,
        duration=durations,
        loop=0,
        optimize=False,
        disposal=1,
    )
    return Path(path)


def frame_count(path: Path) -> int:
    with Image.open(path) as gif:
        return getattr(gif, "n_frames", 1)


# The run's pictures `python -m pipelines.docs_pictures` copies into docs/ for the README.
DOC_PICTURES = (
    f"{MOVIES_DIR}/{movie_name('filters/conv1')}",
    f"{MOVIES_DIR}/{movie_name('feature_maps/conv1/digit_3')}",
    "evaluation/top_patches_conv1.png",
    "evaluation/top_patches_conv2.png",
)


def copy_run_pictures(client, run_id: str, out_dir: Path) -> list[Path]:
    """The run's training movies and top-patch grids (`DOC_PICTURES`), downloaded into
    `out_dir` under their own names; the ones the run lacks are skipped."""
    import shutil
    import tempfile

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logged = set()
    for folder in {Path(p).parent.as_posix() for p in DOC_PICTURES}:
        logged |= {item.path for item in client.list_artifacts(run_id, folder)}
    copied = []
    with tempfile.TemporaryDirectory() as tmp:
        for artifact in DOC_PICTURES:
            if artifact not in logged:
                continue
            local = client.download_artifacts(run_id, artifact, tmp)
            copied.append(Path(shutil.copyfile(local, out_dir / Path(artifact).name)))
    return copied
