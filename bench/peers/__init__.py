"""The peers the service is benchmarked against: the same ONNX file, frames, clients and cores,
each a small server that answers `POST /segment` (a JPEG body) with the mask PNG, as the service does.

- `fastapi`: a plain FastAPI endpoint, one session run per request in the thread pool;
- `litserve`: LitServe with its own batching;
- `ray`: Ray Serve with `@serve.batch`.

Each peer module runs as `python -m enet_serve.bench.peers.<peer> --port P --model DIR [--threads N]`;
LitServe and Ray Serve are heavy and run from virtual environments of their own under runs/peers/
that `bench.peers.envs` creates (they install enet-serve itself too, for the shared decode/encode).
"""
