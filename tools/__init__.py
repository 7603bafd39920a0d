"""Specialist face tools: detector, landmarker, recognizer, parser, attributes, pose, cues, quality.

Every tool takes an image (path, bytes, PIL, ndarray or an already decoded ``LoadedImage``) and returns
typed results from ``facellm.tools.schema`` that serialise to JSON. ``analyze`` runs the whole chain once.
"""

from .image_io import ImageLoadError, LoadedImage, load_image
from .schema import SCHEMA_VERSION, FaceAnalysis

__all__ = ["FaceAnalysis", "ImageLoadError", "LoadedImage", "SCHEMA_VERSION", "load_image"]
