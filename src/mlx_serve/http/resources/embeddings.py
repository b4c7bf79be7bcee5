"""POST /v1/embeddings, OpenAI-compatible."""

from __future__ import annotations

import base64

import falcon
import numpy as np

from mlx_serve.http.body import read_json_object
from mlx_serve.http.errors import runtime_errors
from mlx_serve.http.schemas import parse_embedding_request
from mlx_serve.runtime import Runtime


class EmbeddingsResource:
    def __init__(self, runtime: Runtime, max_request_bytes: int, max_inputs: int) -> None:
        self.runtime = runtime
        self.max_request_bytes = max_request_bytes
        self.max_inputs = max_inputs

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = parse_embedding_request(read_json_object(req, self.max_request_bytes), self.max_inputs)
        req.context.model = request.model
        with runtime_errors(request.model, "input"):
            result = self.runtime.embed(
                request.model,
                request.input,
                dimensions=request.dimensions,
                instruction=request.instruction,
                input_type=request.input_type,
                prompt_name=request.prompt_name,
                truncate=request.truncate,
                keep_alive=request.keep_alive,
            )
        tokens = sum(result.embeddings.token_counts)
        req.context.tokens = tokens
        resp.media = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(v, request.encoding_format or "float")}
                for i, v in enumerate(result.embeddings.vectors)
            ],
            "model": result.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def encode(vector: np.ndarray, encoding_format: str) -> np.ndarray | str:
    if encoding_format == "base64":  # little-endian float32, as OpenAI's clients decode it
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector  # the app's JSON handler writes it as a list of floats
