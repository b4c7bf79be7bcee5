"""The OpenAPI document at /openapi.json, and schemathesis over every operation in it: generated valid and
invalid requests must never get a 5xx, and every answer must match the document. The app runs over the
fake service (tests/fake_service.py): what is checked here is the HTTP layer's, every dialect's."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from mlx_serve.http.openapi import OPERATIONS

from .conftest import FakeApp, build_fake_app

EXAMPLES = int(os.environ.get("MLX_SERVE_TEST_EXAMPLES", "15"))
CASES = [
    (op.method, path, mode)
    for op in OPERATIONS
    for path in op.paths[:1]
    # invalid requests, where there is a body to make invalid
    for mode in ([GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if op.request else [GenerationMode.POSITIVE])
]


@pytest.fixture(scope="module")
def app(module_home) -> Iterator[FakeApp]:
    with pytest.MonkeyPatch.context() as mp:
        yield build_fake_app(mp)


@pytest.fixture(scope="module")
def schema(app: FakeApp):
    return schemathesis.openapi.from_wsgi("/openapi.json", app.client.app)


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    CASES,
    ids=[f"{m.upper()} {p} {'valid' if g.value == 'positive' else 'invalid'}" for m, p, g in CASES],
)
def test_no_request_gets_a_server_error(schema, method: str, path: str, mode: GenerationMode) -> None:
    operation = schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case) -> None:
        # Valid by the document, a request may still be refused for what only the model knows (dimensions
        # over its size, a token id over its vocabulary): that one check is left out.
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    check()
