"""The service under load: `make serve` on 127.0.0.1, driven by `benchmarks.loadgen`.

    uv run --frozen python -m benchmarks.serving --tracking-uri sqlite:///path/mlflow.db \
        [--seconds 5] [--soak 60] [--results FILE]

Starts `make serve` (the shipped `serving/config.yaml`: workers, one torch thread per worker,
adaptive batching) against the champion of the given MLflow store, in a private BentoML home
and on a free port; runs each scenario with the repo's load generator in its own process
(closed loop, `--seconds` each), then stops the server.

Per scenario: requests/s, latency p50/p90/p99 (closed loop), answers by status, socket
errors, and the server's CPU time per request (from /proc, all serving processes: a figure that
other load on the machine disturbs much less than latency). The soak samples the resident
memory of every serving process once a second under load and reports its growth.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks import loadgen
from benchmarks.common import (
    REPO,
    data_root,
    load_avg,
    merge_results,
    parser,
    print_json,
    process_tree,
    rss_mib,
    serve_env,
)
from tests.harness import ServerProcess, digit_png, free_port, mnist_test_set

READY_TIMEOUT_S = 240
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DRAIN_S = 1.0
STUCK_S = 10.0  # what wrk's --timeout was


# --- request bodies --------------------------------------------------------------------------


def multipart(file_field: str, filename: str, content: bytes, **fields: str) -> tuple[bytes, str]:
    boundary = f"convlens{uuid.uuid4().hex}"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
        f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'.encode()
        + content
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


def write_bodies(folder: Path) -> dict[str, tuple[Path, str]]:
    digits = mnist_test_set(data_root())[0][:64]  # the first 64 official test digits
    png = digit_png(0, data_root())
    bodies = {
        "predict": multipart("image", "digit.png", png),
        "feature_maps": multipart("image", "digit.png", png, layer="conv1", format="png"),
        "batch1": (json.dumps({"images": digits[:1].tolist()}).encode(), "application/json"),
        "batch64": (json.dumps({"images": digits.tolist()}).encode(), "application/json"),
    }
    found = {}
    for name, (body, content_type) in bodies.items():
        path = folder / f"{name}.body"
        path.write_bytes(body)
        found[name] = (path, content_type)
    return found


# --- the server ------------------------------------------------------------------------------


class Server(ServerProcess):
    """A server on `url` (its own process group, stopped together), with the /proc figures
    of its serving processes; `ready_s` is the time from start to `/readyz` answering."""

    def __init__(self, name: str, url: str, command: list[str], *, cwd: Path, env: dict, log: Path):
        super().__init__(
            command,
            log=log,
            ready_url=f"{url}/readyz",
            env=env,
            cwd=cwd,
            timeout_s=READY_TIMEOUT_S,
            name=name,
        )
        self.url = url

    def serving_pids(self) -> list[int]:
        """The Python processes of the server: BentoML's arbiter and its workers."""
        pids = []
        for pid in process_tree(self.process.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"bentoml" in part for part in cmdline) and b"python" in cmdline[0]:
                pids.append(pid)
        return pids

    def worker_pids(self) -> list[int]:
        found = []
        for pid in self.serving_pids():
            try:
                if b"worker.service" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                pass
        return found

    def cpu_by_pid(self) -> dict[int, float]:
        """CPU seconds (user + system) so far of each serving process."""
        found = {}
        for pid in self.serving_pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
        return found

    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_pid().values())

    def rss(self) -> dict[str, float]:
        return {str(pid): rss_mib(pid) for pid in self.serving_pids()}


def make_serve(
    home: Path,
    port: int,
    log: Path,
    tracking_uri: str | None = None,
    model: str | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    """`make serve` of the repo's service, started: on the champion of `tracking_uri`, or on
    `model` (a tag in the BentoML home). `ARGS=`: make hands the variables of a `make bench
    ARGS=...` around it on to this `make serve`, which would pass them to the server."""
    command = ["make", "--no-print-directory", "serve", "ARGS=", "HOST=127.0.0.1"]
    command += [f"PORT={port}", f"BENTOML_HOME={home}"]
    command += [f"MODEL={model}"] if model else [f"MLFLOW_TRACKING_URI={tracking_uri}"]
    url = f"http://127.0.0.1:{port}"
    env = env if env is not None else serve_env()
    return Server("make serve", url, command, cwd=REPO, env=env, log=log).start()


# --- load ------------------------------------------------------------------------------------


def load(url: str, body: tuple[Path, str], connections: int, seconds: float) -> dict:
    """One closed-loop `benchmarks.loadgen` run in its own process, in this module's terms."""
    return summary(loadgen.spawn(url, body, connections, seconds))


def summary(found: dict) -> dict:
    """A run's figures; a request left unanswered for over `STUCK_S` counts as an error
    ("stuck"), as a client's timeout would have."""
    statuses = found["statuses"]
    stuck = found["oldest_unanswered_ms"] > STUCK_S * 1000
    return {
        "connections": found["connections"],
        "requests": found["requests"],
        "seconds": found["seconds"],
        "requests_per_s": found["requests_per_s"],
        "latency_ms": found["latency_ms"],
        "statuses": statuses,
        "socket_errors": {**found["socket_errors"], "stuck": int(stuck)},
        "non_2xx": sum(n for status, n in statuses.items() if not status.startswith("2")),
        "unanswered_at_end": found["unanswered_at_end"],
        "oldest_unanswered_ms": found["oldest_unanswered_ms"],
    }


def scenario(server: Server, route: str, body, connections: int, seconds: float, **extra) -> dict:
    url = f"{server.url}/{route}"
    load(url, body, connections, 1)  # warm up this route and connection count
    # The generator stops with requests still in the server; they would hold places in its
    # concurrency limit for a moment and count against the next run's clients.
    time.sleep(DRAIN_S)
    before = server.cpu_by_pid()
    result = load(url, body, connections, seconds)
    after = server.cpu_by_pid()
    used = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    cpu = sum(used.values())
    result["server_cpu_ms_per_request"] = round(cpu * 1000 / max(1, result["requests"]), 3)
    # How the kernel spread the connections: each worker's share of the server's CPU time.
    workers = set(server.worker_pids())
    result["worker_cpu_share"] = sorted(
        (round(used[pid] / cpu, 2) if cpu else 0.0 for pid in used if pid in workers),
        reverse=True,
    )
    result["load_avg_1m"] = load_avg()[0]
    result.update(extra)
    return result


def soak(server: Server, body, seconds: float, connections: int = 8) -> dict:
    """`/predict` under `connections` clients for `seconds`; RSS of the serving processes each
    second. Growth = last minus first sample, after a 10% settling period."""
    command = loadgen.command(f"{server.url}/predict", body, connections, seconds)
    samples = []
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as running:
        start = time.monotonic()
        while running.poll() is None and time.monotonic() - start < seconds + 60:
            samples.append((round(time.monotonic() - start, 1), server.rss()))
            time.sleep(1)
        try:
            out = running.communicate(timeout=60)[0]
        finally:
            running.kill()  # a no-op once it has exited
    if running.returncode:
        raise RuntimeError(f"the soak's load generator exited with {running.returncode}")
    found = summary(loadgen.parse(out))
    totals = [(t, sum(r.values())) for t, r in samples if r]
    settled = totals[max(1, len(totals) // 10) :]
    first, last = settled[0], settled[-1]
    # Allocators and caches fill during the first minutes; a leak keeps growing after that.
    half = next(sample for sample in totals if sample[0] >= totals[-1][0] / 2)
    minutes = max(1e-9, (last[0] - first[0]) / 60)
    per_process_first = samples[max(1, len(samples) // 10)][1]
    per_process_last = samples[-1][1]
    return {
        "seconds": seconds,
        "connections": connections,
        "requests": found["requests"],
        "non_2xx": found["non_2xx"],
        "socket_errors": found["socket_errors"],
        "rss_total_mib": {
            "after_settling": first[1],
            "end": last[1],
            "max": max(v for _, v in totals),
            "growth": round(last[1] - first[1], 1),
            "growth_per_min": round((last[1] - first[1]) / minutes, 2),
            "growth_second_half": round(last[1] - half[1], 1),
        },
        "rss_total_series_mib": [[t, round(v, 1)] for t, v in totals[:: max(1, len(totals) // 30)]],
        "rss_per_process_mib": {
            pid: {"after_settling": per_process_first.get(pid), "end": mib}
            for pid, mib in per_process_last.items()
        },
    }


def run(
    tracking_uri: str, seconds: float, soak_s: float, workdir: Path, soak_only: bool = False
) -> dict:
    bodies = write_bodies(workdir)
    server = make_serve(workdir / "bentoml", free_port(), workdir / "serve.log", tracking_uri)
    try:
        server.wait_ready()
        result: dict = {
            "ready_after_s": round(server.ready_s, 1),
            "workers": len(server.worker_pids()),
            "rss_after_start_mib": server.rss(),
            "scenarios": {},
        }
        s = result["scenarios"]
        if soak_only:
            result["soak"] = soak(server, bodies["predict"], soak_s)
            return result
        s["predict_c1"] = scenario(server, "predict", bodies["predict"], 1, seconds)
        s["predict_c8"] = scenario(server, "predict", bodies["predict"], 8, seconds)
        for c in (16, 32, 64):
            s[f"predict_c{c}"] = scenario(server, "predict", bodies["predict"], c, seconds / 2)
        s["predict_batch_1img_c64"] = scenario(
            server, "predict_batch", bodies["batch1"], 64, seconds, images_per_request=1
        )
        for c in (1, 4, 8):
            s[f"predict_batch_64img_c{c}"] = scenario(
                server, "predict_batch", bodies["batch64"], c, seconds, images_per_request=64
            )
        s["feature_maps_png_c1"] = scenario(
            server, "feature_maps", bodies["feature_maps"], 1, seconds
        )
        for v in s.values():
            if "images_per_request" in v:
                v["images_per_s"] = round(v["requests_per_s"] * v["images_per_request"], 1)
        if soak_s > 0:
            result["soak"] = soak(server, bodies["predict"], soak_s)
        result["rss_at_end_mib"] = server.rss()
        return result
    finally:
        server.stop()


def default_tracking_uri() -> str:
    """The store `make train` writes to (conf/paths), from this working directory."""
    from convlens.config import settings

    return settings().tracking_uri


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--tracking-uri", default=None, help="MLflow store with a champion")
    p.add_argument("--seconds", type=float, default=5.0, help="per scenario")
    p.add_argument("--soak", type=float, default=60.0, help="seconds of the memory soak (0: none)")
    p.add_argument("--workdir", type=Path, default=None, help="keep bodies and logs here")
    p.add_argument("--soak-only", action="store_true", help="only the soak (e.g. --soak 300)")
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="convlens-bench-serve-"))
    workdir.mkdir(parents=True, exist_ok=True)
    uri = args.tracking_uri or default_tracking_uri()
    result = run(uri, args.seconds, args.soak, workdir, args.soak_only)
    print_json(result)
    merge_results(args.results, "serving_soak" if args.soak_only else "serving", result)
    return result


if __name__ == "__main__":
    main()
