"""Ollama's API: its embed routes (/api/embed, and the older /api/embeddings), which the `ollama` client,
langchain-ollama, llama-index, chromadb, haystack, litellm's `ollama/`, Open WebUI and AnythingLLM call;
and its control plane, which is ours too (/api/tags, /api/show, /api/ps, /api/pull, /api/delete,
/api/unload), with Ollama's fields beside our own. `GET /` answers as Ollama does (a browser is sent to
the status page). Errors take Ollama's shape, `{"error": "..."}`; `name:latest` means `name`.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Literal

import falcon
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from mlx_serve import __version__
from mlx_serve.core.errors import InvalidRequest, ModelNotFound
from mlx_serve.core.intents import EmbedIntent, LoadedModel, PullIntent
from mlx_serve.core.service import Service
from mlx_serve.core.types import Truncation
from mlx_serve.http.dialects.base import Limits, Operation, Resource, inputs_in, served
from mlx_serve.http.fields import HARMLESS, KeepAlive, StrictRequest, parse, require_model, texts_field, too_many
from mlx_serve.store import progress

# Ollama's options that shape generation or how its runner uses the machine: an embedding is the same
# whatever they say, so they are accepted (langchain-ollama sends all of them, most as null). `num_ctx` is
# the context length: acted on, as the most tokens an input keeps.
HARMLESS_OPTIONS = frozenset(
    [
        "numa",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mmap",
        "use_mlock",
        "num_thread",
        "num_keep",
        "seed",
        "num_predict",
        "top_k",
        "top_p",
        "min_p",
        "tfs_z",
        "typical_p",
        "repeat_last_n",
        "temperature",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "penalize_newline",
        "stop",
    ]
)


def model_name(name: str) -> str:
    """Ollama's `name:latest` is the model `name`."""
    return name.removesuffix(":latest")


def iso_utc(ts: float) -> str:
    """A unix time as ISO 8601 in UTC, as Ollama's API writes times."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _options_context(options: dict[str, Any] | None) -> int | None:
    """The `num_ctx` of Ollama's options (a 400 for an option Ollama does not have)."""
    if not options:
        return None
    for key, value in options.items():
        if value is None or key in HARMLESS_OPTIONS:
            continue
        if key != "num_ctx":
            raise InvalidRequest(f"options: {key!r} is not an Ollama option", code="invalid_options", param="options")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest("options.num_ctx must be a positive integer", code="invalid_options", param="options")
    ctx = options.get("num_ctx")
    return int(ctx) if ctx is not None else None


class OllamaEmbedRequest(StrictRequest):
    """POST /api/embed."""

    model: str = Field(min_length=1)
    input: texts_field("input")  # type: ignore[valid-type]
    truncate: StrictBool = Field(default=True, description="false: an input over the model's length is a 400.")
    dimensions: StrictInt | None = Field(default=None, ge=1)
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = Field(
        default=None, description=f"Ollama's options: num_ctx caps each input's tokens; the others: {HARMLESS}"
    )


class OllamaEmbeddingsRequest(StrictRequest):
    """POST /api/embeddings (Ollama's older route: one text, `prompt`)."""

    model: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = Field(default=None, description="As on /api/embed.")


class OllamaEmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int = Field(description="nanoseconds")
    load_duration: int = Field(description="nanoseconds")
    prompt_eval_count: int


class OllamaEmbeddingsResponse(BaseModel):
    embedding: list[float]


class OllamaNameRequest(StrictRequest):
    """Bodies that name a model: `model` (or `name`, Ollama's older field)."""

    model: str | None = Field(default=None, min_length=1, description="A name from GET /api/tags (or an alias).")
    name: str | None = Field(default=None, min_length=1, description="Same as `model` (Ollama's older field).")
    verbose: StrictBool | None = Field(default=None, description=f"Ollama's show: more detail. {HARMLESS}")

    @property
    def target(self) -> str:
        return model_name(self.model or self.name or "")


class OllamaPullRequest(StrictRequest):
    """POST /api/pull: what to pull (`model`, or `name`) and how."""

    model: str | None = Field(default=None, min_length=1, description="A hub repo id or a model folder.")
    name: str | None = Field(default=None, min_length=1, description="Same as `model` (Ollama's older field).")
    as_: str | None = Field(default=None, alias="as", min_length=1, description="The name in the store.")
    type: Literal["embedding", "reranker", "classifier"] | None = None
    quantize: Literal[4, 8] | None = None
    replace: StrictBool = Field(default=False, description="Take over a name that means another model.")
    stream: StrictBool = True
    insecure: StrictBool | None = Field(default=None, description=f"Ollama's registry option. {HARMLESS}")

    @property
    def source(self) -> str:
        return self.model or self.name or ""


class OllamaDetails(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class Tag(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    model: str
    type: Literal["embedding", "reranker", "classifier"]
    size: int
    digest: str
    modified_at: str
    details: OllamaDetails


class OllamaTagsResponse(BaseModel):
    models: list[Tag]


class PsModel(BaseModel):
    name: str
    model: str
    type: Literal["embedding", "reranker", "classifier"]
    size: int
    size_vram: int
    size_bytes: int
    digest: str
    details: OllamaDetails
    in_flight: int
    pinned: bool
    expires_at: str | None = Field(description="When it unloads if still idle; null: never.")


class MemoryUsage(BaseModel):
    active_bytes: int = Field(description="MLX memory in arrays now (weights and running batches)")
    cache_bytes: int = Field(description="freed MLX buffers kept for reuse")
    peak_bytes: int = Field(description="the most active memory at once since the start")
    inflight_bytes: int = Field(description="batches on the device now (bounded by max_inflight_bytes)")


class OllamaPsResponse(BaseModel):
    models: list[PsModel]
    memory: MemoryUsage


class OllamaShowResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    type: Literal["embedding", "reranker", "classifier"]
    details: OllamaDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str
    prompts: dict[str, str] = Field(default_factory=dict, description="named prompts, for prompt_name")


class OllamaStatusResponse(BaseModel):
    status: str
    name: str | None = None


class OllamaVersionResponse(BaseModel):
    version: str


CAPABILITIES = {"embedding": ["embedding"], "reranker": ["rerank"], "classifier": ["classify"]}
PRECISION = {None: "F32", 8: "Q8_0", 4: "Q4_0"}


def _parameter_size(count: int | None) -> str:
    if not count:
        return ""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


def details(info: dict[str, Any]) -> dict[str, Any]:
    """Ollama's `details` of a model, with ours (architecture, dimensions, ...) beside them."""
    family = str(info.get("family") or "")
    return {
        "format": "safetensors",
        "family": family,
        "families": [family] if family else [],
        "parameter_size": _parameter_size(info.get("parameters")),
        "quantization_level": PRECISION.get(info.get("quantization"), f"Q{info.get('quantization')}"),
        "parent_model": "",
        **{k: info.get(k) for k in ("architecture", "dimensions", "max_length", "quantization", "source", "revision")},
    }


class RootResource(Resource):
    """GET /: Ollama's "is it running" answer (AnythingLLM checks it before anything else); a browser
    (Accept: text/html) is sent to the status page."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if "text/html" in (req.get_header("Accept") or ""):
            raise falcon.HTTPSeeOther("/status")
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "mlx-serve is running"


class VersionResource(Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"version": __version__}


class EmbedResource(Resource):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        body = self.body(req)
        require_model(body)
        request = parse(OllamaEmbedRequest, body)
        too_many(len(request.input), self.limits.max_inputs, "inputs", "input")
        intent = EmbedIntent(
            model=model_name(request.model),
            inputs=request.input,
            dimensions=request.dimensions,
            truncation=Truncation(enabled=request.truncate, max_tokens=_options_context(request.options)),
            normalize=True,  # as Ollama's /api/embed does
            keep_alive=request.keep_alive,
        )
        with inputs_in("input"):
            result = self.service.embed(intent)
        served(req, result.model, result.tokens)
        resp.media = {
            "model": result.model,
            "embeddings": result.dense,
            "total_duration": int((time.perf_counter() - started) * 1e9),
            "load_duration": int(result.load_seconds * 1e9),
            "prompt_eval_count": result.tokens,
        }


class EmbeddingsResource(Resource):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = self.body(req)
        require_model(body)
        request = parse(OllamaEmbeddingsRequest, body)
        ctx = _options_context(request.options)
        intent = EmbedIntent(
            model=model_name(request.model),
            inputs=[request.prompt],
            truncation=None if ctx is None else Truncation(max_tokens=ctx),
            keep_alive=request.keep_alive,
        )
        with inputs_in("prompt"):
            result = self.service.embed(intent)
        served(req, result.model, result.tokens)
        assert result.dense is not None
        resp.media = {"embedding": result.dense[0]}


def _name(resource: Resource, req: falcon.Request) -> str:
    request = parse(OllamaNameRequest, resource.body(req))
    if not request.target:
        raise InvalidRequest("name the model: `model` (or `name`) is required", code="invalid_name", param="model")
    req.context.model = request.target
    return request.target


class TagsResource(Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        models = []
        for model in self.service.models():
            info = self.service.describe(model.name)
            models.append(
                {
                    "name": model.name,
                    "model": model.name,
                    "type": model.type,
                    "size": info.get("size") or 0,
                    "digest": info.get("digest") or "",
                    "modified_at": iso_utc(model.created),
                    "details": details(info),
                }
            )
        resp.media = {"models": models}


class ShowResource(Resource):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        info = self.service.describe(_name(self, req))
        model_info = {
            "general.architecture": info.get("family"),
            "general.parameter_count": info.get("parameters"),
            f"{info.get('family')}.embedding_length": info.get("dimensions"),
            f"{info.get('family')}.context_length": info.get("max_length"),
        }
        ours = {k: v for k, v in info.items() if k != "parameters"}  # Ollama's `parameters` is Modelfile text
        resp.media = {
            **ours,
            "parameter_count": info.get("parameters"),
            "details": details(info),
            "model_info": model_info,
            "capabilities": CAPABILITIES[info["type"]],
            "modified_at": iso_utc(info.get("created") or 0),
        }


def _ps_entry(model: LoadedModel, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": model.name,
        "model": model.name,
        "type": model.type,
        "size": model.size_bytes,
        "size_vram": model.size_bytes,  # MLX's memory is the device's (unified on a Mac)
        "size_bytes": model.size_bytes,
        "digest": info.get("digest") or "",
        "details": details(info),
        "in_flight": model.in_flight,
        "pinned": model.pinned,
        "expires_at": None if model.expires_at is None else iso_utc(model.expires_at),
    }


class PsResource(Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        entries = []
        for model in self.service.loaded():
            try:
                info = self.service.describe(model.name)
            except ModelNotFound:  # deleted while still loaded (it unloads once its requests end)
                info = {}
            entries.append(_ps_entry(model, info))
        resp.media = {"models": entries, "memory": self.service.memory().to_dict()}


class DeleteResource(Resource):
    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = _name(self, req)
        self.service.delete(name)
        resp.media = {"status": "success", "name": name}


class UnloadResource(Resource):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = _name(self, req)
        unloading = self.service.unload(name)
        # In-flight requests finish first; the unload itself happens right after them.
        resp.media = {"name": name, "status": "unloading" if unloading else "not_loaded"}


class PullResource(Resource):
    """Relays the pull's progress lines (NDJSON, store/progress.py) as they come, or with `"stream":
    false`, answers once with the last one."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = parse(OllamaPullRequest, self.body(req))
        if not request.source:
            raise InvalidRequest(
                "say what to pull: `model` (a hub repo id or a model folder) is required",
                code="invalid_model",
                param="model",
            )
        req.context.model = request.source
        intent = PullIntent(request.source, request.as_, request.type, request.quantize, request.replace)
        lines = self.service.pull(intent)
        if not request.stream:
            last = list(lines)[-1]
            if (error := progress.error_of(last)) is not None:
                raise InvalidRequest(error, code="pull_failed", param="model")
            resp.media = progress.decode(last)
            return
        resp.content_type = "application/x-ndjson"
        resp.stream = lines


def routes(service: Service, limits: Limits) -> dict[str, object]:
    return {
        "/": RootResource(service, limits),
        "/api/version": VersionResource(service, limits),
        "/api/embed": EmbedResource(service, limits),
        "/api/embeddings": EmbeddingsResource(service, limits),
        "/api/tags": TagsResource(service, limits),
        "/api/show": ShowResource(service, limits),
        "/api/ps": PsResource(service, limits),
        "/api/pull": PullResource(service, limits),
        "/api/delete": DeleteResource(service, limits),
        "/api/unload": UnloadResource(service, limits),
    }


class OllamaError(BaseModel):
    error: str
    code: str = Field(description="Ours: the error's code, as `code` in OpenAI's shape.")


def _op(method: str, path: str, summary: str, request: Any = None, response: Any = None, **kw: Any) -> Operation:
    return Operation(method, (path,), summary, request, response, error=OllamaError, tag="Ollama", **kw)


OPERATIONS = (
    _op(
        "get",
        "/",
        "Ollama's liveness answer: `mlx-serve is running` (a browser goes to /status)",
        media_type="text/plain",
        errors=(),
    ),
    _op("get", "/api/version", "The server's version", response=OllamaVersionResponse, errors=()),
    _op(
        "post",
        "/api/embed",
        "Embed texts (Ollama's API)",
        OllamaEmbedRequest,
        OllamaEmbedResponse,
        errors=(400, 404, 413, 500, 503, 507),
    ),
    _op(
        "post",
        "/api/embeddings",
        "Embed one text (Ollama's older API)",
        OllamaEmbeddingsRequest,
        OllamaEmbeddingsResponse,
        errors=(400, 404, 413, 500, 503, 507),
    ),
    _op("get", "/api/tags", "The stored models", response=OllamaTagsResponse, errors=()),
    _op("post", "/api/show", "One model's details", OllamaNameRequest, OllamaShowResponse),
    _op(
        "delete",
        "/api/delete",
        "Remove a stored model, after its in-flight requests",
        OllamaNameRequest,
        OllamaStatusResponse,
        errors=(400, 404, 503),
    ),
    _op(
        "post",
        "/api/pull",
        "Pull a model from the Hugging Face Hub or a folder; NDJSON progress unless stream is false",
        OllamaPullRequest,
        OllamaStatusResponse,
        media_type="application/x-ndjson",
        errors=(400,),
    ),
    _op("get", "/api/ps", "The loaded models", response=OllamaPsResponse, errors=()),
    _op("post", "/api/unload", "Unload a model once its requests finish", OllamaNameRequest, OllamaStatusResponse),
)
