"""Peer 2: LitServe with its own batching (max_batch_size 8, batch_timeout 5 ms), one worker process
with an onnxruntime session of every core, one API server process.

LitServe parses a request body as JSON or a form; the load generator sends the same raw JPEG body
to every server, so an ASGI middleware wraps it as {"image": base64} before LitServe sees it
(~0.1 ms per 46 KiB frame, a cost the peer keeps)."""
from __future__ import annotations

import base64
import json

import litserve as ls
from starlette.responses import Response

from enet_serve.bench.peers.common import BATCH, DELAY_S, Segmenter, arguments


class RawBodyAsJSON:
    """ASGI middleware: a POST /segment body becomes {"image": base64(body)} (application/json)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/segment":
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = json.dumps({"image": base64.b64encode(b"".join(chunks)).decode("ascii")}).encode()
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app({**scope, "headers": headers}, replay, send)


class SegmentAPI(ls.LitAPI):
    def __init__(self, model, precision: str, threads: int):
        super().__init__(max_batch_size=BATCH, batch_timeout=DELAY_S, api_path="/segment")
        self.model, self.precision, self.threads = model, precision, threads

    def setup(self, device):
        self.segmenter = Segmenter(self.model, self.precision, self.threads)

    def decode_request(self, request):
        return self.segmenter.decode(base64.b64decode(request["image"]))

    def batch(self, inputs):
        return inputs

    def predict(self, inputs):
        masks = self.segmenter.run([x for x, _, _ in inputs])
        return [(m, h, w) for m, (_, h, w) in zip(masks, inputs)]

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        mask, h, w = output
        return Response(self.segmenter.encode(mask, h, w), media_type="image/png")


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    server = ls.LitServer(SegmentAPI(args.model, args.precision, args.threads), accelerator="cpu",
                          workers_per_device=1, healthcheck_path="/health/ready", middlewares=[RawBodyAsJSON],
                          timeout=60)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning",
               generate_client_file=False)


if __name__ == "__main__":
    main()
