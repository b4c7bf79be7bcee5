"""One error hierarchy for every layer. An error carries its kind (the class, which fixes the HTTP status
once, here), a stable `code`, the request field it concerns (`param`) and, for one input of many, its
`index`. Each dialect only decides how an error's body looks (http/dialects), never which status it has.

An input error is raised without a field name: the core does not know whether the inputs came as
OpenAI's `input`, Cohere's `texts` or TEI's `inputs`. The dialect names it (`in_field`), and the message
reads `texts[3] has 300 tokens, ...` on Cohere's route and `input[3] ...` on OpenAI's.
"""

from __future__ import annotations

from typing import ClassVar


class ServeError(Exception):
    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self, detail: str, *, code: str | None = None, param: str | None = None, index: int | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.default_code
        self.param = param
        self.index = index
        self.headers: dict[str, str] = {}

    @property
    def message(self) -> str:
        """One sentence: `detail`, led by the input it concerns (`input[3] ...`) when there is one."""
        if self.index is None:
            return self.detail
        return f"{self.param or 'input'}[{self.index}] {self.detail}"

    def in_field(self, name: str) -> ServeError:
        """Name the request field an unnamed error concerns (the dialect's own name for the inputs)."""
        if self.param is None:
            self.param = name
        return self

    def __str__(self) -> str:
        return self.message


class InvalidRequest(ServeError):
    """The request asks for what this server or this model cannot do as asked: the client's to fix. Its
    code is `invalid_<param>` unless it says otherwise."""

    status = 400
    default_code = "invalid_request"

    def __init__(
        self, detail: str, *, code: str | None = None, param: str | None = None, index: int | None = None
    ) -> None:
        if code is None and param is not None and type(self) is InvalidRequest:
            code = f"invalid_{param}"
        super().__init__(detail, code=code, param=param, index=index)


class InvalidInput(InvalidRequest):
    """One input (text, token array, document) the model cannot take; `index` says which."""

    default_code = "invalid_input"


class InputTooLong(InvalidInput):
    """An input over the model's maximum length with truncation off: the dialect says how to allow it."""


class Unauthorized(ServeError):
    status = 401
    default_code = "invalid_api_key"


class Forbidden(ServeError):
    status = 403
    default_code = "forbidden"


class NotFound(ServeError):
    status = 404
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class MethodNotAllowed(ServeError):
    status = 405
    default_code = "method_not_allowed"


class RequestTimeout(ServeError):
    status = 408
    default_code = "request_timeout"


class PayloadTooLarge(ServeError):
    status = 413
    default_code = "payload_too_large"


class HeadersTooLarge(ServeError):
    status = 431
    default_code = "request_header_fields_too_large"


class ClientClosed(ServeError):
    """The client went away before its answer was ready: the work was dropped. Nobody reads this answer;
    it is logged and counted with nginx's status for it."""

    status = 499
    default_code = "client_closed_request"


class InternalError(ServeError):
    """A bug: logged with its traceback; the client learns only the request id."""


class NumericalOverflow(ServeError):
    """An output came out NaN or infinite, even when run again in float32: never served as a number."""

    default_code = "numerical_overflow"


class Overloaded(ServeError):
    """Busy (the queue is full, or no result within request_timeout), or shutting down: retry later."""

    status = 503
    default_code = "overloaded"


class OutOfMemory(ServeError):
    """An input does not fit in the device's memory even alone (507: storage, not the request's form)."""

    status = 507
    default_code = "out_of_memory"


class PreloadError(ServeError):
    """A model in `preload_models` could not be loaded: the server does not start."""


BY_STATUS: dict[int, type[ServeError]] = {
    cls.status: cls
    for cls in (
        InvalidRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        RequestTimeout,
        PayloadTooLarge,
        HeadersTooLarge,
        Overloaded,
        OutOfMemory,
        InternalError,
    )
}


def for_status(status: int, detail: str, code: str | None = None) -> ServeError:
    """The error of an HTTP status raised outside our code (Falcon's router, gunicorn's parser)."""
    cls = BY_STATUS.get(status, InvalidRequest if status < 500 else InternalError)
    error = cls(detail, code=code)
    if error.status != status:  # a status without a class of its own keeps its number
        error.status = status  # type: ignore[misc]
    return error
