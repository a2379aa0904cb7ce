"""The Optuna artifact store the workers write to and the dashboard reads from."""

from __future__ import annotations

from typing import Any

import optuna

from service.config import Settings

__all__ = ["artifact_store"]


def artifact_store(settings: Settings) -> Any:
    """S3 (boto3, the `s3` extra) when GAT_TUNE_ARTIFACT_S3_BUCKET is set; else a directory,
    which machines share over a network file system."""
    if settings.artifact_s3_bucket:
        try:
            import boto3
        except ImportError:
            raise RuntimeError("GAT_TUNE_ARTIFACT_S3_BUCKET needs boto3: pip install 'gat-tune[s3]'") from None
        return optuna.artifacts.Boto3ArtifactStore(settings.artifact_s3_bucket, client=boto3.client("s3"))
    settings.artifacts.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(settings.artifacts)
