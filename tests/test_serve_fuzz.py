"""The read service against its own OpenAPI description, with schemathesis: inputs generated from ``/openapi.json``.

Every answer must be documented (status, content type, body schema) and none
may be a 5xx or hold a traceback, whatever the path, query and body. The app
runs in-process (ASGI) over a real warehouse; ``/v1/events`` is left out, as
its answer never ends. The number of examples is bounded so the test takes
well under a minute; inputs are the same on every run (``derandomize``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from readside.serve import ServeConfig, create_app
from tests.test_serve import sample_warehouse
from warehouse.reader import QueryLimits

# About 25 s: generative, so it stays out of `make test-unit` (which must finish in under a minute).
pytestmark = pytest.mark.slow

# Generated requests name this machine, as a browser or curl would (the service checks Host).
HOST = {"Host": "127.0.0.1"}
EXAMPLES = 100  # per operation and mode: about 25 s in all on 2 cores
NEWEST = 4  # the newest snapshot of sample_warehouse


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Any:
    warehouse = sample_warehouse(tmp_path_factory.mktemp("fuzz") / "wh")
    limits = QueryLimits(memory_limit="256MB", threads=1, timeout=2.0)
    app = create_app(ServeConfig(warehouse, rate_limit=0, limits=limits, max_wait_s=0.2))
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=HOST)


def check(case: Any) -> None:
    """One generated request: documented, not a 5xx, no traceback, errors in one line."""
    wanted = (case.query or {}).get("min_snapshot")
    if isinstance(wanted, int) and wanted > NEWEST:
        # A snapshot not committed yet is a documented 503 after wait= (tests/test_serve.py checks it);
        # the fuzzer asks for ones that exist, so every 5xx it meets is a bug.
        case.query["min_snapshot"] = NEWEST
    response = case.call(headers=HOST)
    text = response.text
    assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.status_code}: {text[:300]}"
    assert "Traceback" not in text and 'File "' not in text
    if response.status_code >= 400:
        body = response.json()
        assert list(body) == ["error"] and "\n" not in body["error"]
    # Schema-valid input may still be refused: a column of another view, an as_of before the warehouse
    # existed, a cursor this service never gave. So "positive data accepted" is not checked; every
    # other check of schemathesis is (status, content type, headers and body as documented).
    case.validate_response(response, excluded_checks=[positive_data_acceptance])


def test_no_input_gets_a_server_error_or_a_traceback(api: Any) -> None:
    checked = 0
    for result in api.get_all_operations():
        operation = result.ok()
        if operation.path == "/v1/events":
            continue

        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def fuzz(case: Any) -> None:
                check(case)

            try:
                fuzz()
            except Unsatisfiable:
                # No input of this operation can break its description (it takes no parameter).
                assert mode is GenerationMode.NEGATIVE and operation.path == "/v1/health"
                continue
            checked += 1
    assert checked == 9


def test_the_description_names_what_the_fuzzer_covers(api: Any) -> None:
    operations = {(op.method.upper(), op.path) for op in (r.ok() for r in api.get_all_operations())}
    assert ("GET", "/v1/inventory/{store_id}/{item_id}") in operations and ("POST", "/v1/query") in operations
    assert len(operations) == 6
    assert Path(__file__).name == "test_serve_fuzz.py"
