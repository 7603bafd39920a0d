"""ServeSettings: every limit and switch of the server in one typed place (CLI flags and tests fill it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServeSettings:
    """Limits and policies of the OpenAI-compatible front end.

    api_keys: accepted bearer tokens; empty = no authentication (only sensible on loopback).
    image_dirs: folders whose files a request may name as images (``/abs/path`` or ``file://``); empty = none.
    url_allowlist: http(s) URL prefixes the server may fetch images from; empty = remote URLs refused.
    max_request_bytes / max_image_bytes / max_image_pixels / max_images: request size limits (413 / 400).
    max_concurrency: requests generating at once; max_queue: requests waiting for a slot (more: 429).
    request_timeout: seconds from admission to the last token (504 / an error event in a stream).
    max_tokens_limit: upper bound on a request's max_tokens; default_max_tokens when it gives none.
    query_model / gallery / max_conversations / conversation_ttl: /v1/faces/query (serve/query.py): the agent's
    model ("rules": no LM; "engine": the served FaceLLM, through the engine: vLLM or transformers), the enrolled
    gallery (SQLite) requests may use, and how many conversations are kept and for how many idle seconds.
    """

    model_name: str = "facellm"
    api_keys: list[str] = field(default_factory=list)
    image_dirs: list[Path] = field(default_factory=list)
    url_allowlist: list[str] = field(default_factory=list)
    max_request_bytes: int = 20 * 1024 * 1024
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 25_000_000
    max_images: int = 8
    max_concurrency: int = 8
    max_queue: int = 32
    request_timeout: float = 120.0
    default_max_tokens: int = 256
    max_tokens_limit: int = 2048
    fetch_timeout: float = 10.0
    # --- /v1/faces/query (serve/query.py)
    query_model: str = "rules"
    gallery: Path | None = None
    max_conversations: int = 256
    conversation_ttl: float = 3600.0

    def __post_init__(self) -> None:
        self.image_dirs = [Path(p).expanduser().resolve() for p in self.image_dirs]
        for name in ("max_request_bytes", "max_image_bytes", "max_image_pixels", "max_images",
                     "max_concurrency", "default_max_tokens", "max_tokens_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.query_model not in ("rules", "engine"):
            raise ValueError(f"query_model must be 'rules' or 'engine', not {self.query_model!r}")
        if self.gallery is not None:
            self.gallery = Path(self.gallery).expanduser().resolve()
            if not self.gallery.is_file():
                raise ValueError(f"gallery {self.gallery} does not exist (enrol someone with `facellm gallery`)")
        if self.max_conversations < 1 or self.conversation_ttl <= 0:
            raise ValueError("max_conversations and conversation_ttl must be positive")
        if self.max_queue < 0:
            raise ValueError("max_queue must be 0 or more")
        if self.request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        bad = [u for u in self.url_allowlist if not u.lower().startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"URL allow-list entries must start with http:// or https://: {bad}")
