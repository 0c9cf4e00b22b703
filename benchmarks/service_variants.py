"""Evidence for the service changes BENCHMARKS.md recommends: the shipped service against
patched copies of it, served and loaded the same way, one after the other.

    uv run --frozen python -m benchmarks.service_variants --bentoml-home DIR \
        [--variants shipped,gc_freeze,...] [--seconds 5] [--repeats 2]

`--bentoml-home` must hold an imported model (e.g. the `serving/bentoml` folder that
`benchmarks.serving --workdir` leaves, or the repo's `bentoml/` after `make package`). Each
variant is a copy of `serving/` in a temporary folder with textual patches applied to
`service.py` / `config.yaml`; a patch whose text is no longer in the shipped file is reported
and the variant skipped, so the script keeps telling the truth as the service changes. Not
part of `make bench` (it serves every variant in turn: about a minute each).

Variants (cumulative ones are named by their parts):

- `shipped`: `serving/` as it is;
- `gc_freeze`: `gc.collect(); gc.freeze()` after the model is loaded, so the cyclic garbage
  collector stops re-scanning the ~250k objects of torch, BentoML and pydantic (a full
  collection takes ~130 ms in a worker and stalls every request in flight);
- `quiet`: BentoML's per-request access log line and Prometheus metrics off;
- `async`: `async def` for `/predict` and `/feature_maps`: no hop to the thread pool;
- `pil`: `/predict` takes the upload as `PIL.Image.Image`, which BentoML opens from the
  request in memory, instead of `Path`, for which it writes a temporary file per request;
- `inflight64`: `max_in_flight_per_thread: 64`, so that one worker may hold all 64
  connections of 64 clients (the kernel does not spread connections evenly between workers);
- `png1`: PNG answers (`/feature_maps`, `/filters`, ...) encoded with zlib level 1 instead of
  Pillow's default 6: a quarter of the CPU for a few percent more bytes;
- `all`: every one of the above.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, merge_results, parser, print_json
from benchmarks.serving import Server, free_port, scenario, write_bodies

PREDICT = "    def predict(self, image: Path) -> ImagePrediction:"
FEATURE_MAPS = "    def feature_maps(self, image: Path,"
LOADED = "            MODEL_STATUS.loaded(model)\n"
READ = "read_image(image, self.limits)"
# What the `pil` variant appends: the checks `convlens.images.decode_image` makes, on an image
# BentoML already opened (header only) from the upload in memory.
OPENED = '''

def _opened(image, limits):
    """An upload BentoML opened as a PIL image, checked as `decode_image` checks bytes."""
    from convlens.images import FORMATS, MODES, ImageError, ImageTooLarge, _load

    if image.format not in FORMATS:
        raise ImageError(f"the upload is not an image in a supported format ({', '.join(FORMATS)})")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageTooLarge(f"the image is {width}x{height}; the limit is {limits.max_pixels:,}")
    if image.mode not in MODES:
        raise ImageError(f"image mode {image.mode} is not supported")
    _load(image)
    return image
'''
END = "APPEND"
WORKERS = "    workers=CONFIG.workers,\n"

PATCHES: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    # name: ([(old, new) in service.py], [(old, new) in config.yaml])
    "shipped": ([], []),
    "gc_freeze": (
        [(LOADED, LOADED + "        import gc\n\n        gc.collect()\n        gc.freeze()\n")],
        [],
    ),
    "quiet": (
        [
            (
                WORKERS,
                WORKERS + '    logging={"access": {"enabled": False}},\n'
                '    metrics={"enabled": False},\n',
            )
        ],
        [],
    ),
    "async": (
        [
            (PREDICT, PREDICT.replace("def ", "async def ")),
            (FEATURE_MAPS, FEATURE_MAPS.replace("def ", "async def ")),
        ],
        [],
    ),
    "pil": (
        [
            (PREDICT, PREDICT.replace("image: Path", "image: Image.Image")),
            (
                READ,
                "(_opened(image, self.limits) if isinstance(image, Image.Image) "
                "else read_image(image, self.limits))",
            ),
            (END, OPENED),
        ],
        [],
    ),
    "inflight64": ([], [("max_in_flight_per_thread: 32", "max_in_flight_per_thread: 64")]),
    "png1": (
        [
            (
                '    image.save(buffer, format="PNG")\n',
                '    image.save(buffer, format="PNG", compress_level=1)\n',
            )
        ],
        [],
    ),
}


def combine(names: list[str]) -> tuple[list, list]:
    service, config = [], []
    predict_new = PREDICT
    for name in names:
        for old, new in PATCHES[name][0]:
            if old == PREDICT:  # async and pil both rewrite the predict line
                if "async" in new:
                    predict_new = predict_new.replace("    def ", "    async def ")
                if "Image.Image" in new:
                    predict_new = predict_new.replace("image: Path", "image: Image.Image")
            else:
                service.append((old, new))
        config += PATCHES[name][1]
    if predict_new != PREDICT:
        service.append((PREDICT, predict_new))
    return service, config


def variant_folder(name: str, root: Path) -> tuple[Path | None, str | None]:
    parts = list(PATCHES) if name == "all" else name.split("+")
    service_subs, config_subs = combine([p for p in parts if p != "shipped"])
    folder = root / name.replace("+", "_")
    shutil.copytree(
        REPO / "serving",
        folder / "serving",
        ignore=shutil.ignore_patterns("__pycache__", "bentoml"),
    )
    for file, subs in (("service.py", service_subs), ("config.yaml", config_subs)):
        path = folder / "serving" / file
        text = path.read_text()
        for old, new in subs:
            if old == END:
                text += new
                continue
            if old not in text:
                return None, f"{file} no longer contains {old.strip()!r}"
            text = text.replace(old, new, 1)
        path.write_text(text)
    return folder, None


class VariantServer(Server):
    """`bentoml serve` of a patched copy (make serve would serve the repo's own)."""

    def __init__(self, folder: Path, home: Path, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.log = folder / "serve.log"
        env = {
            **os.environ,
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "true",
            "PYTHONPATH": os.pathsep.join([str(folder), str(REPO / "src")]),
        }
        env.pop("CONVLENS_MODEL", None)
        command = [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "serving.service:ConvLens",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        self.started = time.monotonic()
        self.ready_s = None
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                command,
                cwd=folder,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def measure(folder: Path, home: Path, bodies, seconds: float, repeats: int) -> dict:
    server = VariantServer(folder, home, free_port())
    try:
        server.wait_ready()
        runs = {}
        for rep in range(repeats):
            runs[f"predict_c8_run{rep + 1}"] = scenario(
                server, "predict", bodies["predict"], 8, seconds
            )
        runs["predict_c1"] = scenario(server, "predict", bodies["predict"], 1, seconds)
        runs["predict_c64"] = scenario(server, "predict", bodies["predict"], 64, seconds)
        runs["feature_maps_c1"] = scenario(
            server, "feature_maps", bodies["feature_maps"], 1, seconds
        )
        return runs
    finally:
        server.stop()


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--bentoml-home", type=Path, required=True)
    p.add_argument("--variants", default="shipped,gc_freeze,quiet,async,pil,inflight64,png1,all")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=2, help="runs of /predict at 8 clients")
    args = p.parse_args(argv)
    result = {}
    with tempfile.TemporaryDirectory(prefix="convlens-variants-") as tmp:
        root = Path(tmp)
        bodies = write_bodies(root)
        for name in args.variants.split(","):
            folder, problem = variant_folder(name, root)
            if problem:
                result[name] = {"skipped": problem}
                print(f"{name}: skipped, {problem}", flush=True)
                continue
            runs = measure(folder, args.bentoml_home.resolve(), bodies, args.seconds, args.repeats)
            result[name] = runs
            for key, r in runs.items():
                print(
                    f"{name:12s} {key:18s} {r['requests_per_s']:7.1f} req/s  "
                    f"p50 {r['latency_ms']['p50']:6.2f}  p99 {r['latency_ms']['p99']:7.2f} ms  "
                    f"cpu {r['server_cpu_ms_per_request']:5.2f} ms/req  {r['statuses']}  "
                    f"workers {r['worker_cpu_share']}  load {r['load_avg_1m']}",
                    flush=True,
                )
    print_json(result)
    merge_results(args.results, "service_variants", result)
    return result


if __name__ == "__main__":
    main()
