"""What each of the service's performance settings buys: the shipped service against copies
of it with one setting undone, served and loaded the same way, one after the other.

    uv run --frozen python -m benchmarks.service_variants --bentoml-home DIR \
        [--variants shipped,no_gc_freeze,...] [--seconds 5] [--repeats 2]

`--bentoml-home` must hold an imported model (e.g. the `serving/bentoml` folder that
`benchmarks.serving --workdir` leaves, or the repo's `bentoml/` after `make package`). Each
variant is a copy of `serving/` in a temporary folder with textual patches applied to
`service.py` / `config.yaml`; a patch whose text is no longer in the shipped file is reported
and the variant skipped, so the script keeps telling the truth as the service changes. Not
part of `make bench` (it serves every variant in turn: about a minute each).

Variants (join names with + to undo several settings at once):

- `shipped`: `serving/` as it is;
- `no_gc_freeze`: without `gc.freeze()` after the model is loaded, so the cyclic garbage
  collector re-scans the ~250k objects of torch, BentoML and pydantic (a full collection takes
  ~130 ms in a worker and stalls every request in flight);
- `pure_python_http`: uvicorn without uvloop and httptools (its asyncio loop and h11 parser);
- `access_log`: BentoML's access log line for every request;
- `no_spread`: keep-alive connections never closed by the service (`SpreadConnections`), so
  clients that connect together can all stay on one worker;
- `inflight32`: `max_in_flight_per_thread: 32`, the limit before issue 5;
- `before`: all of the above undone, the service as it was before issue 5's changes.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.common import REPO, merge_results, parser, print_json
from benchmarks.serving import Server, scenario, write_bodies
from tests.harness import free_port

FROZEN = "        gc.collect()\n        gc.freeze()\n"
# Blocked imports: uvicorn falls back to asyncio and h11.
NO_C_HTTP = 'import sys\n\nsys.modules["uvloop"] = sys.modules["httptools"] = None\n'
START = "from __future__ import annotations\n"

PATCHES: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    # name: ([(old, new) in service.py], [(old, new) in config.yaml])
    "shipped": ([], []),
    "no_gc_freeze": ([(FROZEN, "")], []),
    "pure_python_http": ([(START, START + NO_C_HTTP)], []),
    "access_log": ([], [("access_log: false", "access_log: true")]),
    "no_spread": ([], [("requests_per_connection: 25", "requests_per_connection: 1000000000")]),
    "inflight32": ([], [("max_in_flight_per_thread: 64", "max_in_flight_per_thread: 32")]),
}
UNDONE = [name for name in PATCHES if name != "shipped"]


def combine(names: list[str]) -> tuple[list, list]:
    service, config = [], []
    for name in names:
        service += PATCHES[name][0]
        config += PATCHES[name][1]
    return service, config


def variant_folder(name: str, root: Path) -> tuple[Path | None, str | None]:
    parts = UNDONE if name == "before" else name.split("+")
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
            if old not in text:
                return None, f"{file} no longer contains {old.strip()!r}"
            text = text.replace(old, new, 1)
        path.write_text(text)
    return folder, None


class VariantServer(Server):
    """`bentoml serve` of a patched copy (make serve would serve the repo's own), started."""

    def __init__(self, folder: Path, home: Path, port: int):
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
        url = f"http://127.0.0.1:{port}"
        super().__init__(
            "bentoml serve", url, command, cwd=folder, env=env, log=folder / "serve.log"
        )
        self.start()


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
        runs["predict_batch_64img_c4"] = scenario(
            server, "predict_batch", bodies["batch64"], 4, seconds, images_per_request=64
        )
        runs["feature_maps_c1"] = scenario(
            server, "feature_maps", bodies["feature_maps"], 1, seconds
        )
        return runs
    finally:
        server.stop()


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--bentoml-home", type=Path, required=True)
    p.add_argument("--variants", default=",".join(["shipped", *UNDONE, "before"]))
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
