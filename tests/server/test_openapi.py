"""Schemathesis over /openapi.json of a real server, valid and invalid inputs alike: no 5xx,
and every response's status, content type and body as documented."""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)



@pytest.fixture(scope="module")
def api_schema(start_server, models_dir):
    # A small --max-chars-cap keeps generated requests quick; bigger ones must be 400s.
    server = start_server([models_dir, "--max-chars-cap", "64", "--max-concurrency", "16", "--max-queue", "16"],
                          env={"CHARNET_API_KEY": "fuzz"})
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_api_conforms_to_its_schema(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/generate", "/v1/models", "/ready"}
    for operation, mode in itertools.product(operations, GenerationMode):
        if mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET" and "{" not in operation.path:
            continue  # nothing to make invalid
        # Generation takes a few milliseconds an example: more examples where the inputs are.
        examples = 50 if operation.method.upper() == "POST" else 8

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case) -> None:
            case.call_and_validate(headers={"Authorization": "Bearer fuzz"}, timeout=60, checks=CHECKS)

        check()
