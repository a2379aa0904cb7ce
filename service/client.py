"""A small Python client over the HTTP API (the CLI uses it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

__all__ = ["ApiError", "Client", "describe_best"]


class ApiError(RuntimeError):
    """A non-2xx answer; the message is the server's one-line reason. ``status`` 0: no
    answer at all (the server could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status


def _reason(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(detail, list):
        return "; ".join(_located(d.get("loc", [])[1:], str(d.get("msg"))) for d in detail)
    return str(detail)


def _located(loc: list[Any], msg: str) -> str:
    """A 422's message with its place in the body (none for the body as a whole)."""
    where = ".".join(str(p) for p in loc)
    return f"{where}: {msg}" if where and not msg.startswith(f"{where}:") else msg


def describe_best(best: dict[str, Any] | None, none: str = "no completed trial yet") -> str:
    """A study summary's ``best`` in words: its first objective, and the features its FID is on."""
    if best is None:
        return none
    on = f" on {best['features']} features" if best.get("features") else ""
    if best["objective"] == "fid":
        return f"best FID {best['value']:.3f}{on} (trial {best['trial']})"
    fid = f"; FID {best['fid']:.3f}{on}" if best.get("fid") is not None else ""
    return f"best {best['objective']} {best['value']:.3f} (trial {best['trial']}{fid})"


class Client:
    """``Client("http://127.0.0.1:8000", token=...)``; the token defaults to GAT_TUNE_TOKEN."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, token: str | None = None, timeout: float = 30) -> None:
        token = token or os.environ.get("GAT_TUNE_TOKEN")
        self.has_token = bool(token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if "://" not in url:  # "127.0.0.1:8000" as people type it
            url = "http://" + url
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(
                0,
                f"cannot reach the server at {self.http.base_url} ({exc}); "
                "start it with `gat-tune serve`, or pass --url",
            ) from None
        if response.status_code >= 400:
            raise ApiError(response.status_code, _reason(response) + self._auth_hint(response.status_code))
        return response

    def _auth_hint(self, status: int) -> str:
        if status == 401 and not self.has_token:
            return "; GAT_TUNE_TOKEN is not set here"  # the server's answer says where a token comes from
        if status == 401:
            return "; the server does not know the token in GAT_TUNE_TOKEN"
        if status == 403:
            return "; GAT_TUNE_TOKEN needs that scope (`gat-tune token create NAME --scope ...`)"
        return ""

    def submit(self, spec: str | Path | dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """Create a study from a spec: a dict, or a path to a YAML/JSON file."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if isinstance(spec, dict):
            return dict(self._call("POST", "/studies", json=spec, headers=headers).json())
        text = Path(spec).read_text()
        headers["Content-Type"] = "application/yaml"
        return dict(self._call("POST", "/studies", content=text.encode(), headers=headers).json())

    def study(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/studies/{name}").json())

    def studies(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/studies").json()["items"])

    def trials(self, name: str, *, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        return dict(self._call("GET", f"/studies/{name}/trials", params={"offset": offset, "limit": limit}).json())

    def best(self, name: str, *, format: str = "json") -> Any:
        response = self._call("GET", f"/studies/{name}/best", params={"format": format})
        return response.text if format == "yaml" else response.json()

    def control(self, name: str, action: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/studies/{name}/{action}").json())

    def enqueue(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        return dict(self._call("POST", f"/studies/{name}/enqueue", json=config).json())

    def workers(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/workers").json()["items"])

    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "/healthz").json())
