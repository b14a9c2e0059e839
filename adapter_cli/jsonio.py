"""JSON (and YAML) that nobody vouches for (cards, indexes, configs, entries, recipes, tasks): one reader
each that turns bad text, a number too long to convert, or nesting deeper than any of our files has (a
RecursionError here or in a later dump) into one error line."""

from __future__ import annotations

import json
from typing import Any

from .errors import AdaptError, UsageError

MAX_JSON_DEPTH = 32  # a card or an index nests 4 levels; anything far deeper is an attack on the parser


def load_json(raw: bytes | str, what: str, error: type[AdaptError] = UsageError) -> Any:
    """JSON that nobody vouches for: bad text, a number too long to convert, or nesting deeper than any
    card or index has (which would end in a RecursionError here or in a later dump) is one ``error`` line."""
    try:
        data = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and over-long integers
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise error(f"{what} is not valid JSON ({reason})") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply (more than {MAX_JSON_DEPTH} levels) to be read") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise error(f"{what} is nested too deeply (more than {MAX_JSON_DEPTH} levels) to be read")
    return data


def json_depth(data: Any) -> int:
    """How deeply ``data`` nests, counted without recursion (the point is not to recurse)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:  # deeper than the limit is already an answer
                stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_yaml(text: str, what: str, error: type[AdaptError] = UsageError) -> Any:
    """YAML that nobody vouches for (a config, recipe or task file): nesting deeper than
    ``MAX_JSON_DEPTH`` is refused from the parser's event stream, before the (recursive) composer could
    end in a RecursionError; bad YAML is one ``error`` line."""
    import yaml

    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):  # the event parser keeps a stack, no recursion
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_JSON_DEPTH:
                    raise error(f"{what} is nested too deeply (more than {MAX_JSON_DEPTH} levels) to be read")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{what} is not valid YAML ({(str(exc).splitlines() or ['?'])[0][:120]})") from None
    except (RecursionError, ValueError) as exc:  # ValueError: an integer too long to convert
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0][:120]
        raise error(f"{what} cannot be read ({reason})") from None
