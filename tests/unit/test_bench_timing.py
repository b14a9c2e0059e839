"""The benchmark's timer on a shared machine: interference accounting from /proc/stat, rejected calls retried
and counted, ratios refused from arms with too few clean calls, and the mixed batch at 32 adapters (counted,
never timed: fake clocks and a fake /proc/stat, or --repeat 1)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import load_bench

bench = load_bench("adapt_bench_run_timing")
CPU = torch.device("cpu")


class FakeMachine:
    """A /proc/stat file whose busy jiffies grow when an arm says other processes ran during its call, a
    wall clock that moves 1 ms per reading, and this process's CPU time standing still."""

    def __init__(self, path):
        self.path, self.other_jiffies, self.now = path, 0, 0.0
        self.write()

    def write(self):
        # user nice system idle iowait irq softirq steal guest guest_nice: busy = 1000 + 20 + 300 + 0 + 5 + 7
        self.path.write_text(f"cpu  {1000 + self.other_jiffies} 20 300 90000 400 0 5 7 0 0\n"
                             "cpu0 500 10 150 45000 200 0 3 4 0 0\nintr 1 2 3\n")

    def others_run(self, seconds):
        self.other_jiffies += round(seconds * bench.USER_HZ)
        self.write()

    def wall(self):
        self.now += 0.001
        return self.now

    def timer(self, **kw):
        return bench.Timer(clock=self.wall, wall=self.wall, busy=lambda: bench.proc_stat_busy(self.path),
                           own=lambda: 0.0, **kw)


def test_proc_stat_busy_counts_busy_jiffies_only(tmp_path):
    machine = FakeMachine(tmp_path / "stat")
    assert bench.proc_stat_busy(machine.path) == pytest.approx((1000 + 20 + 300 + 5 + 7) / bench.USER_HZ)
    machine.others_run(2.0)
    assert bench.proc_stat_busy(machine.path) == pytest.approx((1332 + 2 * bench.USER_HZ) / bench.USER_HZ)
    (tmp_path / "bad").write_text("intr 1 2\n")
    with pytest.raises(ValueError):
        bench.proc_stat_busy(tmp_path / "bad")


def test_calls_with_interference_are_rejected_and_retried_round_robin(tmp_path):
    machine = FakeMachine(tmp_path / "stat")
    calls, noisy = [], [True, True]  # the first two timed calls of b: other processes busy meanwhile

    def arm(name):
        def run():
            calls.append(name)
            if name == "b" and noisy and len(calls) > 2:  # after the warm-up round
                if noisy.pop(0):
                    machine.others_run(1.0)  # 1 CPU-second of others in a ~2 ms call
        return run

    timer = machine.timer(max_others=0.25)
    result = timer.round_robin({"a": arm("a"), "b": arm("b")}, CPU, warmup=1, repeat=3)
    # warm-up; then rounds in rotated order, each calling only the arms still short of clean calls
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "b"]
    a, b = result["a"], result["b"]
    assert (len(a.clean), len(a.rejected)) == (3, 0)
    assert (len(b.clean), len(b.rejected)) == (3, 2)
    assert all(cores > 100 for cores in b.others_rejected)  # 1 CPU-second over ~2 ms of wall time
    assert b.others_clean == [0.0, 0.0, 0.0]
    assert b.summary()["clean"] == 3 and b.summary()["rejected"] == 2
    assert b.summary()["spread_seconds"]["min"] <= b.summary()["spread_seconds"]["max"]


def test_interference_within_resolution_is_not_rejected(tmp_path):
    machine = FakeMachine(tmp_path / "stat")

    def one_jiffy():  # /proc/stat counts in jiffies: one jiffy of others is within its resolution
        machine.others_run(1 / bench.USER_HZ)

    result = machine.timer().round_robin({"a": one_jiffy}, CPU, warmup=0, repeat=4)["a"]
    assert (len(result.clean), len(result.rejected)) == (4, 0)
    off = machine.timer(max_others=float("inf"))  # --max-others inf: never reject
    assert len(off.round_robin({"a": lambda: machine.others_run(5.0)}, CPU, 0, 4)["a"].rejected) == 0
    assert off.describe("fake", 5)["max_others_cores"] is None  # written as null: JSON has no infinity
    json.dumps(off.describe("fake", 5), allow_nan=False)


def test_retries_stop_at_max_tries_and_the_ratio_is_refused(tmp_path):
    machine = FakeMachine(tmp_path / "stat")
    fns = {"quiet": lambda: None, "busy": lambda: machine.others_run(1.0)}
    result = machine.timer(max_tries=3).round_robin(fns, CPU, warmup=0, repeat=2)
    assert (len(result["busy"].clean), len(result["busy"].rejected)) == (0, 6)  # 3 × repeat calls at most
    assert (len(result["quiet"].clean), len(result["quiet"].rejected)) == (2, 0)

    def rows(timings):
        return [{"batch": 8, "arm": arm, "seconds": 0.01, "peak_bytes": 100, "saved_bytes": None,
                 "calls": timings[arm].summary()} for arm in timings]

    shape = {"fuse": [8], "batches": [8]}
    names = {"quiet": "full fine-tuning step", "busy": "adapter training step"}
    renamed = rows({names[k]: v for k, v in result.items()})
    ratios = {r["ratio"]: r for r in bench.compute_ratios(renamed, shape, min_clean=2)}
    time_ratio = ratios["adapter step / full fine-tuning step"]
    assert time_ratio["value"] is None and time_ratio["note"] == "n/a (too few clean calls: 0)"
    assert ratios["adapter step / full fine-tuning step: peak memory"]["value"] == 1.0  # counted, not timed
    env = {"device": "cpu", "preset": "small", "dtype": "None", "peak_memory": "-",
           "interference": machine.timer().describe("fake /proc/stat", 2) | {"calls": 8, "rejected_calls": 6}}
    markdown = bench.table(env, renamed, list(ratios.values()))
    assert "| 8 | adapter step / full fine-tuning step | n/a (too few clean calls: 0) |" in markdown
    assert "6 of 8 timed calls rejected" in markdown and "| 0 / 6 |" in markdown


def test_without_a_busy_reader_every_call_is_clean_and_the_count_is_calibrated(tmp_path):
    machine = FakeMachine(tmp_path / "stat")
    calls = []
    timer = bench.Timer(clock=machine.wall, wall=machine.wall, min_call=0.0105, max_inner=50)
    result = timer.round_robin({"a": lambda: calls.append("a")}, CPU, warmup=1, repeat=2)["a"]
    # the warm-up call takes 1 ms on the fake clock (one step between two readings): 11 calls per timed call
    assert result.inner == 11 and len(calls) == 1 + 2 * 11
    assert result.clean and not result.rejected and result.others_clean == [None, None]
    assert result.summary()["others_cores"] == {"clean_median": None, "rejected_median": None}


def test_no_proc_stat_is_said_in_the_environment(monkeypatch):
    monkeypatch.setattr(bench, "proc_stat_busy", lambda: (_ for _ in ()).throw(FileNotFoundError("/proc/stat")))
    reader, source = bench.system_busy_reader()
    assert reader is None and source.startswith("not measured") and "every call counts as clean" in source
    info = bench.Timer().describe(source, 5)
    assert "max_others_cores" not in info and info["source"] == source


def test_mixed_batch_at_32_adapters_writes_its_ratios(tmp_path, capsys):
    code = bench.main(["--device", "cpu", "--preset", "small", "--arms", "mixed", "--repeat", "1", "--warmup", "0",
                       "--min-call-ms", "0", "--max-others", "inf", "--min-clean", "1", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "results-cpu-small-mixed.json").read_text())
    assert {r["arm"] for r in result["arms"]} == {
        "mixed batch: one adapter", "mixed batch: 8 distinct adapters", "mixed batch: 32 distinct adapters",
        "mixed batch: 32 distinct adapters, one by one", "mixed batch: one stack", "mixed batch: 32 distinct stacks",
        "mixed batch: 32 distinct stacks, one by one", "mixed batch: one LoRA adapter",
        "mixed batch: 32 distinct LoRA adapters", "mixed batch: 32 distinct LoRA adapters, one by one"}
    assert all(r["batch"] == 32 and r["calls"]["clean"] == 1 for r in result["arms"])
    ratios = {r["ratio"]: r["value"] for r in result["ratios"]}
    assert set(ratios) == {"mixed batch: one adapter / 32 distinct adapters (throughput)",
                           "mixed batch: one adapter / 8 distinct adapters (throughput)",
                           "mixed batch: fast path / one by one, 32 distinct adapters",
                           "mixed batch: one stack / 32 distinct stacks (throughput)",
                           "mixed batch: fast path / one by one, 32 distinct stacks",
                           "mixed batch: one LoRA adapter / 32 distinct LoRA adapters (throughput)",
                           "mixed batch: fast path / one by one, 32 distinct LoRA adapters"}
    assert all(v > 0 for v in ratios.values())
    assert result["environment"]["shape"]["mixed_adapters"] == 32
    if sys.platform == "linux":
        assert result["environment"]["interference"]["source"].startswith("/proc/stat")
    assert "mixed batch: one adapter / 32 distinct adapters (throughput)" in capsys.readouterr().out
