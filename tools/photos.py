"""The real face photos that ship inside packages, fetched by the setup step (see assets.py)."""

from __future__ import annotations

from pathlib import Path

from .assets import MissingAssetError, home

# name -> file under $FACELLM_HOME/photos
PHOTOS = {
    "astronaut": "astronaut.png",  # skimage: Eileen Collins, one face
    "camera": "camera.png",  # skimage: cameraman, one small face in profile-ish view, grayscale
    "grace_hopper": "grace_hopper.jpg",  # matplotlib sample data, one face
    "group": "t1.jpg",  # insightface wheel: group photo, six faces
    "tom_hanks": "Tom_Hanks_54745.png",  # insightface wheel: one aligned face
    "mask_white": "mask_white.jpg",
    "mask_black": "mask_black.jpg",
    "mask_blue": "mask_blue.jpg",
    "mask_green": "mask_green.jpg",
}


def photo(name: str) -> Path:
    """Path of a bundled test photo, e.g. ``photo("astronaut")`` or ``photo("group")``."""
    if name not in PHOTOS:
        raise KeyError(f"unknown photo {name!r}; known: {sorted(PHOTOS)}")
    path = home() / "photos" / PHOTOS[name]
    if not path.is_file():
        raise MissingAssetError(f"{path} is missing; run `facellm setup` once")
    return path
