"""FaceLLM: an offline-first multimodal face-LLM agent grounded in specialist face tools."""

__version__ = "0.1.0"

import logging as _logging


class _DropKernelsHint(_logging.Filter):
    """bitsandbytes suggests installing `kernels` at import: that package downloads code at run time, which
    this offline project never does; its CPU 4-bit path works without it."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "kernels" not in record.getMessage()


_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelsHint())
