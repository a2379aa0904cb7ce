"""schemathesis over the OpenAPI schema: no generated request may produce a 5xx."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings

from service import db
from service.app import create_app
from service.config import Settings
from tests.service.conftest import ADMIN_TOKEN, _url

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def api_schema(admin: sa.Engine, template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    name = f"gt_fuzz_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    data_dir: Path = tmp_path_factory.mktemp("fuzz")
    app = create_app(Settings(DATABASE_URL=_url(name), data_dir=data_dir, token=ADMIN_TOKEN, max_trials=100))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    db.dispose_all()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.slow
def test_no_server_errors(api_schema: schemathesis.schemas.BaseSchema) -> None:
    """Every operation, 30 generated requests each (schemathesis' strategies, run by hypothesis)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case: schemathesis.Case) -> None:
            response = case.call(headers=AUTH)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
            )

        call()
