"""The load generator behind `make bench`'s overload figures (`benchmarks.loadgen`), against a
server that answers one request at a time, each after 50 ms: a closed loop waits for every
answer before the next request; an open loop sends each request when it falls due, whatever
the answers do, so a slow server cannot slow its own load down (no coordinated omission)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from benchmarks.loadgen import run

SERVICE_S = 0.05
BODY = b"x" * 10


@dataclass
class SerialServer:
    url: str
    connections: int = 0  # accepted so far


async def serve_one_at_a_time(server: SerialServer, close_each: bool) -> asyncio.Server:
    one_at_a_time = asyncio.Lock()
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
    answer += b"Connection: close\r\n\r\nok" if close_each else b"\r\nok"

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    int(line.split(b":")[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                )
                await reader.readexactly(length)
                async with one_at_a_time:
                    await asyncio.sleep(SERVICE_S)
                writer.write(answer)
                await writer.drain()
                if close_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(connection, "127.0.0.1", 0)


async def shut_down(server: asyncio.Server) -> None:
    server.close()
    for task in asyncio.all_tasks() - {asyncio.current_task()}:
        task.cancel()


@contextlib.contextmanager
def serial_server(close_each: bool = False) -> Iterator[SerialServer]:
    """HTTP/1.1 on 127.0.0.1, in a thread of its own; every request waits for the one
    before it. With `close_each`, every answer closes its connection."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    found = SerialServer(url="")
    server = asyncio.run_coroutine_threadsafe(serve_one_at_a_time(found, close_each), loop)
    server = server.result(10)
    found.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/work"
    try:
        yield found
    finally:
        asyncio.run_coroutine_threadsafe(shut_down(server), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_closed_loop_sends_the_next_request_when_the_answer_is_in():
    with serial_server() as server:
        found = run(server.url, BODY, "text/plain", connections=1, seconds=0.5)
    assert 3 <= found["requests"] <= 10  # one at a time, 50 ms each
    assert found["statuses"] == {"200": found["requests"]}
    assert found["latency_ms"]["p50"] < 2 * SERVICE_S * 1000
    assert server.connections == 1
    assert "not_sent" not in found


def test_open_loop_sends_on_schedule_so_the_latencies_show_the_queue():
    """100 requests a second against 20 a second served: they go out as they fall due, not
    as answers come back, so the server's queue grows and the latencies say so, although
    each answer, once started, still takes 50 ms."""
    with serial_server() as server:
        found = run(server.url, BODY, "text/plain", connections=128, seconds=1.0, rate=100)
    assert found["offered_per_s"] == 100
    assert found["not_sent"] == 0
    assert found["requests"] <= 1.0 / SERVICE_S + 1
    assert found["unanswered_at_end"] >= 40
    assert found["latency_ms"]["max"] >= 6 * SERVICE_S * 1000
    assert found["latency_ms"]["p50"] > 2 * SERVICE_S * 1000


def test_open_loop_reuses_idle_connections():
    """At a rate the server keeps up with, a few kept-alive connections carry every request."""
    with serial_server() as server:
        found = run(server.url, BODY, "text/plain", connections=4, seconds=1.0, rate=8)
    assert found["not_sent"] == 0
    assert found["requests"] >= 3
    assert found["statuses"] == {"200": found["requests"]}
    # A request due in the last instant may not be on the wire yet: not unanswered, not done.
    assert found["arrivals"] - 1 <= found["requests"] + found["unanswered_at_end"]
    assert found["requests"] + found["unanswered_at_end"] <= found["arrivals"]
    assert server.connections <= 4 < found["arrivals"]


def test_open_loop_reconnects_when_the_server_closes_after_each_answer():
    with serial_server(close_each=True) as server:
        found = run(server.url, BODY, "text/plain", connections=4, seconds=1.0, rate=8)
    assert found["statuses"] == {"200": found["requests"]} and found["requests"] >= 3
    assert found["reconnects"] == found["requests"]
    assert found["socket_errors"] == {"connect": 0, "reset": 0}
    sent = found["requests"] + found["unanswered_at_end"]
    assert sent <= server.connections <= sent + 1


def test_open_loop_counts_arrivals_it_has_no_free_connection_for():
    with serial_server() as server:
        found = run(server.url, BODY, "text/plain", connections=2, seconds=0.5, rate=100)
    assert found["not_sent"] >= 20
    assert 3 <= found["requests"] <= 0.5 / SERVICE_S + 2
    assert server.connections == 2


def test_open_loop_refuses_a_rate_of_zero():
    with pytest.raises(ValueError, match="--rate must be above 0"):
        run("http://127.0.0.1:9/work", BODY, "text/plain", connections=1, seconds=0.1, rate=0)
