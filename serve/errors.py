"""The server's one error vocabulary: every error body, on every route, is OpenAI's shape

    {"error": {"message": str, "type": str, "param": str | None, "code": str}}

with ``code`` one of ``CODES`` (never null) and ``type`` derived from it, so a client can branch on ``code``
alone. Streams carry the same object in an error event.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

# code -> (HTTP status it usually goes with, OpenAI error type)
CODES: dict[str, tuple[int, str]] = {
    "invalid_request": (400, "invalid_request_error"),       # a malformed or unservable request
    "invalid_image": (400, "invalid_request_error"),         # undecodable, refused path/URL, over the pixel limit
    "image_too_large": (400, "invalid_request_error"),       # an image file over --max-image-mb
    "too_many_images": (400, "invalid_request_error"),       # more images than the server takes per request
    "no_image": (400, "invalid_request_error"),              # a face question without any image
    "no_gallery": (400, "invalid_request_error"),            # use_gallery on a server without --gallery
    "invalid_tool_choice": (400, "invalid_request_error"),
    "max_tokens_too_large": (400, "invalid_request_error"),
    "invalid_api_key": (401, "authentication_error"),
    "not_found": (404, "invalid_request_error"),             # an unknown route or conversation
    "model_not_found": (404, "invalid_request_error"),
    "method_not_allowed": (405, "invalid_request_error"),
    "request_too_large": (413, "invalid_request_error"),
    "rate_limit_exceeded": (429, "rate_limit_error"),        # queue full: comes with Retry-After
    "server_error": (500, "server_error"),
    "shutting_down": (503, "server_error"),                  # draining after SIGTERM: comes with Retry-After
    "timeout": (504, "timeout_error"),
}


class APIError(Exception):
    """An error answered to the client; ``status`` defaults to the code's usual HTTP status."""

    def __init__(self, code: str, message: str, *, status: int | None = None, param: str | None = None,
                 retry_after: float | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")  # a typo here would be a silent contract break
        super().__init__(message)
        self.code, self.message, self.param, self.retry_after = code, message, param, retry_after
        self.status = status or CODES[code][0]
        self.kind = CODES[code][1]

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(self.retry_after)))} if self.retry_after is not None else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


__all__ = ["APIError", "CODES"]
