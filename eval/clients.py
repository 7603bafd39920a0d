"""OpenAI-compatible endpoints through the ``openai`` client: our server, vLLM, or any other."""

from __future__ import annotations

import base64
import mimetypes
from pathlib import Path


class EndpointError(ValueError):
    """An endpoint that cannot be used (unreachable, no models); the message says which and why."""


def normalise_base_url(url: str) -> str:
    """``http://host:port`` or ``.../v1`` -> the ``/v1`` base URL the client wants."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EndpointError(f"endpoint {url!r} must start with http:// or https://")
    return url if url.endswith("/v1") else url + "/v1"


def make_client(base_url: str, *, api_key: str = "EMPTY", timeout: float = 120.0, max_retries: int = 2):
    from openai import OpenAI

    return OpenAI(base_url=normalise_base_url(base_url), api_key=api_key, timeout=timeout, max_retries=max_retries)


def resolve_model(client) -> str:
    """The first model the endpoint serves (``GET /v1/models``)."""
    try:
        models = client.models.list()
        ids = [m.id for m in models.data]
    except Exception as e:
        raise EndpointError(f"cannot list the models at {client.base_url}: {e}") from None
    if not ids:
        raise EndpointError(f"the endpoint {client.base_url} serves no models")
    return ids[0]


def image_data_uri(path: str | Path) -> str:
    """An image file as a ``data:`` URI (endpoints may not read our files)."""
    p = Path(path)
    mime = mimetypes.guess_type(p.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(p.read_bytes()).decode()}"
