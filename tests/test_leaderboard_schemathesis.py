"""schemathesis against the leaderboard's OpenAPI schema: generated requests never get a 5xx.

Bounded: a few examples per operation (hypothesis' example database off), one SQLite server, every
request sent with a valid admin token so the authenticated paths are exercised too.
"""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from leaderboard.app import create_app  # noqa: E402
from leaderboard.tokens import create_token  # noqa: E402
from tests import leaderboard_fixtures as fixtures  # noqa: E402

EXAMPLES = 6
TOKEN: dict[str, str] = {}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schema")
    s = fixtures.server_settings(tmp, max_upload_bytes=2_000_000)
    app = create_app(s)
    TOKEN["admin"] = create_token("fuzzer", admin=True, settings=s)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
def test_no_generated_request_gets_a_5xx(case):
    response = case.call(headers={"Authorization": f"Bearer {TOKEN['admin']}"})
    assert response.status_code < 500, f"{case.operation.label}: {response.status_code} {response.text[:300]}"
