"""Run the adapt command line and SIGKILL this process right after optimizer step N: a real, unclean death
for the resume tests (no cleanup code runs), injected through the trainer's callbacks, so the training loop
itself knows nothing of tests.

    python tests/kill_at_step.py N train --task ... --run-dir ...
"""

from __future__ import annotations

import os
import signal
import sys

from adapter_cli.training import loop


class KillAt(loop.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, trainer: loop.Trainer) -> None:
        if trainer.state.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    step, args = int(sys.argv[1]), sys.argv[2:]
    original = loop.train

    def train(*a, **kw):  # the CLI looks loop.train up when it runs, so it gets this one
        kw["callbacks"] = [*kw.get("callbacks", ()), KillAt(step)]
        return original(*a, **kw)

    loop.train = train
    from adapter_cli.cli import main as adapt

    sys.argv = ["adapt", *args]
    adapt()


if __name__ == "__main__":
    main()
