"""optuna-dashboard on the API's port: served, read-only without a write token."""

from __future__ import annotations

import copy

from fastapi.testclient import TestClient

from service.spec import EXAMPLE_SPEC


def test_dashboard_is_served_and_read_only(client: TestClient, anonymous: TestClient) -> None:
    client.post("/studies", json=copy.deepcopy(EXAMPLE_SPEC))
    page = anonymous.get("/dashboard")
    assert page.status_code == 200 and "<html" in page.text.lower()
    studies = anonymous.get("/api/studies").json()["study_summaries"]
    assert [s["study_name"] for s in studies] == ["digits-gat"]
    study_id = studies[0]["study_id"]

    refused = anonymous.delete(f"/api/studies/{study_id}")
    assert refused.status_code == 401 and "read-only" in refused.json()["detail"]
    assert anonymous.get("/studies/digits-gat").status_code == 200  # still there

    allowed = client.delete(f"/api/studies/{study_id}")  # the admin token may write
    assert allowed.status_code in (200, 204)
