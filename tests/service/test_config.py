"""Settings read from the environment (service/config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings


def test_an_empty_variable_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # service/kubernetes/base/settings.env lists every setting, some empty.
    for name in ("DATABASE_URL", "GAT_TUNE_PORT", "GAT_TUNE_ARTIFACT_DIR", "GAT_TUNE_ARTIFACT_S3_BUCKET"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("GAT_TUNE_DATA_DIR", "/srv/gat")
    settings = Settings()
    assert settings.database_url is None and settings.port == 8000 and settings.artifact_s3_bucket is None
    assert settings.artifacts == Path("/srv/gat/artifacts")
