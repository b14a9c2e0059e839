"""The benchmark suite runs end to end at its small CPU shape and writes every ratio (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from adapter_cli.compiled import blocker
from conftest import ROOT


def test_bench_writes_every_arm_and_ratio(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--device", "cpu", "--preset", "small",
                          "--repeat", "1", "--warmup", "0", "--min-call-ms", "0", "--max-others", "inf",
                          "--min-clean", "1", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "results-cpu-small.json").read_text())
    arms = {r["arm"] for r in result["arms"]}
    assert {"full fine-tuning step", "frozen floor", "adapter training step", "inference, one adapter",
            "inference, fuse-8", "inference, fuse-8, reference order", "inference, 8 distinct adapters",
            "mixed batch: one adapter", "mixed batch: 32 distinct adapters", "mixed batch: one stack",
            "mixed batch: 32 distinct stacks", "mixed batch: 32 distinct stacks, one by one",
            "mixed batch: one LoRA adapter", "mixed batch: 32 distinct LoRA adapters",
            "mixed batch: 32 distinct LoRA adapters, one by one"} <= arms
    # every arm is timed round-robin in a group and reports its calls (one clean call each here)
    assert all(r["calls"]["clean"] == 1 and r["calls"]["rejected"] == 0 for r in result["arms"])
    ratios = {r["ratio"]: r["value"] for r in result["ratios"]}
    assert all(v > 0 for v in ratios.values())
    assert {"adapter step / full fine-tuning step", "adapter step / frozen floor",
            "one-adapter inference / backbone inference", "fuse-8 inference / one-adapter inference",
            "fuse-8 step / full fine-tuning step", "one adapter / mixed batch of 8 adapters (throughput)",
            "fast paths / reference order: fuse-8 inference", "fast paths / reference order: fuse-8 step",
            "fast paths / one by one: mixed batch of 8",
            "mixed batch: one adapter / 32 distinct adapters (throughput)",
            "mixed batch: one stack / 32 distinct stacks (throughput)",
            "mixed batch: fast path / one by one, 32 distinct stacks",
            "mixed batch: one LoRA adapter / 32 distinct LoRA adapters (throughput)",
            "mixed batch: fast path / one by one, 32 distinct LoRA adapters",
            "checkpointed adapter step / full fine-tuning step"} <= set(ratios)
    if sys.platform == "linux":  # peak resident memory per training arm, each run alone in a child process
        assert ratios["adapter step / full fine-tuning step: peak memory"] < 1.0
        assert ratios["checkpointed adapter step / full fine-tuning step: peak memory"] < 1.0
    # saved activations are counted, not timed: an adapter step keeps less than full fine-tuning
    assert ratios["adapter step / full fine-tuning step: saved activation bytes"] < 1.0
    assert ratios["checkpointed adapter step / full fine-tuning step: saved activation bytes"] < \
        ratios["adapter step / full fine-tuning step: saved activation bytes"]
    assert (tmp_path / "results-cpu-small.md").read_text().startswith("# adapt benchmark")


def test_bench_compiled_arms(tmp_path):
    """--arms compiled: one adapter eager and under torch.compile, inference and training step."""
    if blocker(torch.device("cpu")) is not None:
        pytest.skip("inductor cannot build on this machine")
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--device", "cpu", "--preset", "small",
                          "--arms", "compiled", "--repeat", "1", "--warmup", "1", "--min-call-ms", "0",
                          "--max-others", "inf", "--min-clean", "1", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "results-cpu-small-compiled.json").read_text())
    assert {r["arm"] for r in result["arms"]} == {
        "inference, one adapter, eager", "inference, one adapter, compiled", "adapter training step, eager",
        "adapter training step, compiled"}
    ratios = {r["ratio"]: r["value"] for r in result["ratios"]}
    assert set(ratios) == {"compiled / eager: one-adapter inference", "compiled / eager: adapter training step"}
    assert all(v > 0 for v in ratios.values())
