"""The compiled mode: the stitched base model under ``torch.compile`` (inductor).

The adapter sites are forward hooks and an instance-level LayerNorm ``forward`` that read the active
composition from a thread-local context (stitching.py, linear_sites.py). TorchDynamo traces through all of
them: every composition of bottleneck (Compacter and invertible layers included) and LoRA-family adapters gives one
graph without breaks (``tests/unit/test_compiled.py`` counts them
with ``torch._dynamo.explain``), and the composition is part of the graph's guards, so switching it recompiles
rather than reusing a graph built for another composition. Only ``model.base`` is compiled; composition
parsing, heads and losses stay eager (cheap, and they change shape with the task). ReFT is the exception: its
check that every row has the positions it edits reads the attention mask, which breaks the graph once per layer
(still right, less fast).

Setting (recipe key ``compile``, ``adapt infer --compile`` / ``--compile-auto``):

* ``false``: eager (default);
* ``true``: compile, and refuse in one line when inductor cannot build on this device (no C++ compiler on
  CPU, no Triton on a GPU), because the user asked for the compiled numbers;
* ``auto``: compile when it can build, otherwise say why on stderr and run eagerly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    import torch

SETTINGS = (False, True, "auto")


def parse_setting(value: Any, source: str) -> bool | str:
    """``true``/``false``/``auto`` in any of the spellings YAML and ``key=value`` overrides produce."""
    if isinstance(value, str) and value.lower() in ("true", "false", "auto"):
        value = {"true": True, "false": False}.get(value.lower(), "auto")
    if value not in SETTINGS or (not isinstance(value, bool) and value != "auto"):
        raise UsageError(f"{source}: compile must be true, false or auto, got {value!r}")
    return value


def blocker(device: torch.device) -> str | None:
    """Why inductor cannot build kernels for ``device`` here, or None when it can."""
    import torch

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python or platform"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "torch.compile needs Triton for GPU kernels and it is not installed"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except ImportError:  # a torch without this helper: let the first compiled call tell
        return None
    except Exception as exc:  # InvalidCxxCompiler, or a compiler that does not run
        return f"torch.compile needs a C++ compiler for CPU kernels and found none ({type(exc).__name__}); " \
               "install g++ or set CXX"
    return None


def compile_model(model: Any, setting: bool | str, device: torch.device, source: str,
                  fallback: str = "compile=auto") -> bool:
    """Compile ``model.base`` in place as ``setting`` asks; True when it is now compiled. ``source`` and
    ``fallback`` name the setting and its eager fall-back as the caller spells them."""
    if setting is False:
        return False
    reason = blocker(device)
    if reason is not None:
        if setting is True:
            raise UsageError(f"{source}: {reason}; or use {fallback} to run eagerly where it cannot build")
        from .reporting import log

        log.warning(f"{fallback}: {reason}; running eagerly")
        return False
    model.base.compile()
    return True
