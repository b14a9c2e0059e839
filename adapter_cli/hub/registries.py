"""Which registry a spec names: a directory, an http(s) URL or hf://org/repo. The one module that knows every
kind, so the base class in registry.py knows no subclass."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import UsageError
from .hf import HfRegistry
from .http import HttpRegistry
from .registry import DirectoryRegistry, Registry


def open_registry(spec: str, token: str | None = None) -> Registry:
    """The registry ``spec`` names. ``token`` (else $ADAPT_REGISTRY_TOKEN) is what an http(s) registry
    served with ``adapt hub serve --writable`` wants for publishing; other kinds take none."""
    if spec.startswith(("http://", "https://")):
        return HttpRegistry(spec.rstrip("/"), spec, token)
    if token is not None:
        raise UsageError(f"`token_file` is for http(s) registries, not {spec!r}"
                         + (" (hf:// uses your Hugging Face login: `hf auth login`)" if spec.startswith("hf://") else ""))
    if spec.startswith("hf://"):
        return HfRegistry.from_spec(spec)
    if spec.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return DirectoryRegistry(Path(unquote(urlparse(spec).path)), spec)
    if "://" in spec:
        raise UsageError(f"unknown registry {spec!r}; use a directory, an http(s):// URL or hf://org/repo")
    return DirectoryRegistry(Path(spec).expanduser(), spec)


def configured_registries(explicit: list[str] | None = None) -> list[str]:
    """Registries given on the command line, else those in ADAPT_REGISTRY (separated by spaces or commas)."""
    if explicit:
        return list(explicit)
    return [s for s in re.split(r"[\s,]+", os.environ.get("ADAPT_REGISTRY", "")) if s]
