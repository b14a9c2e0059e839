"""Fault injection for the reliability tests, run as a script in a subprocess: it counts every change to
the file system that adapt makes (mkdir, rename/replace, symlink, unlink, rmdir, fsync, file copies) while
a chosen function runs, and kills itself with SIGKILL just before the N-th one: a real, unclean death at
that exact point, with no cleanup code run. Nothing in adapter_cli knows about it.

    python fault_driver.py cli ARGS...                      the adapt command line
    python fault_driver.py put SOURCE MODEL_ID ENTRY_ID MARK    adapter_cli.cache.put, info {"mark": MARK}
    python fault_driver.py dir TARGET MARK                  fsutil.atomic_directory writing a small artifact

Environment:
    FAULT_SCOPE    module:function whose calls are counted (default adapter_cli.cache:put; "dir" counts its write)
    FAULT_KILL_AT  SIGKILL just before the N-th counted operation (unset or 0: never)
    FAULT_KILL_MATCH  OP:TEXT -- SIGKILL just before the first counted OP whose path contains TEXT
    FAULT_LOG      append a JSON line per counted operation here: {"n", "op", "path", "call"}
    FAULT_START    wait until this file exists before doing anything (start several processes at once)
    FAULT_PAUSE    module:function:before|after:FILE -- at that point, create FILE.reached, then wait for FILE
    FAULT_BARRIER  OP:FILE -- before the first counted OP, create FILE.<pid>, then block on a shared flock of
                   FILE until the test, which holds it exclusively, lets go: all writers resume at once
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

OPS = {os: ("mkdir", "rename", "replace", "symlink", "unlink", "remove", "rmdir", "fsync"), shutil: ("copyfile",)}
state = {"depth": 0, "count": 0, "call": 0}


def _wait_for(path: str) -> None:
    deadline = time.monotonic() + 300
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit("fault_driver: gave up waiting for " + path)
        time.sleep(0.02)


def _counted(module: object, name: str) -> None:
    real = getattr(module, name)
    kill_at = int(os.environ.get("FAULT_KILL_AT") or 0)
    match_op, _, match_text = (os.environ.get("FAULT_KILL_MATCH") or "").partition(":")
    log = os.environ.get("FAULT_LOG")
    barrier_op, _, barrier = (os.environ.get("FAULT_BARRIER") or "").partition(":")

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        if state["depth"] > 0 and name == barrier_op and not state.get("barrier_passed"):
            state["barrier_passed"] = True
            import fcntl

            Path(f"{barrier}.{os.getpid()}").touch()
            with open(barrier) as held:
                fcntl.flock(held, fcntl.LOCK_SH)
        if state["depth"] > 0:
            state["count"] += 1
            if log:
                with open(log, "a") as f:
                    f.write(json.dumps({"n": state["count"], "op": name, "path": str(args[0]) if args else "",
                                        "call": state["call"]}) + "\n")
            if state["count"] == kill_at or (name == match_op and match_text in (str(args[0]) if args else "")):
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(module, name, wrapper)


def _replace_function(spec: str, make) -> None:
    module_name, function = spec.split(":")
    module = importlib.import_module(module_name)
    setattr(module, function, make(getattr(module, function)))


def _scoped(real):
    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        state["depth"] += 1
        state["call"] += 1
        try:
            return real(*args, **kwargs)
        finally:
            state["depth"] -= 1
    return wrapper


def _pausing(when: str, flag: str):
    def make(real):
        @functools.wraps(real)
        def wrapper(*args, **kwargs):
            if when == "before":
                Path(flag + ".reached").touch()
                _wait_for(flag)
            result = real(*args, **kwargs)
            if when == "after":
                Path(flag + ".reached").touch()
                _wait_for(flag)
            return result
        return wrapper
    return make


def _run(mode: str, args: list[str]) -> int:
    if mode == "cli":
        from adapter_cli.cli import main

        sys.argv = ["adapt", *args]
        try:
            main()
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        return 0
    from adapter_cli.errors import AdaptError

    try:
        if mode == "put":
            from adapter_cli import cache

            source, model_id, entry_id, mark = args
            cache.put(Path(source), model_id=model_id, entry_id=entry_id, info={"mark": mark})
        else:
            from adapter_cli.fsutil import atomic_directory

            target, mark = args
            state["depth"] += 1
            with atomic_directory(target) as tmp:
                (tmp / "adapter_config.json").write_text(json.dumps({"mark": mark}))
                (tmp / "weights.bin").write_bytes(mark.encode() * 4096)
    except AdaptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def main() -> int:
    if os.environ.get("FAULT_START"):
        _wait_for(os.environ["FAULT_START"])
    mode, args = sys.argv[1], sys.argv[2:]
    import adapter_cli.cache  # noqa: F401 -- import first: the patches below must not count imports
    import adapter_cli.cli  # noqa: F401

    for module, names in OPS.items():
        for name in names:
            _counted(module, name)
    if mode != "dir":
        _replace_function(os.environ.get("FAULT_SCOPE") or "adapter_cli.cache:put", _scoped)
    if os.environ.get("FAULT_PAUSE"):
        module_name, function, when, flag = os.environ["FAULT_PAUSE"].split(":", 3)
        _replace_function(f"{module_name}:{function}", _pausing(when, flag))
    return _run(mode, args)


if __name__ == "__main__":
    sys.exit(main())
