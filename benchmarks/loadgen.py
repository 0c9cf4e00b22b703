"""An HTTP/1.1 keep-alive load generator, closed or open loop, run in its own process.

    uv run --frozen python -m benchmarks.loadgen --url http://127.0.0.1:3000/predict \
        --body-file predict.body --content-type 'multipart/form-data; boundary=x' \
        --connections 8 --seconds 5 [--rate 2000]

Closed loop (the default): each of `--connections` sockets sends the same prepared POST again
and again, the next one as soon as the answer is complete (like `wrk` and `ab -k`). Open loop
(`--rate`): requests arrive at that mean rate, Poisson, whatever the server answers, as users
do; each goes out on an idle connection of at most `--connections`, and its latency counts
from when it was due, so a slow server cannot slow the arrivals down (no coordinated
omission). Either way a connection is opened again when the server closes it.

Prints one JSON line (starting with "LOADGEN ") with requests/s, answers by status and latency
percentiles, overall and per status: a refusal (429) and a served request (200) are timed
apart, which `wrk` cannot do.

Raw non-blocking sockets and `selectors`, no HTTP library: the generator shares the machine
with the servers it measures, so it must cost little CPU per request (~30 µs here closed,
80-210 µs open, where each wake-up finds fewer answers), the same for every server. Every
server it drives is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import math
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

PREFIX = "LOADGEN "
RECV_BYTES = 1 << 16


def request_bytes(url: str, body: bytes, content_type: str) -> tuple[tuple[str, int], bytes]:
    parts = urlsplit(url)
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return (parts.hostname or "127.0.0.1", parts.port or 80), head.encode() + body


class Connection:
    """One client: a socket, the request being sent and the answer being read."""

    def __init__(self, address: tuple[str, int], request: bytes):
        self.address, self.request = address, request
        self.sock: socket.socket | None = None
        self.parked = False
        self.sent = 0
        self.buffer = bytearray()
        self.started = 0.0
        self.expect: int | None = None  # total answer bytes, once the headers are in

    def open(self, selector: selectors.BaseSelector) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.sock.connect_ex(self.address)
        selector.register(self.sock, selectors.EVENT_WRITE, self)

    def close(self, selector: selectors.BaseSelector) -> None:
        if self.sock is not None:
            if not self.parked:
                selector.unregister(self.sock)
            self.sock.close()
            self.sock, self.parked = None, False

    def begin(self, selector: selectors.BaseSelector, now: float) -> None:
        self.sent, self.buffer, self.expect, self.started = 0, bytearray(), None, now
        if self.sock is None:
            self.open(selector)
        elif self.parked:
            selector.register(self.sock, selectors.EVENT_WRITE, self)
        else:
            selector.modify(self.sock, selectors.EVENT_WRITE, self)
        self.parked = False

    def park(self, selector: selectors.BaseSelector) -> None:
        """Idle between requests (open loop): kept open, not watched."""
        if self.sock is not None and not self.parked:
            selector.unregister(self.sock)
            self.parked = True

    def parse(self) -> tuple[int, bool] | None:
        """(status, server closes) once the whole answer is in the buffer, else None."""
        if self.expect is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            self.status = int(head[0].split(" ", 2)[1])
            headers = {}
            for line in head[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip().lower()
            self.closes = headers.get("connection") == "close"
            if "content-length" in headers:
                self.expect = end + 4 + int(headers["content-length"])
            elif headers.get("transfer-encoding") == "chunked":
                self.expect = -1
            else:
                self.expect = end + 4
        if self.expect == -1:
            if not self.buffer.endswith(b"0\r\n\r\n"):
                return None
        elif len(self.buffer) < self.expect:
            return None
        return self.status, self.closes


def run(
    url: str,
    body: bytes,
    content_type: str,
    connections: int,
    seconds: float,
    rate: float | None = None,
) -> dict:
    """Closed loop over `connections` clients; or, with `rate`, an open loop: requests arrive
    at that mean rate (Poisson, seeded) whatever the answers do, each on an idle connection
    of at most `connections`, and its latency counts from its scheduled arrival."""
    if rate is not None and rate <= 0:
        raise ValueError(f"--rate must be above 0 requests a second, not {rate}")
    address, request = request_bytes(url, body, content_type)
    selector = selectors.DefaultSelector()
    clients = [Connection(address, request) for _ in range(connections)]
    idle: list[Connection] = []  # last in, first out, like urllib3's pool
    cpu_start, start = time.process_time(), time.perf_counter()
    if rate is None:
        for client in clients:
            client.open(selector)
            client.begin(selector, start)
    else:
        idle = clients[::-1]
        gaps = np.random.default_rng(0).exponential(1 / rate, int(rate * seconds * 2) + 16)
        arrivals = iter((start + np.cumsum(gaps)).tolist())
        arrival = next(arrivals, math.inf)
    deadline = start + seconds
    latencies: dict[int, list[float]] = {}
    errors = {"connect": 0, "reset": 0}
    reconnects = not_sent = 0
    late: list[float] = []
    while (now := time.perf_counter()) < deadline:
        if rate is not None:
            while arrival <= now:
                if idle:
                    idle.pop().begin(selector, arrival)
                    late.append(now - arrival)
                else:
                    not_sent += 1
                arrival = next(arrivals, math.inf)
            wait = min(0.05, deadline - now, max(0.0, arrival - now))
        else:
            wait = min(0.05, deadline - now)
        for key, events in selector.select(timeout=wait):
            client: Connection = key.data
            try:
                if events & selectors.EVENT_WRITE:
                    client.sent += client.sock.send(memoryview(client.request)[client.sent :])
                    if client.sent == len(client.request):
                        selector.modify(client.sock, selectors.EVENT_READ, client)
                    continue
                data = client.sock.recv(RECV_BYTES)
            except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError) as error:
                kind = "connect" if isinstance(error, ConnectionRefusedError) else "reset"
                errors[kind] += 1
                data = b""
            if not data:  # closed before a whole answer: count it, reconnect, send again
                if client.buffer:
                    errors["reset"] += 1
                client.close(selector)
                client.begin(selector, time.perf_counter() if rate is None else client.started)
                continue
            client.buffer += data
            done = client.parse()
            if done is None:
                continue
            status, closes = done
            finished = time.perf_counter()
            latencies.setdefault(status, []).append(finished - client.started)
            if closes:
                reconnects += 1
                client.close(selector)
            if rate is None:
                client.begin(selector, finished)
            else:
                client.park(selector)
                idle.append(client)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    # Requests still unanswered at the end: their age shows a request piling up in a server.
    busy = [client for client in clients if client.sock is not None and not client.parked]
    waiting = [elapsed - (client.started - start) for client in busy if client.sent]
    for client in clients:
        client.close(selector)
    everything = [x for values in latencies.values() for x in values]
    found = {
        "connections": connections,
        "seconds": round(elapsed, 3),
        "requests": len(everything),
        "requests_per_s": round(len(everything) / elapsed, 1),
        "statuses": {str(k): len(v) for k, v in sorted(latencies.items())},
        "latency_ms": percentiles(everything),
        "latency_ms_by_status": {str(k): percentiles(v) for k, v in sorted(latencies.items())},
        "socket_errors": errors,
        "reconnects": reconnects,
        "unanswered_at_end": len(waiting),
        "oldest_unanswered_ms": round(max(waiting, default=0.0) * 1000, 3),
        # The generator's own CPU: on a shared machine it is CPU the servers cannot have.
        "cpu_ms_per_request": round(cpu * 1000 / max(1, len(everything)), 4),
    }
    if rate is not None:
        # Arrivals with every connection busy were not sent: the figures then understate.
        found.update(
            offered_per_s=rate,
            arrivals=len(late) + not_sent,
            not_sent=not_sent,
            sent_late_ms=percentiles(late),
        )
    return found


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ms = np.asarray(values) * 1000
    found = np.percentile(ms, [50, 90, 99])
    return {
        "p50": round(float(found[0]), 3),
        "p90": round(float(found[1]), 3),
        "p99": round(float(found[2]), 3),
        "max": round(float(ms.max()), 3),
    }


def command(
    url: str, body: tuple[Path, str], connections: int, seconds: float, rate: float | None = None
) -> list[str]:
    """The command line of one run in a process of its own: `body` is (file, content type)."""
    path, content_type = body
    line = [sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--body-file", str(path)]
    line += ["--content-type", content_type, "--connections", str(connections)]
    line += ["--seconds", str(seconds)] + (["--rate", str(rate)] if rate is not None else [])
    return line


def parse(stdout: str) -> dict:
    """The figures a run printed."""
    return json.loads(next(x for x in stdout.splitlines() if x.startswith(PREFIX))[len(PREFIX) :])


def spawn(
    url: str, body: tuple[Path, str], connections: int, seconds: float, rate: float | None = None
) -> dict:
    """One run in a process of its own, so that its CPU is not the caller's; its figures."""
    found = subprocess.run(
        command(url, body, connections, seconds, rate),
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    if found.returncode:
        raise RuntimeError(f"benchmarks.loadgen exited with {found.returncode}: {found.stderr}")
    return parse(found.stdout)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--body-file", type=Path, required=True)
    p.add_argument("--content-type", required=True)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rate", type=float, help="open loop: requests a second, Poisson arrivals")
    args = p.parse_args(argv)
    body = args.body_file.read_bytes()
    result = run(args.url, body, args.content_type, args.connections, args.seconds, args.rate)
    sys.stdout.write(PREFIX + json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
