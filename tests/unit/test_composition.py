from __future__ import annotations

import pytest

from adapter_cli.composition import Fuse, Stack, check_name, parse_composition
from adapter_cli.errors import CompositionError


def test_forms_parse_to_the_same_blocks() -> None:
    assert parse_composition("a") == Stack(("a",))
    assert parse_composition("Stack[hb, pf]") == parse_composition("stack(hb,pf)")
    nested = parse_composition("stack(lang_en,fuse(mnli,qqp,rte))")
    assert nested == Stack(("lang_en", Fuse(("mnli", "qqp", "rte"))))
    assert nested.leaves() == ["lang_en", "mnli", "qqp", "rte"]
    assert str(nested) == "stack(lang_en,fuse(mnli,qqp,rte))"
    assert parse_composition("fuse(a,stack(b,c))").fusion_name == "a,c"  # AdapterHub's naming
    assert parse_composition("fuse(a,b,name=ab)").fusion_name == "ab"
    assert parse_composition(None) is None and parse_composition("None") is None


@pytest.mark.parametrize("text, message", [
    ("stack(a,", "malformed"),
    ("stack(a))", "malformed"),
    ("fuse(a)", "at least 2"),
    ("fuse(a,a)", "more than once"),
    ("fuse(a,fuse(b,c))", "cannot be nested"),
    ("stack(a,stack(b))", "cannot be nested"),
    ("stak(a,b)", "did you mean 'stack'"),
    ("stack(a.b)", "unexpected '.'"),
    ("stack(a/b)", "unexpected '/'"),
    ("fuse(a,b,weights=1)", "takes no argument"),
    ("", "empty"),
])
def test_malformed_compositions(text, message) -> None:
    with pytest.raises(CompositionError, match=message):
        _parse(text)


def _parse(text):
    from adapter_cli.composition import _Parser

    # parse_composition reads "" as "no adapter"; the parser itself rejects empty text
    return parse_composition(text) if text else _Parser(text).parse()


@pytest.mark.parametrize("name", ["a.b", "a/b", "../x", "has space", "", "a,b"])
def test_bad_names(name) -> None:
    with pytest.raises(CompositionError):
        check_name(name)
