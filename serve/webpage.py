"""The chat web page: static files in serve/web/ (plain HTML/JS/CSS, no build step, nothing from a CDN, so it
works offline), served at / by the same server. The page talks to /v1/faces/query with ``stream: true``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, JSONResponse

WEB = Path(__file__).parent / "web"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".ico": "image/x-icon"}


def web_router(app) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    settings = app.state.settings

    @router.get("/")
    async def index():
        return FileResponse(WEB / "index.html", media_type=_TYPES[".html"], headers={"Cache-Control": "no-cache"})

    @router.get("/favicon.ico")
    async def favicon():  # browsers ask for it on their own: answer with the page's icon, not a 404
        return FileResponse(WEB / "favicon.ico", media_type=_TYPES[".ico"],
                            headers={"Cache-Control": "public, max-age=86400"})

    @router.get("/web/config.json")
    async def config():  # what the page needs to know before the first request (no secrets)
        return JSONResponse({"auth_required": bool(settings.api_keys), "model": settings.model_name,
                             "query_model": settings.query_model, "gallery": settings.gallery is not None,
                             "max_image_bytes": settings.max_image_bytes})

    @router.get("/web/{name}")
    async def static(name: str):
        path = (WEB / name).resolve()
        if path.parent != WEB.resolve() or path.suffix not in _TYPES or not path.is_file():
            raise HTTPException(404, "not found")
        return FileResponse(path, media_type=_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})

    return router


__all__ = ["web_router"]
