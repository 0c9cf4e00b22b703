"""The service against its peers, side by side: the same champion behind (a) `make serve`,
(b) plain FastAPI + uvicorn and (c) LitServe, driven by one load generator, interleaved.

    uv run --frozen python -m benchmarks.peers --tracking-uri sqlite:///path/mlflow.db
    uv run --frozen python -m benchmarks.peers --bentoml-home DIR --model convlens-mnist:v1-…
        [--rounds 3] [--seconds 3] [--results FILE]

All three run at once on 127.0.0.1 with the service's worker count (`serving/config.yaml`)
and one torch thread per worker. Each round runs every scenario against a, b, c in turn
(`benchmarks.loadgen`, its own process), so load from elsewhere on the machine hits all three
alike; the figures are medians over rounds, and each ratio is this service over the fastest
peer. Scenarios: `/predict` (one MNIST PNG, multipart) at 1 and 8 clients, `/predict_batch`
with 64 images a request at 4 clients. Also per scenario: each server's CPU ms per request
(all its processes, from /proc).

Then each server at half its 8-client rate, requests arriving on their own (`half_load`, open
loop). Then the service alone at twice its capacity (`overload`): refusal latency, and
accepted latency against the unloaded one, twice: with closed-loop clients (twice as many as
it holds, retrying at once) and with requests arriving at twice the rate it answers
(`open_overload`), in turn with a server that only refuses while its cores compute
(`benchmarks.peers.refusal_floor_app`): the floor under a refusal's latency here.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks import loadgen
from benchmarks.common import (
    REPO,
    load_avg,
    merge_results,
    parser,
    print_json,
    process_tree,
    serve_env,
)
from benchmarks.serving import CLOCK_TICKS, Server, make_serve, write_bodies
from tests.harness import free_port

THIS = "service"
OPEN_LOOP_CONNECTIONS = 512  # arrivals found one free at twice the capacity (`not_sent` says)
NO_RATE = "no rate to offer: the server answered no 200s at 8 clients"
PEERS = ("fastapi", "litserve")
FLOOR = "refusal_floor"
UVICORN_APPS = {
    "fastapi": "benchmarks.peers.fastapi_app:app",
    FLOOR: "benchmarks.peers.refusal_floor_app:app",
}
SCENARIOS = {  # name: (route, body, clients, images per request)
    "predict_c1": ("predict", "predict", 1, 1),
    "predict_c8": ("predict", "predict", 8, 1),
    "predict_batch_64img_c4": ("predict_batch", "batch64", 4, 64),
}


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = serve_env()
    env.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start_service(home: Path, workdir: Path, tracking_uri: str | None, model: str | None):
    log = workdir / "service.log"
    return make_serve(home, free_port(), log, tracking_uri, model, env=env_for(home))


def start_peer(name: str, workers: int, model_dir: Path, home: Path, workdir: Path) -> Server:
    port = free_port()
    if name in UVICORN_APPS:
        command = [sys.executable, "-m", "uvicorn", UVICORN_APPS[name]]
        command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
        command += ["--no-access-log"]
    else:
        command = [sys.executable, "-m", "benchmarks.peers.litserve_app"]
        command += ["--port", str(port), "--workers", str(workers)]
    env = env_for(home, CONVLENS_PEER_MODEL_DIR=str(model_dir))
    url = f"http://127.0.0.1:{port}"
    return Server(name, url, command, cwd=REPO, env=env, log=workdir / f"{name}.log").start()


def cpu_seconds(server: Server) -> float:
    """CPU seconds so far of every process of the server (all of its tree)."""
    total = 0.0
    for pid in process_tree(server.process.pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def measure(server: Server, scenario: str, bodies: dict, seconds: float) -> dict:
    route, body, clients, images = SCENARIOS[scenario]
    before = cpu_seconds(server)
    found = loadgen.spawn(f"{server.url}/{route}", bodies[body], clients, seconds)
    cpu = cpu_seconds(server) - before
    return {
        "requests_per_s": found["requests_per_s"],
        "ok_per_s": ok_per_s(found),
        "images_per_s": round(ok_per_s(found) * images, 1),
        "p50_ms": found["latency_ms"]["p50"],
        "p99_ms": found["latency_ms"]["p99"],
        "statuses": found["statuses"],
        "socket_errors": {k: v for k, v in found["socket_errors"].items() if v},
        "cpu_ms_per_request": round(cpu * 1000 / max(1, found["requests"]), 3),
        "load_avg_1m": load_avg()[0],
    }


def summarize(rounds: list[dict]) -> dict:
    """Medians over rounds per server and scenario; ratios of this service to the best peer."""
    summary: dict = {}
    for scenario in SCENARIOS:
        per_server = {}
        for server in (THIS, *PEERS):
            runs = [r[scenario][server] for r in rounds if server in r.get(scenario, {})]
            if not runs:
                continue
            per_server[server] = {
                key: round(statistics.median(run[key] for run in runs), 3)
                for key in ("ok_per_s", "images_per_s", "p50_ms", "p99_ms", "cpu_ms_per_request")
            }
            per_server[server]["non_200"] = sum(
                sum(v for k, v in run["statuses"].items() if k != "200") for run in runs
            )
        rate = "images_per_s" if SCENARIOS[scenario][3] > 1 else "ok_per_s"
        peers = {name: per_server[name] for name in PEERS if name in per_server}
        if THIS in per_server and peers:
            fastest = max(peers, key=lambda name: peers[name][rate])
            this, best = per_server[THIS], peers[fastest]
            per_server["fastest_peer"] = fastest
            per_server["ratio"] = round(this[rate] / best[rate], 3) if best[rate] else None
            per_server["p99_ratio"] = round(this["p99_ms"] / best["p99_ms"], 3)
            per_server["cpu_ratio"] = round(
                this["cpu_ms_per_request"] / best["cpu_ms_per_request"], 3
            )
            per_server["rate"] = rate
        summary[scenario] = per_server
    return summary


def overload(
    server: Server, floor: Server, bodies: dict, capacity: int, seconds: float, rounds: int
) -> dict:
    """The service: `/predict` at 1 client (unloaded), then at twice its capacity, with
    closed-loop clients and then open loop (`open_overload`, in turn with `floor`).

    Also what the closed loop itself allows (Little's law): `clients` requests always
    outstanding on `cores` CPUs that the generator and the server share, at `g + s` CPU
    seconds per request between them, take `clients * (g + s) / cores` on average at best.
    So a mean of 10 ms, let alone a p99, needs `g + s` within `10 ms * cores / clients`
    (`cpu_us_per_request_for_10_ms`), whatever else the server does. Slightly generous to the
    server: its CPU includes the requests still unanswered at the end, which are not counted,
    and `cores` are those this process may use, which the servers share."""
    unloaded = loadgen.spawn(f"{server.url}/predict", bodies["predict"], 1, seconds)
    time.sleep(1)
    before = cpu_seconds(server)
    loaded = loadgen.spawn(f"{server.url}/predict", bodies["predict"], 2 * capacity, seconds)
    server_cpu = cpu_seconds(server) - before
    time.sleep(1)
    cores = len(os.sched_getaffinity(0))
    generator_us = loaded["cpu_ms_per_request"] * 1000
    server_us = server_cpu * 1e6 / max(1, loaded["requests"])
    refused, accepted = answered(loaded)
    base = unloaded["latency_ms"]["p99"]
    return {
        "capacity": capacity,
        "clients": 2 * capacity,
        "statuses": loaded["statuses"],
        "socket_errors": loaded["socket_errors"],
        "refused_ms": refused,
        "accepted_ms": accepted,
        "unloaded_ms": unloaded["latency_ms"],
        "accepted_p99_vs_unloaded": p99_over(accepted, base),
        "ok_per_s": ok_per_s(loaded),
        "requests_per_s": loaded["requests_per_s"],
        "cores": cores,
        "generator_cpu_us_per_request": round(generator_us, 1),
        "server_cpu_us_per_request": round(server_us, 1),
        "cpu_us_per_request_for_10_ms": round(10_000 * cores / (2 * capacity), 1),
        "mean_ms_at_best": round(2 * capacity * (generator_us + server_us) / cores / 1000, 2),
        "mean_ms": round(2 * capacity / loaded["requests_per_s"] * 1000, 2),
        "open_loop": open_overload(server, floor, bodies, unloaded, seconds, rounds),
    }


def ok_per_s(found: dict) -> float:
    """200s a second in one load run."""
    return round(found["statuses"].get("200", 0) / found["seconds"], 1)


def ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 2) if value is not None and base else None


def p99_over(latency_ms: dict | None, base_ms: float | None) -> float | None:
    return ratio((latency_ms or {}).get("p99"), base_ms)


def answered(found: dict) -> tuple[dict, dict]:
    """(refused, accepted) latency percentiles of one load run; {} where there were none."""
    by_status = found["latency_ms_by_status"]
    return by_status.get("429") or by_status.get("503") or {}, by_status.get("200") or {}


def open_loop(server: Server, bodies: dict, rate: float, seconds: float) -> dict:
    """`/predict` with requests arriving at `rate` a second, Poisson, whatever the server
    answers (`loadgen --rate`), as users arrive: a refused one does not come straight back."""
    if rate <= 0:
        return {"error": NO_RATE}
    found = loadgen.spawn(
        f"{server.url}/predict", bodies["predict"], OPEN_LOOP_CONNECTIONS, seconds, rate
    )
    refused, accepted = answered(found)
    return {
        "offered_per_s": round(rate, 1),
        "statuses": found["statuses"],
        "ok_per_s": ok_per_s(found),
        "refused_ms": refused,
        "accepted_ms": accepted,
        "not_sent": found["not_sent"],
        "socket_errors": found["socket_errors"],
        "sent_late_ms": found["sent_late_ms"],
        "generator_cpu_us_per_request": round(found["cpu_ms_per_request"] * 1000, 1),
    }


def half_load(servers: dict[str, Server], bodies: dict, summary: dict, seconds: float) -> dict:
    """Each server at half its own 8-client rate, open loop: the p99 that Poisson arrivals
    alone cost (two requests now and then arrive together; one client never overlaps
    itself), beside its p99 at 1 client."""
    found = {}
    for name, server in servers.items():
        rate = summary["predict_c8"][name]["ok_per_s"] / 2
        found[name] = open_loop(server, bodies, rate, seconds)
        one = summary["predict_c1"][name]["p99_ms"]
        found[name]["p99_vs_1_client"] = p99_over(found[name].get("accepted_ms"), one)
        time.sleep(0.3)
    return found


def open_overload(
    server: Server, floor: Server, bodies: dict, unloaded: dict, seconds: float, rounds: int
) -> dict:
    """Twice the capacity as users make it: requests arriving at twice the rate the service
    answers (its 8-client rate, measured first). In turn with the refuse-only server at the
    same rate, `rounds` times (which goes first alternates); the p99s are medians over the
    rounds, the statuses the service's totals."""
    rate = measure(server, "predict_c8", bodies, seconds)["ok_per_s"]
    if rate <= 0:
        return {"capacity_per_s": rate, "error": NO_RATE}
    runs = []
    for number in range(rounds):
        pair = {}
        order = ((THIS, server), (FLOOR, floor))
        for name, target in order if number % 2 == 0 else order[::-1]:  # no drift favours one
            time.sleep(1)
            pair[name] = open_loop(target, bodies, 2 * rate, seconds)
        runs.append(pair)

    def median_p99(name: str, key: str) -> float | None:
        found = [run[name][key]["p99"] for run in runs if (run[name].get(key) or {}).get("p99")]
        return round(statistics.median(found), 3) if found else None

    refused, floor_refused = median_p99(THIS, "refused_ms"), median_p99(FLOOR, "refused_ms")
    accepted = median_p99(THIS, "accepted_ms")
    statuses = sum((Counter(run[THIS].get("statuses", {})) for run in runs), Counter())
    return {
        "capacity_per_s": rate,
        "offered_per_s": round(2 * rate, 1),
        "statuses": dict(statuses),
        "refused_p99_ms": refused,
        "accepted_p99_ms": accepted,
        "sent_late_p99_ms": median_p99(THIS, "sent_late_ms"),
        "accepted_p99_vs_unloaded": ratio(accepted, unloaded["latency_ms"]["p99"]),
        "floor_refused_p99_ms": floor_refused,
        "floor_sent_late_p99_ms": median_p99(FLOOR, "sent_late_ms"),
        "refused_p99_vs_floor": ratio(refused, floor_refused),
        "rounds": runs,
    }


def run(args, workdir: Path) -> dict:
    from serving.settings import CONFIG

    workers = CONFIG.workers
    bodies = write_bodies(workdir)
    home = args.bentoml_home or workdir / "bentoml"
    servers: dict[str, Server] = {}
    try:
        servers[THIS] = start_service(home, workdir, args.tracking_uri, args.model)
        servers[THIS].wait_ready()
        info = httpx.post(f"{servers[THIS].url}/model_info", timeout=30).json()
        name, version = info["bento_model"].split(":")
        model_dir = Path(home) / "models" / name / version
        for peer in PEERS:
            servers[peer] = start_peer(peer, workers, model_dir, Path(home), workdir)
        for peer in PEERS:
            servers[peer].wait_ready()
        for server in servers.values():  # warm up every route and connection count
            for scenario in SCENARIOS:
                route, body, clients, _ = SCENARIOS[scenario]
                loadgen.spawn(f"{server.url}/{route}", bodies[body], clients, 0.5)
        rounds = []
        for number in range(args.rounds):
            print(f"round {number + 1}/{args.rounds} (load {load_avg()[0]})", file=sys.stderr)
            current: dict = {}
            for scenario in SCENARIOS:
                current[scenario] = {}
                for name, server in servers.items():
                    current[scenario][name] = measure(server, scenario, bodies, args.seconds)
                    time.sleep(0.3)
            rounds.append(current)
        summary = summarize(rounds)
        result = {
            "workers": workers,
            "torch_threads": CONFIG.torch_threads,
            "model": info["bento_model"],
            "seconds_per_run": args.seconds,
            "rounds": rounds,
            "summary": summary,
            "half_load": half_load(servers, bodies, summary, args.seconds),
        }
        if args.overload:
            floor = servers[FLOOR] = start_peer(FLOOR, workers, model_dir, Path(home), workdir)
            floor.wait_ready()
            result["overload"] = overload(
                servers[THIS],
                floor,
                bodies,
                info["traffic"]["max_concurrency"],
                args.seconds,
                args.rounds,
            )
        return result
    finally:
        for server in servers.values():
            server.stop()


def markdown(result: dict) -> str:
    """The peer table of BENCHMARKS.md."""
    s = result["summary"]
    rows = [
        "| scenario | this service | plain FastAPI | LitServe | this / fastest peer | p99 ms "
        "(this / peer) | CPU ms per request (this / peer) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scenario, found in s.items():
        rate = found.get("rate", "ok_per_s")
        unit = "img/s" if rate == "images_per_s" else "req/s"
        cells = [
            f"{found[n][rate]:,.0f} {unit}, p50 {found[n]['p50_ms']:.1f}, p99 "
            f"{found[n]['p99_ms']:.1f} ms"
            if n in found
            else "–"
            for n in (THIS, *PEERS)
        ]
        peer = found.get("fastest_peer")
        rows.append(
            f"| {scenario} | {' | '.join(cells)} | **{found.get('ratio')}** ({peer}) | "
            f"{found[THIS]['p99_ms']:.1f} / {found[peer]['p99_ms']:.1f} | "
            f"{found[THIS]['cpu_ms_per_request']:.2f} / {found[peer]['cpu_ms_per_request']:.2f} |"
        )
    return "\n".join(rows)


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--tracking-uri", default=None, help="MLflow store with a champion")
    p.add_argument("--bentoml-home", type=Path, default=None, help="BentoML home (with --model)")
    p.add_argument("--model", default=None, help="a BentoML model tag in --bentoml-home")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="per scenario, server and round")
    p.add_argument("--no-overload", dest="overload", action="store_false")
    p.add_argument("--workdir", type=Path, default=None, help="keep bodies and logs here")
    args = p.parse_args(argv)
    if not args.model and not args.tracking_uri:
        from benchmarks.serving import default_tracking_uri

        args.tracking_uri = default_tracking_uri()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="convlens-bench-peers-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = run(args, workdir)
    print_json({k: v for k, v in result.items() if k != "rounds"})
    print(markdown(result))
    merge_results(args.results, "peers", result)
    return result


if __name__ == "__main__":
    main()
