"""adapt: adapters on pretrained transformers, from the command line and from Python.

``AdapterModel`` is imported lazily so that ``import adapter_cli`` (and ``adapt --help``) stays instant.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
__all__ = ["AdapterModel", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "AdapterModel":
        from .model import AdapterModel

        return AdapterModel
    raise AttributeError(f"module 'adapter_cli' has no attribute {name!r}")
