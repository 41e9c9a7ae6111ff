"""Schemathesis against the live app: every operation of the OpenAPI document, with generated requests
(bounded, derandomized), must answer what the document says: no 5xx, documented status codes and
content types, bodies matching their schemas.

Driven through schemathesis' Python API (one hypothesis run per operation) rather than its pytest plugin,
whose lazy-fixture loader does not run under pytest 9.
"""
from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.main import create_app
from tests.conftest import live_server, settings_for

KEY = "schemathesis-key"  # with keys set, so the auth checks (no key, a wrong key: 401) have something to check
EXAMPLES = 25  # per operation: the whole module takes a few seconds


#: a checkpoint is "any binary" to OpenAPI, so schema-valid bytes are mostly not safetensors: 415/422 is right
EXCLUDED = [positive_data_acceptance]


def test_api_conforms_to_its_openapi_document(svc_predictor_dir) -> None:
    with live_server(create_app(settings_for(svc_predictor_dir, api_keys=[KEY]))) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/v1/encode", "/v1/encode/batch", "/v1/predictor", "/readyz"}
        for op in operations:

            @given(case=op.as_strategy())
            @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                      suppress_health_check=list(HealthCheck))
            def conforms(case) -> None:
                case.call_and_validate(
                    base_url=url, headers={"X-API-Key": KEY}, timeout=30, excluded_checks=EXCLUDED
                )

            conforms()
