"""How requests flow through a worker (`serving.traffic`): the count at the door and the queue
to the API thread. The same behaviour under real load, over HTTP, is `tests/test_overload.py`'s
and `make bench`'s (`benchmarks.peers`, overload)."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time

import pytest

from serving.traffic import REFUSED, Admission, APIThreads


class HeldApp:
    """An ASGI app that answers 200 once `release` is set, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self, scope: dict, receive, send) -> None:
        self.calls += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def request(path: str) -> dict:
    return {"type": "http", "method": "POST", "path": path, "headers": []}


async def call(app, scope: dict) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_admission_refuses_over_the_limit_with_429_in_the_error_shape_without_calling_the_app():
    async def scenario() -> tuple[list[list[dict]], int]:
        inner = HeldApp()
        gate = Admission(inner, routes={"/predict"}, limit=2)
        held = [asyncio.create_task(call(gate, request("/predict"))) for _ in range(2)]
        await asyncio.sleep(0)
        refused = await call(gate, request("/predict"))
        calls_while_full = inner.calls
        inner.release.set()
        return [refused, *await asyncio.gather(*held)], calls_while_full

    (refused, *served), calls_while_full = asyncio.run(scenario())
    assert calls_while_full == 2
    start, body = refused
    assert start["status"] == 429
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"retry-after"] == b"1"
    assert int(headers[b"content-length"]) == len(body["body"])
    assert json.loads(body["body"]) == {"error": REFUSED}
    assert [answer[0]["status"] for answer in served] == [200, 200]


def test_admission_counts_a_request_out_when_it_is_answered():
    async def scenario() -> list[int]:
        inner = HeldApp()
        inner.release.set()
        gate = Admission(inner, routes={"/predict"}, limit=1)
        statuses = []
        for _ in range(3):  # one at a time: never over the limit
            statuses.append((await call(gate, request("/predict")))[0]["status"])
        return statuses + [gate.in_flight]

    assert asyncio.run(scenario()) == [200, 200, 200, 0]


def test_admission_lets_health_and_other_paths_through_when_full():
    async def scenario() -> list[int]:
        inner = HeldApp()
        gate = Admission(inner, routes={"/predict"}, limit=1)
        held = asyncio.create_task(call(gate, request("/predict")))
        await asyncio.sleep(0)
        others = [asyncio.create_task(call(gate, request(p))) for p in ("/readyz", "/metrics")]
        await asyncio.sleep(0)
        inner.release.set()
        answers = await asyncio.gather(held, *others)
        return [answer[0]["status"] for answer in answers]

    assert asyncio.run(scenario()) == [200, 200, 200]


def test_off_loop_keeps_the_signature_bentoml_reads():
    threads = APIThreads(1)

    def predict(self, image: str, layer: str = "conv1") -> dict:
        """Docs."""
        return {}

    queued = threads.off_loop(predict)
    assert inspect.iscoroutinefunction(queued)
    assert inspect.signature(queued) == inspect.signature(predict)
    assert queued.__doc__ == "Docs." and queued.__name__ == "predict"


def test_off_loop_runs_each_call_on_the_api_thread_one_at_a_time_in_order():
    threads = APIThreads(1)
    running: list[int] = []
    log: list[tuple[int, str, int]] = []

    @threads.off_loop
    def work(number: int) -> int:
        running.append(number)
        log.append((number, threading.current_thread().name, len(running)))
        time.sleep(0.01)
        running.remove(number)
        return number * 10

    async def scenario() -> list[int]:
        loop_thread = threading.current_thread().name
        results = await asyncio.gather(*(work(n) for n in range(6)))
        assert all(name != loop_thread for _, name, _ in log)
        return results

    assert asyncio.run(scenario()) == [0, 10, 20, 30, 40, 50]
    assert [number for number, _, _ in log] == list(range(6))
    assert {name for _, name, _ in log} == {log[0][1]} and log[0][1].startswith("convlens-api")
    assert max(concurrent for *_, concurrent in log) == 1


def test_the_service_app_is_wrapped_by_admission_outside_bentoml():
    from serving.service import ConvLens
    from serving.settings import CONFIG

    app = ConvLens.to_asgi()
    assert isinstance(app, Admission)
    assert app.limit == CONFIG.threads * CONFIG.max_in_flight_per_thread
    assert "/predict" in app.routes and "/readyz" not in app.routes
    assert type(app.app).__name__ == "Starlette"  # BentoML's whole app, middleware and all


def test_every_api_knows_its_answer_media_type_without_building_a_json_schema(monkeypatch):
    from serving.service import ConvLens

    def built(*args, **kwargs):
        pytest.fail("an answer's media type was found by building its JSON schema")

    found = {}
    for name, method in ConvLens.apis.items():
        monkeypatch.setattr(method.output_spec, "model_json_schema", built)
        found[name] = method.output_spec.mime_type()
    assert found["predict_batch"] == found["model_info"] == found["predict"] == "application/json"
    assert found["preprocessed"] == "image/png"


def test_the_refusal_floor_refuses_every_api_request_with_the_services_answer():
    """`benchmarks.peers.refusal_floor_app`, the reference for a refusal's latency, answers
    exactly what the service's door does, and nothing else: health checks pass."""
    from benchmarks.peers import refusal_floor_app as floor

    async def scenario() -> dict[str, list[dict]]:
        return {path: await call(floor.app, request(path)) for path in ("/predict", "/readyz")}

    before = floor.last_request
    answers = asyncio.run(scenario())
    door = Admission(HeldApp(), routes={"/predict"}, limit=0)
    service = asyncio.run(call(door, request("/predict")))
    assert answers["/predict"] == service and service[0]["status"] == 429
    assert answers["/readyz"][0]["status"] == 200
    assert floor.last_request > before  # what keeps its API threads computing


def test_a_refusal_floor_without_its_model_fails_its_startup(monkeypatch):
    """Rather than refuse on idle cores and report a floor that is not one."""
    import torch

    from benchmarks.peers import refusal_floor_app as floor
    from benchmarks.peers.champion import MODEL_DIR_ENV

    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # this process keeps its own
    sent: list[dict] = []

    async def scenario() -> None:
        async def receive() -> dict:
            return {"type": "lifespan.startup"}

        async def send(message: dict) -> None:
            sent.append(message)

        await floor.app({"type": "lifespan"}, receive, send)

    asyncio.run(scenario())
    assert [message["type"] for message in sent] == ["lifespan.startup.failed"]
    assert MODEL_DIR_ENV in sent[0]["message"]
