"""The service scaffold every searchlab service shares, served for real by uvicorn on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field, SecretStr

from shared.batching import QueueFull
from shared.client import ServiceCallError, ServiceClient
from shared.config import ServiceSettings
from shared.processes import free_port
from shared.service import Overloaded, create_app, maps_to, state_dependency


class Unknown(LookupError):
    """A service's own error type, mapped to an HTTP error once, in create_app."""


Missing = Annotated[object, Depends(state_dependency("missing", "the missing thing is still loading"))]


class Echo(BaseModel):
    words: list[str] = Field(min_length=1)
    times: int = 1


def build_app(api_key: str | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ready = True
        app.state.busy_left = 2
        yield

    settings = ServiceSettings(max_body_bytes=2048, api_key=SecretStr(api_key) if api_key else None)
    app = create_app("echo", settings, lifespan, info=lambda a: {"answer": 42},
                     errors={Unknown: maps_to(404, "unknown_word", retry_after_s=7)})

    @app.post("/echo")
    async def echo(body: Echo) -> dict[str, list[str]]:
        return {"words": body.words * body.times}

    @app.post("/flaky")
    async def flaky() -> dict[str, str]:
        if app.state.busy_left > 0:
            app.state.busy_left -= 1
            raise Overloaded(retry_after_s=0)
        return {"status": "done"}

    @app.get("/word/{word}")
    async def word(word: str) -> dict[str, str]:
        if word == "full":
            raise QueueFull("the echo queue is full")
        raise Unknown(f"no word {word!r} here")

    @app.get("/missing")
    async def missing(thing: Missing) -> dict[str, str]:
        return {"thing": str(thing)}

    return app


def serve_in_thread(app: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    yield from serve_in_thread(build_app())


@pytest.fixture(scope="module")
def secured_url() -> Iterator[str]:
    yield from serve_in_thread(build_app(api_key="s3cret"))


def error_of(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


def test_ops_routes(url: str) -> None:
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    assert httpx.get(url + "/ready").status_code == 200
    assert httpx.get(url + "/info").json()["details"] == {"answer": 42}
    httpx.post(url + "/echo", json={"words": ["a"]})
    metrics = httpx.get(url + "/metrics").text
    assert 'searchlab_requests_total{route="/echo",service="echo",status="200"}' in metrics


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"words": "x"}', 422, "invalid_request"),
        (b'{"words": []}', 422, "invalid_request"),
        (b'{"words": ["a"], "times": "many"}', 422, "invalid_request"),
        (b"", 422, "invalid_request"),
        (b'{"words": ["' + b"x" * 4096 + b'"]}', 413, "payload_too_large"),
    ],
)
def test_bad_input_gets_a_clear_4xx(url: str, content: bytes, status: int, code: str) -> None:
    response = httpx.post(url + "/echo", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code
    assert error["message"]


def test_schema_errors_name_the_field(url: str) -> None:
    response = httpx.post(url + "/echo", json={"words": ["a"], "times": "many"})
    assert "times" in error_of(response)["message"]


def test_chunked_oversized_body_is_413(url: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"words": ["'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"]}'

    response = httpx.post(url + "/echo", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_unknown_route_is_json_404(url: str) -> None:
    response = httpx.get(url + "/nope")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_auth(secured_url: str) -> None:
    assert httpx.get(secured_url + "/health").status_code == 200
    assert httpx.post(secured_url + "/echo", json={"words": ["a"]}).status_code == 401
    wrong = httpx.post(secured_url + "/echo", json={"words": ["a"]}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = httpx.post(secured_url + "/echo", json={"words": ["a"]}, headers={"Authorization": "Bearer s3cret"})
    assert ok.json() == {"words": ["a"]}


def test_client_retries_overload_then_succeeds(url: str) -> None:
    client = ServiceClient(url, max_retries=3, backoff_base_s=0.01)
    assert client.request("POST", "/flaky").json() == {"status": "done"}


def test_client_gives_up_after_capped_retries(url: str) -> None:
    client = ServiceClient(url, max_retries=1, backoff_base_s=0.01)
    with pytest.raises(ServiceCallError) as info:
        client.request("POST", "/echo", json={"words": []})
    assert info.value.status == 422 and info.value.code == "invalid_request"
    dead = ServiceClient(f"http://127.0.0.1:{free_port()}", max_retries=2, backoff_base_s=0.01, timeout_s=1)
    started = time.monotonic()
    with pytest.raises(ServiceCallError) as info:
        dead.request("GET", "/health")
    assert info.value.status == 0
    assert time.monotonic() - started < 10  # capped: no retrying forever


def test_service_errors_map_to_their_status_code_and_headers(url: str) -> None:
    unknown = httpx.get(url + "/word/xyzzy")
    assert unknown.status_code == 404 and unknown.headers["retry-after"] == "7"
    assert error_of(unknown) == {"code": "unknown_word", "message": "no word 'xyzzy' here"}
    full = httpx.get(url + "/word/full")  # the shared batcher's QueueFull, in every service
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    assert error_of(full) == {"code": "overloaded", "message": "the echo queue is full"}


def test_a_state_dependency_is_503_not_ready_until_set(url: str) -> None:
    response = httpx.get(url + "/missing")
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert error_of(response) == {"code": "not_ready", "message": "the missing thing is still loading"}
