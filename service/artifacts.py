"""The Optuna artifact store the slots write to and the dashboard reads from."""

from __future__ import annotations

import os
from typing import Any, BinaryIO

import optuna

from service.config import Settings

__all__ = ["LinkingArtifactStore", "artifact_store"]


class LinkingArtifactStore(optuna.artifacts.FileSystemArtifactStore):
    """A directory store that hard-links an uploaded file instead of copying it.

    A link costs a fraction of a new file's kernel CPU, and every trial uploads three files
    (bench/RESULTS.md, "Figures the code relies on"). A link shares the file,
    so it is only for files their writer replaces (a new file renamed over the old) rather
    than rewrites in place: the trainer's outputs (trainer.train). Anything that is not a
    named local file, or that cannot be linked (another filesystem), is copied.
    """

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        source = getattr(content_body, "name", None)
        if isinstance(source, str) and os.path.isfile(source):
            try:
                os.link(source, self._get_filepath(artifact_id))
                return
            except OSError:  # another filesystem, or links not allowed there: copy
                pass
        super().write(artifact_id, content_body)


def artifact_store(settings: Settings, *, link_files: bool = False) -> Any:
    """S3 (boto3, the `s3` extra) when GAT_TUNE_ARTIFACT_S3_BUCKET is set; else a directory,
    which machines share over a network file system. ``link_files``: the directory store
    hard-links uploaded files (the slots, whose trainer never rewrites a file in place)."""
    if settings.artifact_s3_bucket:
        try:
            import boto3
        except ImportError:
            raise RuntimeError("GAT_TUNE_ARTIFACT_S3_BUCKET needs boto3: pip install 'gat-tune[s3]'") from None
        return optuna.artifacts.Boto3ArtifactStore(settings.artifact_s3_bucket, client=boto3.client("s3"))
    settings.artifacts.mkdir(parents=True, exist_ok=True)
    if link_files:
        return LinkingArtifactStore(settings.artifacts)
    return optuna.artifacts.FileSystemArtifactStore(settings.artifacts)
