"""Memory: the serving sessions are warmed only at the batch sizes they will run, the tuning times the
large ones on a temporary session, and onnxruntime's CPU arena is a setting."""
from __future__ import annotations

from enet_serve.service import runtime


def record_batches(monkeypatch) -> dict[int, list[int]]:
    """Batch sizes run per Session object (by id), for every session the service makes."""
    seen: dict[int, list[int]] = {}
    real = runtime.Session.run

    def run(self, arrays):
        seen.setdefault(id(self), []).append(len(arrays))
        return real(self, arrays)

    monkeypatch.setattr(runtime.Session, "run", run)
    return seen


async def test_serving_sessions_run_only_served_batch_sizes(serve, monkeypatch):
    seen = record_batches(monkeypatch)
    # The tuning picks the smallest batch size within 3 % of the best: force 2.
    monkeypatch.setattr(runtime, "pick_batch_size", lambda rates: 2)
    monkeypatch.setattr("enet_serve.service.server.pick_batch_size", lambda rates: 2)
    c = await serve(max_batch_size=8, tune_batch_size=True, instances=2)
    model = c.app.state.server.models["enet-camvid"]
    serving = [*model.runtime.sessions, model.runtime.solo]
    assert model.batch_size == 2
    for s in serving:
        assert set(seen[id(s)]) == {1, 2}  # warmed at 1 and 2, never at 4 or 8
    probes = [sizes for key, sizes in seen.items() if key not in {id(s) for s in serving}
              and 8 in sizes]
    assert probes, "the tuning ran batch 8 on a session of its own"


async def test_warm_all_batch_sizes_restores_the_old_warm_up(serve, monkeypatch):
    seen = record_batches(monkeypatch)
    c = await serve(max_batch_size=4, tune_batch_size=True, warm_batch_sizes="all", instances=1)
    model = c.app.state.server.models["enet-camvid"]
    assert set(seen[id(model.runtime.sessions[0])]) == {1, 2, 3, 4}


async def test_cpu_arena_setting_reaches_the_session_options():
    from enet_serve.service.settings import Settings

    assert runtime.session_options(Settings(), 1).enable_cpu_mem_arena is True
    assert runtime.session_options(Settings(cpu_arena=False), 1).enable_cpu_mem_arena is False
