"""Overload: more requests than the service may hold get 429/503 at once, and the health
endpoints keep answering.

The session server runs one worker, so it holds threads x max_in_flight_per_thread requests
(`serving/config.yaml`). The load test keeps twice that many requests outstanding for a fixed
few seconds over loopback, with `benchmarks.loadgen` in two processes of their own (2 of 3
clients on /predict, the rest on /predict_batch: raw keep-alive sockets, latency per status),
while this process probes /livez and /readyz. It records throughput, latency percentiles and
answers by status in `overload.json` under the test's tmp dir (and one line of test output),
and asserts only functional bounds: every answer is a 200 or a quick 429/503, never a socket
error, a timeout or a 5xx of another kind, and /livez and /readyz answer throughout. Speed is
`make bench`'s (`benchmarks.peers`, overload).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter

import httpx
import numpy as np

from benchmarks import loadgen
from tests.harness import REPO, digit_png

pytest_plugins = ["tests.serving_fixtures"]

DURATION_S = 8.0
CLIENT_TIMEOUT_S = 15.0  # under the server's 30 s: a request piling up would show as an error
PROBE_EVERY_S = 0.25


def test_concurrency_limit_is_workers_times_threads_times_queue():
    from serving.service import ConvLens
    from serving.settings import CONFIG, ServingConfig

    for workers in ("1", "3"):
        config = ServingConfig.load(env={"CONVLENS_WORKERS": workers})
        per_worker = config.threads * config.max_in_flight_per_thread
        assert config.max_concurrency == int(workers) * per_worker
    assert CONFIG.threads >= 1 and CONFIG.max_in_flight_per_thread >= 1
    assert ConvLens.config["threads"] == CONFIG.threads
    assert ConvLens.config["workers"] == CONFIG.workers
    traffic = ConvLens.config["traffic"]
    assert traffic["max_concurrency"] == CONFIG.max_concurrency
    assert traffic["timeout"] == CONFIG.timeout_s


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ms = np.asarray(values) * 1000
    return {
        "p50": round(float(np.percentile(ms, 50)), 1),
        "p95": round(float(np.percentile(ms, 95)), 1),
        "p99": round(float(np.percentile(ms, 99)), 1),
        "max": round(float(ms.max()), 1),
    }


def bodies(folder) -> dict[str, tuple]:
    """The two request bodies, written once: (file, content type) for `benchmarks.loadgen`."""
    image = httpx.Request("POST", "http://x", files={"image": ("d.png", digit_png(), "image/png")})
    batch = json.dumps({"images": [np.zeros((28, 28), np.uint8).tolist()]}).encode()
    (folder / "predict.body").write_bytes(image.read())
    (folder / "batch.body").write_bytes(batch)
    return {
        "/predict": (folder / "predict.body", image.headers["content-type"]),
        "/predict_batch": (folder / "batch.body", "application/json"),
    }


def load_process(url: str, body: tuple, clients: int, duration: float) -> subprocess.Popen:
    command = loadgen.command(url, body, clients, duration)
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)


def run_load(url: str, clients: int, duration: float, folder) -> dict:
    """`clients` connections, each with one request always outstanding (2 of 3 on /predict,
    the rest on /predict_batch), plus a prober of /livez and /readyz, for `duration` seconds."""
    found = bodies(folder)
    batch_clients = clients // 3
    loads = {
        "/predict": load_process(
            f"{url}/predict", found["/predict"], clients - batch_clients, duration
        ),
        "/predict_batch": load_process(
            f"{url}/predict_batch", found["/predict_batch"], batch_clients, duration
        ),
    }
    probes: list[tuple[str, int | str, float]] = []

    async def prober() -> None:
        deadline = time.monotonic() + duration
        async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT_S) as own:
            while time.monotonic() < deadline:
                for path in ("/livez", "/readyz"):
                    start = time.monotonic()
                    try:
                        outcome: int | str = (await own.get(path)).status_code
                    except httpx.HTTPError as error:
                        outcome = type(error).__name__
                    probes.append((path, outcome, time.monotonic() - start))
                await asyncio.sleep(PROBE_EVERY_S)

    asyncio.run(prober())
    results = {}
    for route, process in loads.items():
        results[route] = loadgen.parse(process.communicate(timeout=duration + 120)[0])
    outcomes = Counter()
    for found_route in results.values():
        outcomes.update(found_route["statuses"])
        outcomes.update({k: v for k, v in found_route["socket_errors"].items() if v})
    elapsed = max(r["seconds"] for r in results.values())

    def latency(*statuses: str) -> dict | None:  # /predict's, else /predict_batch's
        for route in ("/predict", "/predict_batch"):
            for status in statuses:
                if status in results[route]["latency_ms_by_status"]:
                    return results[route]["latency_ms_by_status"][status]
        return None

    return {
        "clients": clients,
        "duration_s": round(elapsed, 2),
        "requests": sum(r["requests"] for r in results.values()),
        "requests_per_s": round(sum(r["requests"] for r in results.values()) / elapsed, 1),
        "ok_per_s": round(outcomes.get("200", 0) / elapsed, 1),
        "outcomes": dict(outcomes),
        "outcomes_by_route": {route: r["statuses"] for route, r in results.items()},
        "latency_ms_ok": latency("200"),
        "latency_ms_refused": latency("429", "503"),
        "oldest_unanswered_ms": max(r["oldest_unanswered_ms"] for r in results.values()),
        "probes": dict(Counter(f"{path} {outcome}" for path, outcome, _ in probes)),
        "latency_ms_probes": percentiles([seconds for *_, seconds in probes]),
    }


def test_twice_the_capacity_gets_fast_refusals_and_health_keeps_answering(served, tmp_path, capsys):
    info = httpx.post(f"{served}/model_info", timeout=30).json()["traffic"]
    capacity = info["max_concurrency"]  # this one-worker server's whole capacity
    report = run_load(served, 2 * capacity, DURATION_S, tmp_path)
    report["capacity"] = capacity
    report["server_timeout_s"] = info["timeout_s"]
    (tmp_path / "overload.json").write_text(json.dumps(report, indent=2))
    with capsys.disabled():
        print(
            f"\noverload: {report['clients']} clients for {report['duration_s']} s against "
            f"capacity {capacity}: {report['requests_per_s']} req/s ({report['ok_per_s']} ok/s), "
            f"outcomes {report['outcomes']}, ok ms {report['latency_ms_ok']}, "
            f"refused ms {report['latency_ms_refused']}, probes {report['probes']} "
            f"ms {report['latency_ms_probes']} -> {tmp_path / 'overload.json'}"
        )

    outcomes = report["outcomes"]
    assert set(outcomes) <= {"200", "429", "503"}, outcomes  # no timeouts, resets, 500s
    assert outcomes.get("200", 0) > 0, "nothing was served under overload"
    refused = outcomes.get("429", 0) + outcomes.get("503", 0)
    assert refused > 0, "twice the capacity in flight, yet nothing was refused"
    # Refusals skip the queue: they come back sooner than served requests, and nowhere near
    # the timeout; and nothing that was accepted waited anywhere near it either.
    timeout_ms = info["timeout_s"] * 1000
    ok, fast = report["latency_ms_ok"], report["latency_ms_refused"]
    assert fast["p50"] <= ok["p50"], (fast, ok)
    assert fast["max"] < timeout_ms / 3, fast
    assert ok["max"] < timeout_ms / 2, ok
    assert report["oldest_unanswered_ms"] < timeout_ms / 2, report  # none piled up either
    # The health endpoints bypass the limit: they answered 200 all along.
    probes = report["probes"]
    assert set(probes) == {"/livez 200", "/readyz 200"}, probes
    assert probes["/readyz 200"] >= DURATION_S / (PROBE_EVERY_S + 1), probes

    with httpx.Client(base_url=served, timeout=30) as http:
        assert http.get("/readyz").status_code == 200
        files = {"image": ("d.png", digit_png(), "image/png")}
        assert http.post("/predict", files=files).status_code == 200


def test_refusals_use_the_one_error_shape(served):
    """A refusal is {"error": ...} like every other error, and says when to retry (checked on
    real ones)."""
    capacity = httpx.post(f"{served}/model_info", timeout=30).json()["traffic"]["max_concurrency"]

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=3 * capacity)
        async with httpx.AsyncClient(base_url=served, timeout=30, limits=limits) as http:
            files = {"image": ("d.png", digit_png(), "image/png")}
            return await asyncio.gather(
                *(http.post("/predict", files=files) for _ in range(3 * capacity))
            )

    responses = asyncio.run(burst())
    refused = [r for r in responses if r.status_code in (429, 503)]
    assert refused, Counter(r.status_code for r in responses)
    for response in refused:
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert set(body) == {"error"} and isinstance(body["error"], str)
        assert response.headers["retry-after"] == "1"
