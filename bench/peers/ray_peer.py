"""Peer 3: Ray Serve with `@serve.batch` (max_batch_size 8, batch_wait_timeout_s 5 ms): one replica
with an onnxruntime session of every core, behind Ray Serve's HTTP proxy; Ray started with the
machine's cores, no dashboard."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from enet_serve.bench.peers.common import BATCH, DELAY_S, Segmenter, arguments


@serve.deployment(num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
class SegmentDeployment:
    def __init__(self, model, precision: str, threads: int):
        self.segmenter = Segmenter(model, precision, threads)

    @serve.batch(max_batch_size=BATCH, batch_wait_timeout_s=DELAY_S)
    async def infer(self, images: list) -> list:
        masks = await asyncio.get_running_loop().run_in_executor(None, self.segmenter.run, images)
        return list(masks)

    async def __call__(self, request: Request) -> Response:
        if request.url.path.endswith("/health/ready"):
            return Response("ok")
        x, h, w = self.segmenter.decode(await request.body())
        mask = await self.infer(x)
        return Response(self.segmenter.encode(mask, h, w), media_type="image/png")


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False,
             logging_level="error")
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(SegmentDeployment.bind(args.model.resolve(), args.precision, args.threads), route_prefix="/",
              name="segment")
    def stop(*_):  # the harness's SIGTERM: take Ray's own daemons down too
        serve.shutdown()
        ray.shutdown()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
