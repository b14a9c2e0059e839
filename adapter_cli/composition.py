"""Composition of adapters as data: which adapters run, in what arrangement.

Written as strings in the API and the CLI::

    mrpc                              a single adapter (the same as stack(mrpc))
    stack(lang_en,mrpc)               lang_en, then mrpc on its output
    fuse(mnli,qqp,rte)                AdapterFusion over three adapters
    stack(lang_en,fuse(mnli,qqp,rte)) a language adapter below a fusion
    fuse(a,b,name=my_fusion)          a fusion saved under a custom name
    average(a,b,weights=[0.7,0.3])    a weighted average of adapter outputs (weights normalised to sum 1)
    batch_split(a,b,sizes=[2,3])      the first 2 rows of a batch through a, the next 3 through b
    parallel(a,b)                     the whole batch through a and through b in one pass (one output each)

Block names are case-insensitive and ``[ ]`` may replace ``( )``, so AdapterHub's printed form
``Stack[hb, pf]`` parses too. This module has no torch dependency.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from collections.abc import Collection
from typing import Any, ClassVar, Union

from .errors import CompositionError, suggest

NAME_PATTERN = r"[A-Za-z0-9_\-]+"
_NAME_RE = re.compile(rf"^{NAME_PATTERN}$")


def check_name(name: str, what: str = "adapter") -> str:
    """Adapter, fusion and head names become module keys and directory names: no '.', no path separators."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CompositionError(
            f"invalid {what} name {name!r}: use letters, digits, '_' and '-' only (no '.', '/', spaces or commas)"
        )
    return name


@dataclass(frozen=True)
class Block:
    """A composition block; ``children`` are adapter names or nested blocks."""

    children: tuple[Node, ...]
    kind: ClassVar[str] = "block"
    # Which child kinds may appear inside this block (AdapterHub's ALLOWED_NESTINGS).
    allowed_children: ClassVar[tuple[str, ...]] = ()
    min_children: ClassVar[int] = 1

    def leaves(self) -> list[str]:
        out: list[str] = []
        for child in self.children:
            out.extend([child] if isinstance(child, str) else child.leaves())
        return out

    def last(self) -> str:
        """The last adapter in the block; its configuration decides the sub-layer's final add & norm."""
        child = self.children[-1]
        return child if isinstance(child, str) else child.last()

    def kwargs(self) -> dict[str, Any]:
        return {}

    def __str__(self) -> str:
        parts = [str(c) for c in self.children]
        parts += [f"{k}={v}" for k, v in self.kwargs().items()]
        return f"{self.kind}({','.join(parts)})"


@dataclass(frozen=True)
class Stack(Block):
    kind: ClassVar[str] = "stack"
    allowed_children: ClassVar[tuple[str, ...]] = ("adapter", "fuse", "average", "batch_split")


@dataclass(frozen=True)
class Average(Block):
    """out = sum_i w_i * out_i with sum_i w_i = 1 (AdapterHub divides by N once more; we do not)."""

    weights: tuple[float, ...] | None = None
    kind: ClassVar[str] = "average"
    allowed_children: ClassVar[tuple[str, ...]] = ("adapter", "stack")
    min_children: ClassVar[int] = 2

    def normalized_weights(self) -> list[float]:
        raw = list(self.weights) if self.weights else [1.0] * len(self.children)
        total = sum(raw)
        return [w / total for w in raw]

    def kwargs(self) -> dict[str, Any]:
        return {"weights": "[" + ",".join(f"{w:g}" for w in self.weights) + "]"} if self.weights else {}


@dataclass(frozen=True)
class BatchSplit(Block):
    """Rows of a batch in consecutive parts, each part through one child."""

    sizes: tuple[int, ...] = ()
    kind: ClassVar[str] = "batch_split"
    allowed_children: ClassVar[tuple[str, ...]] = ("adapter", "stack", "average", "fuse")
    min_children: ClassVar[int] = 2

    def kwargs(self) -> dict[str, Any]:
        return {"sizes": "[" + ",".join(map(str, self.sizes)) + "]"}


@dataclass(frozen=True)
class Parallel(Block):
    """The batch replicated once per child; each copy through one child; one output per child."""

    kind: ClassVar[str] = "parallel"
    allowed_children: ClassVar[tuple[str, ...]] = ("adapter", "stack", "average", "fuse")
    min_children: ClassVar[int] = 2


@dataclass(frozen=True)
class Fuse(Block):
    name: str | None = field(default=None)
    kind: ClassVar[str] = "fuse"
    allowed_children: ClassVar[tuple[str, ...]] = ("adapter", "stack")
    min_children: ClassVar[int] = 2

    @property
    def fusion_name(self) -> str:
        """The fusion layer to use: the custom name, else the member names joined by ',' (AdapterHub's rule)."""
        if self.name:
            return self.name
        return ",".join(c if isinstance(c, str) else c.last() for c in self.children)

    def kwargs(self) -> dict[str, Any]:
        return {"name": self.name} if self.name else {}


Node = Union[str, Block]

# The single registry of composition blocks: name -> (class, accepted keyword arguments).
BLOCKS: dict[str, tuple[type[Block], tuple[str, ...]]] = {
    "stack": (Stack, ()),
    "fuse": (Fuse, ("name",)),
    "average": (Average, ("weights",)),
    "batch_split": (BatchSplit, ("sizes",)),
    "batchsplit": (BatchSplit, ("sizes",)),
    "parallel": (Parallel, ()),
}


# ==================================================================== parser

_TOKEN = re.compile(rf"\s*(?:(?P<number>\d*\.\d+(?:[eE][-+]?\d+)?)|(?P<name>{NAME_PATTERN})|(?P<punct>[()\[\],=])"
                    rf"|(?P<bad>\S))")


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens = []
    for m in _TOKEN.finditer(text):
        if m.group("bad"):
            raise CompositionError(
                f"malformed composition {text!r}: unexpected {m.group('bad')!r} at position {m.start('bad') + 1}"
                " (adapter names use letters, digits, '_' and '-')"
            )
        if m.group("number"):
            tokens.append(("number", m.group("number"), m.start("number")))
        elif m.group("name"):
            tokens.append(("name", m.group("name"), m.start("name")))
        elif m.group("punct"):
            tokens.append(("punct", m.group("punct"), m.start("punct")))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def error(self, expected: str) -> CompositionError:
        if self.pos < len(self.tokens):
            _, value, at = self.tokens[self.pos]
            where = f"found {value!r} at position {at + 1}"
        else:
            where = "found the end of the text"
        return CompositionError(f"malformed composition {self.text!r}: expected {expected}, {where}")

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None, kind: str | None = None, expected: str = "") -> str:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value) or (kind is not None and tok[0] != kind):
            raise self.error(expected or repr(value))
        self.pos += 1
        return tok[1]

    def node(self) -> Node:
        name = self.take(kind="name", expected="an adapter name or a block such as stack(...) or fuse(...)")
        tok = self.peek()
        if tok is None or tok[1] not in ("(", "["):
            return name
        block = name.lower()
        if block not in BLOCKS:
            raise CompositionError(
                f"unknown composition block {name!r}{suggest(block, BLOCKS)}; known blocks: {', '.join(BLOCKS)}"
            )
        cls, accepted = BLOCKS[block]
        close = ")" if self.take() == "(" else "]"
        children: list[Node] = []
        kwargs: dict[str, str] = {}
        while True:
            if self.peek() is not None and self.peek()[1] == close and not children and not kwargs:
                break
            start = self.pos
            child = self.node()
            if isinstance(child, str) and self.peek() is not None and self.peek()[1] == "=":
                self.pos += 1
                if child not in accepted:
                    self.pos = start
                    raise CompositionError(
                        f"malformed composition {self.text!r}: {block}() takes no argument {child!r}"
                        + (f"; it accepts {', '.join(accepted)}" if accepted else "")
                    )
                kwargs[child] = self.value(child)
            else:
                if kwargs:
                    raise self.error("keyword arguments after the adapters")
                children.append(child)
            tok = self.peek()
            if tok is not None and tok[1] == ",":
                self.pos += 1
                continue
            break
        self.take(close, expected=f"',' or {close!r}")
        return _build(cls, tuple(children), kwargs, self.text)

    def value(self, key: str) -> Any:
        """A keyword value: a name, or a bracketed list of numbers such as [0.7,0.3]."""
        tok = self.peek()
        if tok is not None and tok[1] == "[":
            self.pos += 1
            items = []
            while True:
                tok = self.peek()
                if tok is None or tok[0] not in ("name", "number"):
                    raise self.error(f"a number in {key}=[...]")
                try:
                    items.append(float(tok[1]) if tok[0] == "number" or "." in tok[1] else int(tok[1]))
                except ValueError:
                    raise self.error(f"a number in {key}=[...]") from None
                self.pos += 1
                if self.peek() is not None and self.peek()[1] == ",":
                    self.pos += 1
                    continue
                self.take("]", expected=f"',' or ']' to close {key}=[...]")
                return tuple(items)
        return self.take(kind="name", expected=f"a value for {key}=")

    def parse(self) -> Node:
        if not self.tokens:
            raise CompositionError("empty composition: name an adapter, e.g. 'mrpc' or 'fuse(mnli,qqp,rte)'")
        node = self.node()
        if self.peek() is not None:
            raise self.error("the end of the composition")
        return node


def _build(cls: type[Block], children: tuple[Node, ...], kwargs: dict[str, Any], text: str) -> Block:
    if cls is Average and "weights" in kwargs:
        if not isinstance(kwargs["weights"], tuple):
            raise CompositionError(f"{text!r}: weights must be a list such as [0.7,0.3]")
        return Average(children, weights=tuple(float(w) for w in kwargs["weights"]))
    if cls is BatchSplit:
        sizes = kwargs.get("sizes")
        if not isinstance(sizes, tuple) or not all(isinstance(n, int) for n in sizes):
            raise CompositionError(f"{text!r}: batch_split needs sizes=[n1,n2,...] with whole numbers of rows")
        return BatchSplit(children, sizes=sizes)
    return cls(children, **kwargs)


def parse_composition(spec: Any) -> Block | None:
    """Parse and validate a composition. ``None``, ``""`` and ``"none"`` mean no adapter is active."""
    if spec is None:
        return None
    if isinstance(spec, Block):
        node: Node = spec
    elif isinstance(spec, str):
        if spec.strip().lower() in ("", "none"):
            return None
        node = _Parser(spec).parse()
    elif isinstance(spec, (list, tuple)) and all(isinstance(s, str) for s in spec):
        node = Stack(tuple(spec))
    else:
        raise CompositionError(f"cannot read a composition from {type(spec).__name__}: use a string such as 'stack(a,b)'")
    block = node if isinstance(node, Block) else Stack((node,))
    validate(block)
    _no_parallel_inside(block)
    return block


def _no_parallel_inside(block: Block) -> None:
    for child in block.children:
        if isinstance(child, Parallel):
            raise CompositionError(f"parallel() must be the outermost block, not inside {block.kind}() in {block}")
        if isinstance(child, Block):
            _no_parallel_inside(child)


def validate(block: Block, depth: int = 0) -> None:
    """Nesting rules: Stack holds adapters and Fuse; Fuse holds adapters and Stack; at most two levels
    of blocks below the top unless the deeper element is a Stack or an adapter (AdapterHub's rule)."""
    if len(block.children) < block.min_children:
        raise CompositionError(f"{block.kind}() needs at least {block.min_children} members, got {len(block.children)} in {block}")
    for child in block.children:
        if isinstance(child, str):
            check_name(child)
            continue
        if child.kind not in block.allowed_children:
            allowed = ", ".join(block.allowed_children)
            raise CompositionError(f"{child.kind}() cannot be nested inside {block.kind}() in {block}; "
                                   f"{block.kind}() may hold: {allowed}")
        if depth + 1 > 1 and not isinstance(child, Stack) and not isinstance(block, Parallel):
            raise CompositionError(f"{block} nests {child.kind}() too deeply; at most two levels of blocks")
        validate(child, depth + 1)
    if isinstance(block, Average):
        if block.weights is not None and (len(block.weights) != len(block.children) or min(block.weights) < 0
                                          or sum(block.weights) <= 0):
            raise CompositionError(f"{block}: give one non-negative weight per member ({len(block.children)}), "
                                   "not all zero")
    if isinstance(block, BatchSplit):
        if len(block.sizes) != len(block.children) or min(block.sizes) < 1:
            raise CompositionError(f"{block}: give one positive row count per member ({len(block.children)})")
    if isinstance(block, Stack):
        for child in block.children[:-1]:
            if isinstance(child, BatchSplit):
                raise CompositionError(f"batch_split() must be the last member of stack() in {block}")
    if isinstance(block, Fuse):
        names = block.leaves() if all(isinstance(c, str) for c in block.children) else \
            [c if isinstance(c, str) else c.last() for c in block.children]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise CompositionError(f"{block} fuses {', '.join(dupes)} more than once")
        if block.name is not None:
            check_name(block.name, "fusion")


def fuse_blocks(block: Block | None) -> list[Fuse]:
    """Every Fuse block inside ``block`` (including itself)."""
    if block is None:
        return []
    found = [block] if isinstance(block, Fuse) else []
    for child in block.children:
        if isinstance(child, Block):
            found.extend(fuse_blocks(child))
    return found


def one_first_in_stack(block: Block, members: Collection[str], method: str, elsewhere: str) -> str | None:
    """The one adapter of ``members`` (adapters of ``method``, e.g. ReFT or prompt tuning, which change the
    hidden states or the input before anything else runs) that ``block`` holds, or None. Refused in one line:
    several of them (AdapterHub runs the first and ignores the others), or one anywhere but alone or first in
    a stack (``elsewhere``: what AdapterHub does with it there)."""
    leaves = block.leaves()
    present = [n for n in dict.fromkeys(leaves) if n in members]
    if not present:
        return None
    if len(present) > 1:
        raise CompositionError(f"composition {block} holds {len(present)} {method} adapters "
                               f"({', '.join(map(repr, present))}); one runs per forward pass (AdapterHub runs "
                               "the first and ignores the others)")
    name = present[0]
    if leaves.count(name) > 1 or not (isinstance(block, Stack) and block.children[0] == name):
        raise CompositionError(f"composition {block}: {method} adapter {name!r} runs alone or first in a stack, "
                               f"as stack({name},...); {elsewhere}")
    return name


def shown(block: Block | str | None) -> str | None:
    """A composition as a user would write it: a single adapter as its name, not as stack(name)."""
    if block is None or isinstance(block, str):
        return block
    if isinstance(block, Stack) and len(block.children) == 1 and isinstance(block.children[0], str):
        return block.children[0]
    return str(block)
