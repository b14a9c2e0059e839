"""Output and error discipline shared by every command: results on stdout, everything else on stderr."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


def interactive() -> bool:
    """Progress and notes go to stderr only when a person is watching it."""
    return sys.stderr.isatty()


def quiet_libraries() -> None:
    """Keep transformers/huggingface_hub progress bars and warnings off a non-terminal stderr."""
    if interactive():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # no "Retrying in 1s" lines from huggingface_hub
    if "huggingface_hub" in sys.modules:  # imported already: it read the variable above before it was set
        from huggingface_hub.utils import disable_progress_bars
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    # --compile past torch's recompile limit runs the rest eagerly (still right); not a page of stack trace
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)


class _WarningLines(logging.Handler):
    """The library's warnings as `warning: ...` lines on the stderr of the moment (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr, flush=True)


def setup_reporting() -> None:
    """The library prints nothing: the CLI shows its warnings and draws its progress."""
    from ..reporting import log, set_progress_factory
    from ._progress import byte_progress

    if not any(isinstance(h, _WarningLines) for h in log.handlers):
        log.addHandler(_WarningLines(logging.WARNING))
        log.propagate = False
    set_progress_factory(byte_progress)


# The library names what a caller sets by its parameter or recipe key, in backticks (`data_dir`); on the
# command line that is a flag. One table, here, so the library never names a flag.
FLAGS = {name: "--" + name.replace("_", "-") for name in (
    "data_dir", "model", "active", "input", "pair", "pair_column", "allow_single", "head", "task", "adapter",
    "token_file", "max_upload_mb", "writable", "port", "timeout", "version", "author", "catalog", "force", "arch",
    "registry", "resume", "run_dir", "stack_under", "language", "method", "name")}


def as_flags(message: str) -> str:
    """A library message as the command line says it: `data_dir` -> --data-dir."""
    return re.sub(r"`(\w+)`", lambda m: FLAGS.get(m.group(1), m.group(0)), message)


def handle_errors(fn: F) -> F:
    """Turn a domain error into one line on stderr and its exit code (2 bad input, 1 failure)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..errors import AdaptError

        quiet_libraries()
        setup_reporting()
        try:
            return fn(*args, **kwargs)
        except AdaptError as exc:
            if os.environ.get("ADAPT_DEBUG"):
                raise
            print(f"error: {as_flags(str(exc))}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # a full disk anywhere (quota, file-size limit) is one line, exit 1
            from ..errors import disk_full

            full = disk_full(exc, exc.filename or "a file")
            if full is None or os.environ.get("ADAPT_DEBUG"):
                raise
            print(f"error: {full}", file=sys.stderr)
            raise typer.Exit(full.exit_code) from None
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _click_exceptions() -> Any:
    """click's exception classes: typer >= 0.22 vendors click as typer._click, older typer uses click."""
    try:
        from typer._click import exceptions
    except ImportError:  # typer < 0.22
        from click import exceptions
    return exceptions


def run_app(app: typer.Typer, args: Sequence[str] | None = None, prog_name: str = "adapt") -> int:
    """Run the typer ``app`` and return its exit code, with click's own usage errors (unknown option,
    missing argument, bad value) as one ``error: ...`` line on stderr and exit code 2, like ours."""
    exceptions = _click_exceptions()
    no_args = getattr(exceptions, "NoArgsIsHelpError", ())
    command = typer.main.get_command(app)
    try:
        with command.make_context(prog_name, list(sys.argv[1:] if args is None else args)) as ctx:
            command.invoke(ctx)
        return 0
    except typer.Exit as exc:  # --help, or typer.Exit(code) from handle_errors (which printed the error)
        return exc.exit_code
    except no_args as exc:  # `adapt` or `adapt cache` alone: the help on stdout (rich prints it itself)
        if exc.format_message().strip():
            print(exc.format_message())
        return exc.exit_code
    except exceptions.ClickException as exc:
        print(f"error: {click_message(exc)}", file=sys.stderr)
        return exc.exit_code
    except typer.Abort:  # a confirmation prompt answered with Ctrl-C or end of input
        print("error: aborted", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `adapt ... | head`: the reader left; no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def click_message(exc: Any) -> str:
    """One line for a click exception: lower-case, no trailing period, and the help to read for a usage error."""
    exceptions = _click_exceptions()
    if isinstance(exc, exceptions.NoSuchOption):
        close = sorted(exc.possibilities or [])
        message = f"no such option {exc.option_name}" + (f" (did you mean {close[0]}?)" if close else "")
    else:
        message = exc.format_message()
    message = re.sub(r"\.? Did you mean (.+?)\?$", r" (did you mean \1?)", " ".join(message.split())).rstrip(".")
    message = message[:1].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, exceptions.UsageError) and ctx is not None:
        message += f"; see {ctx.command_path} --help"
    return message


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def human_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """A rich table on a terminal, plain aligned text when piped (stable for scripts and tests)."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*(str(c) for c in row))
        Console().print(table)
        return
    cells = [list(map(str, columns))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    if title:
        print(title)
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def info(message: str) -> None:
    if interactive():
        print(message, file=sys.stderr)
