"""The HTTP layer: the Falcon app factory, middleware, OpenAI-shaped errors, pydantic request schemas and
thin resources that call the runtime. No MLX here."""

from mlx_serve.http.app import create_app

__all__ = ["create_app"]
