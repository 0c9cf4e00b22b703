"""The load generator behind `make bench`'s overload figures (`benchmarks.loadgen`), against a
server that answers one request at a time, each after 50 ms: a closed loop waits for every
answer before the next request; an open loop sends each request when it falls due, whatever
the answers do, so a slow server cannot slow its own load down (no coordinated omission)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from benchmarks.loadgen import run

SERVICE_S = 0.05
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


async def serve_one_at_a_time() -> asyncio.Server:
    one_at_a_time = asyncio.Lock()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(connection, "127.0.0.1", 0)


async def shut_down(server: asyncio.Server) -> None:
    server.close()
    for task in asyncio.all_tasks() - {asyncio.current_task()}:
        task.cancel()


@pytest.fixture(scope="module")
def serial_server() -> Iterator[str]:
    """HTTP/1.1 keep-alive on 127.0.0.1, in a thread; every request waits for the one before."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(serve_one_at_a_time(), loop).result(10)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/work"
    asyncio.run_coroutine_threadsafe(shut_down(server), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_closed_loop_sends_the_next_request_when_the_answer_is_in(serial_server):
    found = run(serial_server, b"x" * 10, "text/plain", connections=1, seconds=0.5)
    assert 4 <= found["requests"] <= 10  # one at a time, 50 ms each
    assert found["statuses"] == {"200": found["requests"]}
    assert found["latency_ms"]["max"] < 4 * SERVICE_S * 1000
    assert "not_sent" not in found


def test_open_loop_sends_on_schedule_so_the_latencies_show_the_queue(serial_server):
    """100 requests a second against 20 a second served: they go out as they fall due, not
    as answers come back, so the server's queue grows and the latencies say so, although
    each answer, once started, still takes 50 ms."""
    found = run(serial_server, b"x" * 10, "text/plain", connections=128, seconds=1.0, rate=100)
    assert found["offered_per_s"] == 100
    assert found["not_sent"] == 0
    assert found["requests"] <= 1.0 / SERVICE_S + 1
    assert found["unanswered_at_end"] >= 40
    assert found["latency_ms"]["max"] >= 6 * SERVICE_S * 1000
    assert found["latency_ms"]["p50"] > 2 * SERVICE_S * 1000


def test_open_loop_counts_arrivals_it_has_no_free_connection_for(serial_server):
    found = run(serial_server, b"x" * 10, "text/plain", connections=2, seconds=0.5, rate=100)
    assert found["not_sent"] >= 20
    assert found["requests"] <= 0.5 / SERVICE_S + 2
