"""The house rules of docs/architecture.md, checked: no import cycles among adapter_cli's modules (imports
inside functions count: they hide a cycle, they do not remove it), and the library layers never import
the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "adapter_cli"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """The adapter_cli modules ``path`` imports, resolved to module names (``from . import x`` names the
    submodule x when there is one)."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("adapter_cli"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - node.level + 1]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("adapter_cli"):
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if _exists(sub) else module)
    return found


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        graph[name] = {m for m in _imports(path, name) if m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


# Programs, not library: `python -m adapter_cli` and `make demo` render like the CLI does.
ENTRY_POINTS = {"adapter_cli.__main__", "adapter_cli.demo"}


def test_the_library_never_imports_the_cli() -> None:
    offenders = {m: sorted(i for i in deps if i.startswith("adapter_cli.cli"))
                 for m, deps in _graph().items() if not m.startswith("adapter_cli.cli") and m not in ENTRY_POINTS}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# docs/architecture.md's layers, bottom to top: a module imports only from its own layer or those below.
LAYERS = [
    ("foundations", ["_version", "errors", "reporting", "jsonio", "fsutil", "defaults", "devices", "builtins", "composition",
                     "methods.activations", "methods", "methods.base", "methods.bottleneck", "methods.lora",
                     "methods.invertible", "methods.reft", "methods.phm", "methods.prompt", "methods.prefix", "methods.union",
                     "head_config", "fusion_config", "presets", "architectures"]),
    ("data", ["tasks", "tasks.loading", "tasks.metrics", "tasks.subsets", "tasks.text", "formats", "formats.artifacts",
              "formats.native", "formats.adapterhub", "formats.adapterhub_lora", "formats.adapterhub_reft",
              "formats.adapterhub_prompt", "formats.adapterhub_prefix",
              "formats.peft", "images"]),
    ("engine", ["encoder_decoders", "methods.bottleneck_layers", "methods.lora_layers", "methods.invertible_layers", "embedding_sites",
                "methods.reft_layers", "reft_sites", "methods.phm_layers", "methods.prompt_layers", "prompt_sites",
                "methods.prefix_layers", "prefix_sites", "methods.union_layers",
                "fastpaths", "stitching", "linear_sites", "linear_views",
                "merging", "fusion", "heads", "model", "lm_head", "generation", "tokenizer", "tagging", "qa", "inference",
                "compiled"]),
    ("storage", ["cache", "hub", "hub.card", "hub.archive", "hub.registry", "hub.http", "hub.hf", "hub.pack",
                 "hub.pull", "hub.registries", "hub.server", "hub.site", "resolve"]),
    ("training", ["training", "training.recipe", "training.reporter", "training.data", "training.setup",
                  "training.features", "training.mlm", "training.clm", "training.loop", "training.sampling", "training.multitask",
                  "runs", "results", "activations"]),
    ("programs", ["cli", "demo", "__main__", ""]),
]


def _layer_of(module: str) -> int:
    short = module.removeprefix("adapter_cli").removeprefix(".")
    for i, (_, members) in enumerate(LAYERS):
        if short in members or (i == len(LAYERS) - 1 and short.startswith("cli.")):
            return i
    raise AssertionError(f"{module} is in no layer of docs/architecture.md: add it to LAYERS and the doc")


def test_imports_go_down_the_layers() -> None:
    upward = sorted(f"{m} ({LAYERS[_layer_of(m)][0]}) imports {d} ({LAYERS[_layer_of(d)][0]})"
                    for m, deps in _graph().items() for d in deps if _layer_of(d) > _layer_of(m))
    assert upward == []


def test_the_doc_names_every_layer() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert all(f"**{name}**" in text for name, _ in LAYERS)


def test_only_the_programs_print() -> None:
    """Below the programs layer the library reports through return values, exceptions, logging and the
    Reporter/progress callbacks; print() and sys.stderr writes are the CLI's."""
    printing = []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if _layer_of(name) == len(LAYERS) - 1:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                printing.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr in ("stderr", "stdout") and \
                    getattr(node.value, "id", None) == "sys":
                printing.append(f"{name}:{node.lineno} (sys.{node.attr})")
    assert printing == []


def test_library_errors_name_parameters_not_flags() -> None:
    """An error raised below the programs layer names what to set by its parameter or recipe key in
    backticks (`data_dir`); the CLI shows it as a flag (--data-dir). Commands quoted whole, in backticks
    (`adapt train --resume ...`), are examples, not flags."""
    import re

    flag = re.compile(r"(?<![\w`-])--[a-z][a-z-]*")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if _layer_of(name) == len(LAYERS) - 1:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            inside = {id(c) for j in ast.walk(node.exc) if isinstance(j, ast.JoinedStr) for c in j.values}
            for part in ast.walk(node.exc):
                if isinstance(part, ast.JoinedStr):  # f-strings: their text with {} for each value
                    value = "".join(c.value if isinstance(c, ast.Constant) else "{}" for c in part.values)
                elif isinstance(part, ast.Constant) and isinstance(part.value, str) and id(part) not in inside:
                    value = part.value
                else:
                    continue
                if flag.search(re.sub(r"`adapt [^`]*`", "", value)):
                    offenders.append(f"{name}:{node.lineno}: {value[:60]!r}")
    assert offenders == []
