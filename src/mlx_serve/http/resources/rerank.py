"""POST /v1/rerank (Jina's and Cohere's v1 API) and POST /rerank (Infinity's), with a yes/no text output.

The two differ only in how a returned document looks: /v1/rerank gives it back as it came (a string as
`{"text": ...}`, as Jina and Cohere do), /rerank gives its text (as Infinity does, and litellm's `infinity/`
provider reads it)."""

from __future__ import annotations

import falcon
import numpy as np

from mlx_serve.http.body import read_json_object
from mlx_serve.http.errors import runtime_errors
from mlx_serve.http.schemas import parse_rerank_request
from mlx_serve.runtime import Runtime


def ranked(scores: np.ndarray, top_n: int | None) -> list[int]:
    """Document indices, highest score first; equal scores keep document order (a stable sort)."""
    return [int(i) for i in np.argsort(-scores, kind="stable")[:top_n]]


class RerankResource:
    def __init__(self, runtime: Runtime, max_request_bytes: int, max_inputs: int, documents_as_text: bool) -> None:
        self.runtime = runtime
        self.max_request_bytes = max_request_bytes
        self.max_inputs = max_inputs
        self.documents_as_text = documents_as_text

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = parse_rerank_request(
            read_json_object(req, self.max_request_bytes), self.max_inputs, self.max_request_bytes
        )
        req.context.model = request.model
        with runtime_errors(request.model, "documents"):
            result = self.runtime.rerank(
                request.model,
                request.query,
                request.texts,
                instruction=request.instruction,
                truncate=request.truncate,
                max_tokens_per_doc=request.max_tokens_per_doc,
                keep_alive=request.keep_alive,
            )
        req.context.tokens = result.tokens
        results = []
        for i in ranked(result.scores, request.top_n):
            score = float(result.scores[i])
            item: dict = {"index": int(i), "relevance_score": score}
            if request.return_documents:
                doc = request.documents[i]
                item["document"] = (
                    request.texts[i] if self.documents_as_text else doc if isinstance(doc, dict) else {"text": doc}
                )
            if request.return_text:
                item["text_output"] = "yes" if score >= request.decision_threshold else "no"
            results.append(item)
        resp.media = {
            "model": result.model,
            "results": results,
            "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
        }
