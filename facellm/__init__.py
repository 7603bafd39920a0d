"""FaceLLM: an offline-first multimodal face-LLM agent grounded in specialist face tools."""

__version__ = "0.1.0"
