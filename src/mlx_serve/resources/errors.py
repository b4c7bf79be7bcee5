"""Runtime and engine exceptions -> API errors, shared by the inference resources."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mlx_serve.engine import InputError
from mlx_serve.errors import ApiError, bad_request, model_not_found
from mlx_serve.runtime import InvalidRequest, ModelNotFound, Overloaded
from mlx_serve.store import InvalidNameError


@contextmanager
def runtime_errors(model: str, inputs_param: str) -> Iterator[None]:
    try:
        yield
    except (ModelNotFound, InvalidNameError):
        raise model_not_found(model) from None
    except InputError as exc:
        raise bad_request(str(exc).replace("input[", f"{inputs_param}["), "invalid_input", inputs_param) from None
    except InvalidRequest as exc:
        raise bad_request(str(exc), f"invalid_{exc.param}", exc.param) from None
    except Overloaded as exc:
        raise ApiError(503, f"The server is busy: {exc}. Retry later.", "overloaded") from None
