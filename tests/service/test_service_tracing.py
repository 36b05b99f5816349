"""OpenTelemetry tracing (setting `tracing`): a server span per request with the request id and the model,
and under it the phases Server-Timing reports, each inside the request and in order; off by default."""
from __future__ import annotations

import builtins
import json

import httpx
import pytest
from websockets.asyncio.client import connect

from live_server import live_server
from svc_helpers import random_rgb, to_png

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.instrumentation.fastapi")

from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from enet_serve.service import tracing  # noqa: E402
from enet_serve.service.app import create_app  # noqa: E402
from enet_serve.service.settings import Settings  # noqa: E402


@pytest.fixture
def spans(monkeypatch):
    exporter = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "span_processor", lambda kind: SimpleSpanProcessor(exporter))
    return exporter


def server_span(finished, path: str):
    found = [s for s in finished if s.kind.name == "SERVER" and s.attributes.get("http.route") == path]
    assert len(found) == 1, [(s.name, s.kind.name, dict(s.attributes)) for s in finished]
    return found[0]


async def test_a_segment_request_is_one_trace_with_its_phases(serve, spans):
    client = await serve(tracing="console")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"  # the client's W3C trace context: the spans join its trace
    r = await client.post("/segment?format=png", content=to_png(random_rgb(3)),
                          headers={"X-Request-ID": "trace-me-1", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert r.status_code == 200
    finished = spans.get_finished_spans()
    request = server_span(finished, "/segment")
    assert f"{request.context.trace_id:032x}" == trace_id and request.parent.span_id == 0x00f067aa0ba902b7
    assert request.attributes["enet_serve.request_id"] == "trace-me-1"
    assert request.attributes["enet_serve.model"] == "enet-camvid"
    phases = {s.name: s for s in finished if s.parent is not None and s.parent.span_id == request.context.span_id}
    assert set(phases) == {"decode", "queue", "infer", "encode"}
    order = [phases[n] for n in ("decode", "queue", "infer", "encode")]
    slack = 5_000_000  # ns: the phases' ends are taken just after the fact, on another thread's clock read
    for earlier, later in zip(order, order[1:]):
        assert earlier.end_time <= later.start_time + slack, (earlier.name, later.name)
    for phase in order:
        assert request.start_time - slack <= phase.start_time <= phase.end_time <= request.end_time + slack
    # the same phases as the Server-Timing header, to the millisecond
    header = dict(part.split(";dur=") for part in r.headers["server-timing"].split(", "))
    for name, phase in phases.items():
        assert abs((phase.end_time - phase.start_time) / 1e6 - float(header[name])) < 0.02


async def test_health_and_metrics_are_not_traced(serve, spans):
    client = await serve(tracing="console")
    assert (await client.get("/health/ready")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200
    assert (await client.get("/models")).status_code == 200
    routes = {s.attributes.get("http.route") for s in spans.get_finished_spans() if s.kind.name == "SERVER"}
    assert routes == {"/models"}


KEY = "s3cret-key-42"


def _attribute_values(finished) -> str:
    return json.dumps([dict(s.attributes) for s in finished] + [s.name for s in finished])


async def test_the_stream_is_not_traced_and_its_key_never_exported(tiny_repo, spans):
    """The stream's `?api_key=` must not reach a span: the stream is not traced at all (as documented)."""
    settings = Settings(repository=tiny_repo, tracing="console", api_keys=[KEY], tune_batch_size=False,
                        access_log=False)
    with live_server(settings) as base:
        async with connect(base.replace("http://", "ws://") + f"/segment/stream?format=json&api_key={KEY}") as ws:
            await ws.send(to_png(random_rgb(5)))
            assert json.loads(await ws.recv())["frame"] == 0
        async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": KEY}) as client:
            assert (await client.get("/models")).status_code == 200
    finished = spans.get_finished_spans()  # the server has stopped: every span has ended
    assert [s.attributes.get("http.route") for s in finished if s.kind.name == "SERVER"] == ["/models"]
    assert KEY not in _attribute_values(finished)


@pytest.mark.parametrize("name", ["api_key", "api%5Fkey", "API_KEY"])
async def test_a_key_in_a_traced_url_is_blanked(serve, spans, name):
    client = await serve(tracing="console", api_keys=[KEY])
    r = await client.get(f"/models?x=1&{name}={KEY}&y=2", headers={"X-API-Key": KEY})
    assert r.status_code == 200
    finished = spans.get_finished_spans()
    url = server_span(finished, "/models").attributes["http.url"]
    assert url.endswith("/models?x=1&" + ("api_key" if name == "api%5Fkey" else name) + "=***&y=2"), url
    assert KEY not in _attribute_values(finished)


async def test_off_by_default(serve, spans):
    client = await serve()
    assert client.app.state.tracing is None
    assert (await client.post("/segment", content=to_png(random_rgb(3)))).status_code == 200
    assert spans.get_finished_spans() == ()


def test_configured_without_the_packages_says_what_to_install(tiny_repo, monkeypatch):
    real_import = builtins.__import__

    def no_sdk(name, *args, **kwargs):
        if name.startswith("opentelemetry.sdk"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sdk)
    with pytest.raises(tracing.TracingUnavailable, match=r"enet-serve\[tracing\]"):
        create_app(Settings(repository=tiny_repo, tracing="otlp"))
