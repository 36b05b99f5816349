"""Peer 1: a plain FastAPI endpoint. Each request is decoded, run (batch 1) and encoded in FastAPI's
thread pool; all requests share one onnxruntime session with every core. No batching, no queue."""
from __future__ import annotations

import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from enet_serve.bench.peers.common import Segmenter, arguments


def create_app(segmenter: Segmenter) -> FastAPI:
    app = FastAPI()

    @app.post("/segment")
    async def segment(request: Request) -> Response:
        body = await request.body()
        return Response(await run_in_threadpool(segmenter.answer, body), media_type="image/png")

    @app.get("/health/ready")
    async def ready() -> Response:
        return Response("ok")

    return app


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    app = create_app(Segmenter(args.model, args.precision, args.threads))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
