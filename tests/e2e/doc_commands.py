"""Every example command the documentation shows, as data: README.md and docs/*.md (code blocks, indented
or fenced, and inline `adapt ...` spans) and the "Examples:" epilog of every `adapt` command.

Each example is one `DocCommand`:

* ``command``: a command a reader would type; ``steps`` are its `adapt` invocations (two for `a && b`), each
  with its arguments after ``adapt``, the environment assignments in front of it (``ADAPT_REGISTRY=...``),
  the file piped into it (``cat texts.txt | adapt ...``) and how it is launched (``adapt``, or
  ``torchrun ... -m adapter_cli`` / ``accelerate launch -m adapter_cli``);
* ``synopsis``: a usage line with placeholders (``[--json]``, ``NAME|ARCHIVE``, ``RUN``): not runnable, but
  its command must exist and every option it names must be one of that command's options;
* ``path``: a span that only names a command (`adapt cache ls`): the command must exist;
* ``other``: a line that mentions `adapt` inside prose (``(publishers: ... adapt publish NAME ...)``):
  never run; the test lists each one with a reason, so nothing is dropped silently.

No torch, no typer: this module only reads text.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>\$\([^)]*\)|'[^']*'|\"[^\"]*\"|[^\s'\"]*)\s+")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.\.\.)?$")  # RUN, NAME, DIR, A, B, C, RUN_OR_FOLDER...
ADAPT_EXECUTABLES = ("adapt", ".venv/bin/adapt")
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh"}


@dataclass(frozen=True)
class Step:
    argv: tuple[str, ...]                      # the arguments after `adapt`
    env: tuple[tuple[str, str], ...] = ()      # NAME=value assignments in front of it
    stdin: str | None = None                   # `cat FILE | adapt ...`: FILE
    launcher: str = "adapt"                    # adapt, torchrun or accelerate


@dataclass
class DocCommand:
    text: str                                  # as written (continuation lines joined, comment dropped)
    kind: str                                  # command | synopsis | path | other
    steps: tuple[Step, ...] = ()
    sources: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.text


def _strip_comment(line: str) -> str:
    """Drop a trailing shell comment (`  # ...` outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _unquoted(text: str) -> str:
    """The text with quoted strings blanked out (to look for shell syntax and placeholders)."""
    return re.sub(r"'[^']*'|\"[^\"]*\"", "''", text)


def _is_synopsis(text: str) -> bool:
    bare = _unquoted(text)
    if re.search(r"(^|\s)\[|\.\.\.|\||\{", bare):
        return True
    return any(PLACEHOLDER.match(tok) for tok in bare.split())


def _split_top(text: str, sep: str) -> list[str]:
    """Split on a shell operator (`&&`, `|`) outside quotes."""
    parts, quote, cur, i = [], None, "", 0
    while i < len(text):
        ch = text[i]
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif text.startswith(sep, i) and (sep != "|" or not text.startswith("||", i)):
            parts.append(cur)
            cur, i = "", i + len(sep)
            continue
        cur += ch
        i += 1
    parts.append(cur)
    return [p.strip() for p in parts]


def _launch(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(launcher, the arguments after `adapt`) if the tokens run adapt, else None."""
    if not tokens:
        return None
    head = tokens[0]
    if head in ADAPT_EXECUTABLES or head.endswith("/bin/adapt"):
        return "adapt", tokens[1:]
    for launcher in ("torchrun", "accelerate", "python", "python3"):
        if head == launcher and "-m" in tokens:
            i = tokens.index("-m")
            if i + 1 < len(tokens) and tokens[i + 1] == "adapter_cli":
                return launcher, tokens[i + 2:]
    return None


def _step(part: str) -> Step | None:
    """One pipeline (`[ENV=v ...] [cat F |] adapt ...`) as a Step, or None when it does not run adapt."""
    stdin = None
    pipeline = _split_top(part, "|")
    if len(pipeline) == 2:
        feeder = shlex.split(pipeline[0])
        if len(feeder) == 2 and feeder[0] == "cat":
            stdin = feeder[1]
            part = pipeline[1]
        else:
            return None
    elif len(pipeline) > 2:
        return None
    env = []
    while m := ASSIGNMENT.match(part):  # NAME=value, NAME='a b', NAME=$(cat token) (kept as written)
        value = m["value"]
        env.append((m["name"], value if value.startswith("$(") else shlex.split(value)[0] if value else ""))
        part = part[m.end():]
    try:
        tokens = shlex.split(part)
    except ValueError:
        return None
    launched = _launch(tokens)
    if launched is None:
        return None
    launcher, argv = launched
    return Step(argv=tuple(argv), env=tuple(env), stdin=stdin, launcher=launcher)


def classify(text: str, inline: bool = False, command_paths: frozenset = frozenset()) -> DocCommand:
    """Turn one example (a line, continuation lines joined) into a DocCommand. An inline span that is just a
    command path (``command_paths``: tuples such as ``("cache", "ls")``) names that command: kind ``path``."""
    text = _strip_comment(text.strip())
    if text.startswith("$ "):
        text = text[2:].strip()
    parts = _split_top(text, "&&")
    steps = [_step(p) for p in parts]
    if all(steps):
        runs_adapt = True
    else:
        runs_adapt = False
    if runs_adapt:
        if any(_is_synopsis(_split_top(p, "|")[-1]) for p in parts):
            return DocCommand(text, "synopsis", tuple(steps))
        if inline and len(steps) == 1 and steps[0].launcher == "adapt" and steps[0].argv in command_paths:
            return DocCommand(text, "path", tuple(steps))  # `adapt cache ls` in a sentence: names a command
        return DocCommand(text, "command", tuple(steps))
    # a synopsis line that shlex cannot split, or mentions of adapt in prose
    bare = re.sub(r"^(\.venv/bin/)?adapt\s+", "", text)
    if re.match(r"^(\.venv/bin/)?adapt\s", text) and _is_synopsis(bare):
        return DocCommand(text, "synopsis", (Step(argv=tuple(_unquoted(bare).split())),))
    return DocCommand(text, "other")


# ---------------------------------------------------------------------------------------------- markdown

def _code_blocks(markdown: str) -> tuple[list[tuple[int, str, bool]], str]:
    """([(line number, logical line, fenced)] of shell code blocks, the markdown without its code blocks)."""
    lines = markdown.splitlines()
    out: list[tuple[int, str, bool]] = []
    prose: list[str] = []
    fence_lang: str | None = None
    in_indented = False
    previous_blank = True
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if fence_lang is not None:
            if stripped.startswith("```"):
                fence_lang = None
            elif fence_lang in SHELL_LANGUAGES:
                number, logical = i + 1, line
                while logical.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    logical = logical.rstrip()[:-1].rstrip() + " " + lines[i].strip()
                out.append((number, logical.strip(), True))
            prose.append("")
            i += 1
            continue
        if stripped.startswith("```"):
            fence_lang = stripped[3:].strip().lower()
            prose.append("")
            i += 1
            previous_blank = False
            continue
        indented = line.startswith("    ") and stripped
        if indented and (previous_blank or in_indented):
            in_indented = True
            number, logical = i + 1, line
            depth = len(line) - len(line.lstrip())
            # backslash continuations, and synopsis continuation lines indented deeper starting with `[`
            while i + 1 < len(lines):
                nxt = lines[i + 1]
                nxt_depth = len(nxt) - len(nxt.lstrip())
                if logical.rstrip().endswith("\\"):
                    logical = logical.rstrip()[:-1].rstrip() + " " + nxt.strip()
                elif nxt.strip() and nxt_depth > depth and nxt.strip().startswith("["):
                    logical = logical.rstrip() + " " + nxt.strip()
                else:
                    break
                i += 1
            out.append((number, logical.strip(), False))
            prose.append("")
        else:
            if stripped:
                in_indented = False
            prose.append(line)
        previous_blank = not stripped
        i += 1
    return out, "\n".join(prose)


def _runs_adapt(line: str, fenced: bool) -> bool:
    """An example line: it starts with adapt (after a `$ ` prompt), a NAME=value assignment or `cat FILE |`,
    or launches `-m adapter_cli`; in a fenced shell block, any line that runs adapt as a
    command word (a loop body such as `CUDA_VISIBLE_DEVICES=$((i % gpus)) adapt train ...`)."""
    if re.search(r"-m adapter_cli\b", line):
        return True
    if fenced:
        return bool(re.search(r"(^|[\s|&;])(\.venv/bin/)?adapt\s", line))
    return bool(re.match(r"^(\$ )?([A-Za-z_]\w*=|cat \S+ \||(\.venv/bin/)?adapt\s)", line))


def markdown_examples(path: Path, root: Path = ROOT,
                      command_paths: frozenset = frozenset()) -> list[tuple[str, DocCommand]]:
    """(source, DocCommand) for every adapt line in a markdown file's shell code blocks and every inline
    code span that starts with `adapt `."""
    rel = path.relative_to(root).as_posix()
    blocks, prose = _code_blocks(path.read_text())
    found = []
    for number, line, fenced in blocks:
        if _runs_adapt(line, fenced):
            found.append((f"{rel}:{number}", classify(line)))
    for match in re.finditer(r"`([^`]+)`", prose):
        span = " ".join(match.group(1).split())
        if re.match(r"^(\.venv/bin/)?adapt\s", span):
            number = prose.count("\n", 0, match.start()) + 1
            found.append((f"{rel}:{number} (inline)", classify(span, True, command_paths)))
    return found


def epilog_examples(epilogs: dict[str, str]) -> list[tuple[str, DocCommand]]:
    """(source, DocCommand) for every line of the "Examples:" part of each command's epilog
    (``epilogs``: command path such as ``adapt cache ls`` -> epilog text)."""
    found = []
    for path, epilog in sorted(epilogs.items()):
        if not epilog:
            continue
        head, _, body = epilog.partition(":")
        if head.strip() not in ("Examples", "Example"):
            continue
        lines = body.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1].rstrip() + " " + lines[i].strip()
            if line:
                found.append((f"{path} --help", classify(line)))
            i += 1
    return found


def markdown_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def collect(epilogs: dict[str, str], command_paths: frozenset = frozenset(),
            root: Path = ROOT) -> dict[str, DocCommand]:
    """Every example, deduplicated by its text (`.venv/bin/adapt X` and `adapt X` are the same), each with
    all the places it is shown; one shown both as a command and as a name in a sentence is a command."""
    everything: list[tuple[str, DocCommand]] = []
    for path in markdown_files(root):
        everything += markdown_examples(path, root, command_paths)
    everything += epilog_examples(epilogs)
    merged: dict[str, DocCommand] = {}
    for source, cmd in everything:
        text = re.sub(r"^\.venv/bin/adapt\b", "adapt", cmd.text)
        if text not in merged:
            merged[text] = DocCommand(text, cmd.kind, cmd.steps, [])
        elif cmd.kind == "command":
            merged[text].kind = "command"
        merged[text].sources.append(source)
    return merged
