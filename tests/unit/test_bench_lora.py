"""The LoRA-family arms of the benchmark run end to end at the small CPU shape and write their ratios (no
timing asserts: only what is counted, not timed)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, load_bench


def test_round_robin_times_every_arm_in_rotated_order():
    import torch

    bench = load_bench()
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    result = bench.timed_round_robin(fns, torch.device("cpu"), warmup=1, repeat=3)
    assert set(result) == {"a", "b", "c"}
    assert all(t.seconds >= 0 and t.peak is None and len(t.clean) == 3 for t in result.values())
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then rotated rounds


def test_bench_lora_arms_write_their_ratios(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--device", "cpu", "--preset", "small",
                          "--arms", "lora", "--clock", "cpu", "--repeat", "1", "--warmup", "0",
                          "--min-call-ms", "0", "--max-others", "inf", "--min-clean", "1",
                          "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "results-cpu-small-lora-cputime.json").read_text())
    context = f"{result['ratios']}\n{result['environment']}\n{run.stderr[-2000:]}"
    assert result["environment"]["clock"] == "CPU time of the one thread" and result["environment"]["threads"] == 1
    arms = {r["arm"] for r in result["arms"]}
    assert {"full fine-tuning step, beside LoRA", "adapter training step, beside LoRA", "LoRA training step",
            "(IA)³ training step", "inference, backbone, beside LoRA", "inference, LoRA unmerged",
            "inference, LoRA merged", "inference, (IA)³ unmerged"} == arms
    ratios = {r["ratio"]: r["value"] for r in result["ratios"]}
    assert all(v > 0 for v in ratios.values()), context
    assert {"LoRA step / full fine-tuning step", "adapter step (pfeiffer) / full fine-tuning step, beside LoRA",
            "(IA)³ step / full fine-tuning step", "LoRA step / adapter step (pfeiffer)",
            "unmerged LoRA inference / backbone inference", "merged LoRA inference / backbone inference",
            "unmerged (IA)³ inference / backbone inference"} <= set(ratios), context
    # the merged arm computes the unmerged LoRA model's outputs, which differ from the backbone's
    diff = result["environment"]["lora_max_abs_diff"]["8"]
    assert diff["merged vs unmerged"] < 1e-4, context
    assert diff["unmerged vs backbone"] > 10 * diff["merged vs unmerged"], context
    # counted, not timed: a LoRA step keeps less for its backward than full fine-tuning
    assert ratios["LoRA step / full fine-tuning step: saved activation bytes"] < 1.0, context
    if sys.platform == "linux":  # peak resident memory per training arm, each run alone in a child process
        assert ratios.get("LoRA step / full fine-tuning step: peak memory", 2.0) < 1.0, context


def test_bench_decoder_arms_write_their_ratios(tmp_path):
    """A Llama-shaped causal LM: a full fine-tuning step against an adapter step under the frozen LM head,
    checkpointed too (counted, not timed)."""
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--device", "cpu", "--preset", "small",
                          "--arms", "decoder", "--clock", "cpu", "--repeat", "1", "--warmup", "0",
                          "--min-call-ms", "0", "--max-others", "inf", "--min-clean", "1",
                          "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "results-cpu-small-decoder-cputime.json").read_text())
    assert {r["arm"] for r in result["arms"]} == {"decoder: full fine-tuning step", "decoder: adapter training step",
                                                 "decoder: adapter training step, checkpointed"}
    ratios = {r["ratio"]: r["value"] for r in result["ratios"]}
    context = f"{ratios}\n{run.stderr[-2000:]}"
    saved = ratios["decoder: adapter step / full fine-tuning step: saved activation bytes"]
    assert saved < 1.0, context
    assert ratios["decoder: checkpointed adapter step / full fine-tuning step: saved activation bytes"] < saved, context
    if sys.platform == "linux":
        assert ratios.get("decoder: adapter step / full fine-tuning step: peak memory", 2.0) < 1.0, context
