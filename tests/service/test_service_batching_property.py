"""Batching correctness as a property (hypothesis): random interleavings of requests to two models,
of several image sizes (batched by shape), read in two formats (which output the caller reads), with
poisoned inputs that make their whole batch raise, under random batch sizes, delays and instance
counts: every caller gets its own answer or its own error, never another's."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from enet_serve.service.batching import Batcher
from enet_serve.service.errors import InferenceFailed

SHAPES = [(2, 2, 1), (4, 2, 1), (2, 6, 1)]
MODELS = {"a": 3, "b": 7}  # model -> the factor its runner multiplies by


def runner_for(factor: int, batches: list[list[int]], lock: threading.Lock):
    """Rows depend on their own input only; a batch with a negative (poisoned) id raises whole."""
    def run(arrays):
        ids = [int(a.ravel()[0]) for a in arrays]
        with lock:
            batches.append(ids)
        time.sleep(0.0005 * len(arrays))
        if any(i < 0 for i in ids):
            raise RuntimeError(f"poisoned batch {ids}")
        x = np.stack(arrays)
        return [x * factor, x.reshape(len(arrays), -1).sum(axis=1) + factor]
    return run


request = st.fixed_dictionaries({
    "model": st.sampled_from(sorted(MODELS)),
    "shape": st.sampled_from(SHAPES),
    "format": st.sampled_from(["mask", "sum"]),
    "poison": st.sampled_from([False, False, False, True]),  # one in four poisons its batch
    "delay_ms": st.integers(0, 3),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(request, min_size=1, max_size=24), max_batch_size=st.integers(1, 5),
       instances=st.integers(1, 2), solo=st.booleans(), max_delay_ms=st.sampled_from([0.0, 1.0, 5.0]))
def test_every_caller_gets_its_own_answer_or_its_own_error(requests, max_batch_size, instances, solo, max_delay_ms):
    asyncio.run(_scenario(requests, max_batch_size, instances, solo, max_delay_ms))


async def _scenario(requests, max_batch_size, instances, solo, max_delay_ms) -> None:
    lock = threading.Lock()
    batches: dict[str, list[list[int]]] = {m: [] for m in MODELS}
    batchers = {
        m: Batcher(m, [runner_for(f, batches[m], lock) for _ in range(instances)],
                   solo=runner_for(f, batches[m], lock) if solo else None, max_batch_size=max_batch_size,
                   max_delay_ms=max_delay_ms, max_queue=1000, timeout_s=30)
        for m, f in MODELS.items()}
    for b in batchers.values():
        b.start()

    async def call(i: int, r: dict):
        await asyncio.sleep(r["delay_ms"] / 1000)
        ident = -(i + 1) if r["poison"] else i + 1
        x = np.full(r["shape"], ident, np.int64)
        batcher = batchers[r["model"]]
        with batcher.announce() as announcement:
            await asyncio.sleep(0)  # decoding
            announcement.done()
            mask, total = await batcher.submit(x, key=x.shape)
        return mask if r["format"] == "mask" else total

    try:
        results = await asyncio.gather(*(call(i, r) for i, r in enumerate(requests)), return_exceptions=True)
    finally:
        for b in batchers.values():
            await b.stop()

    for i, (r, got) in enumerate(zip(requests, results)):
        ident = -(i + 1) if r["poison"] else i + 1
        factor = MODELS[r["model"]]
        mine = [ids for ids in batches[r["model"]] if ident in ids]
        assert len(mine) == 1, f"request {i} ran in {len(mine)} batches"  # run exactly once
        assert len(set(mine[0])) == len(mine[0])
        if isinstance(got, BaseException):
            assert isinstance(got, InferenceFailed), got
            assert any(j < 0 for j in mine[0]), f"request {i} failed in a batch without poison: {mine[0]}"
            continue
        assert not r["poison"], f"poisoned request {i} got an answer"
        x = np.full(r["shape"], ident, np.int64)
        expected = x * factor if r["format"] == "mask" else x.sum() + factor
        assert np.array_equal(got, expected), f"request {i} got another's answer"
    # batches never mix shapes of one model
    for m, runs in batches.items():
        for ids in runs:
            shapes = {requests[abs(j) - 1]["shape"] for j in ids}
            assert len(shapes) == 1 and all(requests[abs(j) - 1]["model"] == m for j in ids)
