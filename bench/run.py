"""Speed and memory benchmark of adapt: every ratio comes from arms measured in the same run (the same
process, except CPU peak memory, which takes one child process per training arm).

    python bench/run.py --device cpu --preset small        # a quick CPU shape (make bench)
    python bench/run.py --device cuda --preset bert-base   # BERT-base shape, seq 128, batch 32 and 128, bf16
    python bench/run.py --preset bert-base --batch 8 --memory-only   # CPU peak memory of the training arms
    python bench/run.py --device cpu --preset small --arms lora     # only the LoRA-family arms and their baselines
    python bench/run.py --device cpu --preset small --arms decoder  # a Llama-shaped decoder: adapter vs full causal-LM step
    python bench/run.py --device cpu --preset small --arms mixed    # only the mixed batch at scale (32 adapters,
                                                                    # 32 stacks, 32 LoRA adapters)
    python bench/run.py --device cpu --clock cpu    # one thread, timed by its CPU time (a busy shared machine)

Arms, in groups: training steps (full fine-tuning of the plain transformers model, fused AdamW on CUDA; the
frozen floor, all weights frozen but layer 0's output LayerNorm, so the backward still crosses every layer above
it; the adapter step with and without gradient checkpointing; fusion steps for N = 2, 4, 8, 16, and the biggest
with the fast paths off); inference (no adapter, one adapter, fuse-N, and a batch where every example uses
another adapter, with and without the fast paths); the mixed batch at scale (a batch of 32 rows routed to 1, 8
and 32 distinct adapters, to 1 and 32 distinct 2-level stacks and to 1 and 32 distinct LoRA adapters, each
mixed arm also one by one); the LoRA set (LoRA and (IA)³ training steps beside a full fine-tuning step and a
bottleneck adapter step, and inference with the backbone alone, LoRA unmerged, LoRA merged into the weights and
(IA)³ unmerged).

How it times, so that a busy shared machine shows as rejected calls rather than as wrong ratios:

* every group is timed round-robin: each round calls every arm of the group once, in an order rotated by one
  each round, so that a slower or faster spell of the machine reaches every arm alike (on CUDA the training
  arms of each model run by themselves, so that each allocator peak holds one model);
* a timed call runs its arm enough times to last --min-call-ms (the count is set in the warm-up);
* on Linux each call also measures the CPU time that other processes used meanwhile: the machine's busy
  jiffies in /proc/stat minus this process's own CPU time (getrusage, itself and its children) over the call.
  A call in which others used more than --max-others cores (beyond the 10 ms resolution of /proc/stat) is
  rejected and tried again in a later round, up to --max-tries × --repeat calls per arm;
* per arm: the median of the clean calls, their spread, the clean and rejected counts and the others' CPU;
  a time ratio of an arm with fewer than --min-clean clean calls is not printed ("n/a (too few clean calls: k)").

Wall time is CUDA-synchronised. Peak memory: on CUDA the allocator's peak per arm; on CPU the peak resident
memory of each training arm run alone in a child process, above what the process held before building the
model. Every training arm also records the bytes autograd keeps for its backward. Output: JSON and a markdown
table (bench/results-<device>-<preset>.*).

The adapter-model arms run as `adapt train` / `adapt infer` run them: under bf16 autocast (CUDA) the frozen
linear layers are stored in bf16. The frozen floor and the backbone-only arm get the same storage, so the
ratios against them measure the adapters, not the storage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

try:
    import resource
except ImportError:  # not on Windows: no interference accounting there
    resource = None  # type: ignore[assignment]

PRESETS = {
    "small": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512,
              "seq": 64, "batches": [8], "fuse": [2, 4, 8]},
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072, "seq": 128, "batches": [32, 128], "fuse": [2, 4, 8, 16]},
}
# Training arms whose peak resident memory is measured in a child process on CPU.
MEMORY_ARMS = ("full fine-tuning step", "frozen floor", "adapter training step",
               "adapter training step, checkpointed", "LoRA training step")
# A Llama-shaped decoder of the preset's size (grouped-query attention, untied LM head) trained on causal
# language modelling: every weight, or a Pfeiffer adapter under the frozen LM head (as `adapt train --task lm`
# trains it), with and without gradient checkpointing.
DECODER_ARMS = ("decoder: full fine-tuning step", "decoder: adapter training step",
                "decoder: adapter training step, checkpointed")
# LoRA-family training arms: arm -> (adapter preset, adapter name).
LORA_ARMS = {"LoRA training step": ("lora", "l0"), "(IA)³ training step": ("ia3", "i0")}
# The training arms of the LoRA set (the first two are measured again beside LoRA, as "<arm>, beside LoRA").
LORA_TRAINING = ("full fine-tuning step", "adapter training step", *LORA_ARMS)
# The inference arms timed round-robin; the first is the baseline of the others.
LORA_INFERENCE = ("inference, backbone, beside LoRA", "inference, LoRA unmerged", "inference, LoRA merged",
                  "inference, (IA)³ unmerged")
# The mixed batch at scale: a batch of this many rows, one adapter per row (--mixed-adapters).
MIXED_ADAPTERS = 32
MIXED = "mixed batch: "  # the prefix of its arms

USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # the unit of /proc/stat


# ---------------------------------------------------------------------------------------------------------
# Timing: round-robin calls, each checked for other processes' CPU use.

def proc_stat_busy(path: str | Path = "/proc/stat") -> float:
    """CPU-seconds that the whole machine has been busy since boot, from the first line of /proc/stat: user,
    nice, system, irq, softirq and steal jiffies (guest time is counted in user already; idle and iowait are
    not busy)."""
    with open(path) as f:
        fields = f.readline().split()
    if not fields or fields[0] != "cpu":
        raise ValueError(f"{path}: no aggregate cpu line")
    user, nice, system, _idle, _iowait, irq, softirq, steal = ([int(v) for v in fields[1:9]] + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / USER_HZ


def own_cpu_seconds() -> float:
    """CPU-seconds used by this process (all its threads) and by its children that have been waited for."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def system_busy_reader() -> tuple[Callable[[], float] | None, str]:
    """The machine's busy-CPU reader, or None with the reason it is not available."""
    if resource is None:
        return None, f"not measured: no getrusage on {sys.platform}; every call counts as clean"
    try:
        proc_stat_busy()
    except (OSError, ValueError) as error:
        return None, f"not measured: no /proc/stat on {sys.platform} ({error}); every call counts as clean"
    return proc_stat_busy, "/proc/stat busy jiffies minus this process's getrusage (self and children)"


@dataclass
class ArmTiming:
    """The timed calls of one arm. Seconds are per arm call (a timed call runs the arm ``inner`` times);
    ``others`` is the CPU that other processes used during each call, in cores (None: not measured)."""

    inner: int = 1
    clean: list[float] = field(default_factory=list)
    rejected: list[float] = field(default_factory=list)
    others_clean: list[float | None] = field(default_factory=list)
    others_rejected: list[float | None] = field(default_factory=list)
    peak: int | None = None

    @property
    def seconds(self) -> float:
        """The median of the clean calls (of the rejected ones when none is clean)."""
        samples = self.clean or self.rejected
        return statistics.median(samples) if samples else math.nan

    def spread(self) -> dict[str, float]:
        samples = sorted(self.clean or self.rejected)
        if not samples:
            return {}
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else samples * 3
        return {"min": samples[0], "q1": q1, "median": statistics.median(samples), "q3": q3, "max": samples[-1]}

    def summary(self) -> dict[str, Any]:
        def median(values: list[float | None]) -> float | None:
            measured = [v for v in values if v is not None]
            return round(statistics.median(measured), 3) if measured else None

        return {"clean": len(self.clean), "rejected": len(self.rejected), "arm_calls_per_call": self.inner,
                "spread_seconds": self.spread(),
                "others_cores": {"clean_median": median(self.others_clean),
                                 "rejected_median": median(self.others_rejected)}}


@dataclass
class Timer:
    """Times groups of arms round-robin. ``busy`` reads the machine's busy CPU-seconds (None: interference
    is not measured and every call is clean); ``own`` this process's CPU-seconds. A call is rejected when
    other processes used more than ``max_others`` cores during it, beyond ``resolution`` CPU-seconds (the
    granularity of the busy reader); rejected calls are tried again in later rounds, up to ``max_tries`` ×
    repeat calls per arm. A timed call runs its arm enough times to last ``min_call`` seconds."""

    clock: Callable[[], float] = time.perf_counter
    wall: Callable[[], float] = time.perf_counter
    busy: Callable[[], float] | None = None
    own: Callable[[], float] = own_cpu_seconds
    max_others: float = 0.25
    resolution: float = 1 / USER_HZ
    min_call: float = 0.0
    max_tries: int = 3
    max_inner: int = 1000

    def round_robin(self, fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int,
                    repeat: int) -> dict[str, ArmTiming]:
        """Each round calls every arm that still lacks clean calls once, in an order rotated by one each round.
        On CUDA the peak of an arm is the allocator's peak during its calls (the other arms' models are
        resident too)."""
        cuda = device.type == "cuda"

        def call(fn: Callable[[], Any], times: int) -> float:
            start = self.wall()
            for _ in range(times):
                fn()
            if cuda:
                torch.cuda.synchronize()
            return self.wall() - start

        names = list(fns)
        wall = dict.fromkeys(names, 0.0)
        for _ in range(warmup):
            for name in names:
                wall[name] = call(fns[name], 1)
        timings = {name: ArmTiming() for name in names}
        if self.min_call > 0:
            for name in names:
                took = wall[name] or call(fns[name], 1)  # no warm-up: one untimed call sets the count
                timings[name].inner = max(1, min(self.max_inner, math.ceil(self.min_call / max(took, 1e-9))))
        tries = dict.fromkeys(names, 0)
        most = max(1, self.max_tries) * repeat
        for i in range(most):
            order = names[i % len(names):] + names[:i % len(names)]
            todo = [n for n in order if len(timings[n].clean) < repeat and tries[n] < most]
            if not todo:
                break
            for name in todo:
                tries[name] += 1
                timing = timings[name]
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                busy0 = self.busy() if self.busy else 0.0
                own0 = self.own() if self.busy else 0.0
                wall0, clock0 = self.wall(), self.clock()
                for _ in range(timing.inner):
                    fns[name]()
                if cuda:
                    torch.cuda.synchronize()
                    timing.peak = max(timing.peak or 0, torch.cuda.max_memory_allocated())
                clock1, wall1 = self.clock(), self.wall()
                seconds = (clock1 - clock0) / timing.inner
                if self.busy is None:
                    timing.clean.append(seconds)
                    timing.others_clean.append(None)
                    continue
                own1 = self.own()
                others = (self.busy() - busy0) - (own1 - own0)  # CPU-seconds of everything else
                cores = round(max(others, 0.0) / max(wall1 - wall0, 1e-9), 3)
                if others > self.max_others * (wall1 - wall0) + self.resolution:
                    timing.rejected.append(seconds)
                    timing.others_rejected.append(cores)
                else:
                    timing.clean.append(seconds)
                    timing.others_clean.append(cores)
        return timings

    def describe(self, source: str, min_clean: int) -> dict[str, Any]:
        info: dict[str, Any] = {"source": source, "min_call_s": self.min_call, "min_clean_calls": min_clean}
        if self.busy is not None:  # (JSON has no infinity: --max-others inf is written as null)
            info |= {"max_others_cores": None if math.isinf(self.max_others) else self.max_others,
                     "resolution_cpu_s": self.resolution, "max_tries_per_repeat": self.max_tries}
        return info


def timed_round_robin(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, repeat: int,
                      timer: Timer | None = None) -> dict[str, ArmTiming]:
    return (timer or Timer()).round_robin(fns, device, warmup, repeat)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeat: int,
          timer: Timer | None = None) -> ArmTiming:
    return timed_round_robin({"arm": fn}, device, warmup, repeat, timer)["arm"]
def parameter_storages(model: torch.nn.Module) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in model.parameters()}


def saved_activation_bytes(fn: Callable[[], Any], params: set[int]) -> int:
    """Bytes of the tensors autograd keeps for the backward of one call (weights excluded): the activation
    memory of a training step, measurable on any device."""
    seen: dict[tuple[int, int, Any], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            seen[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


class Bench:
    """The model shapes, inputs and precision of one batch size; builds each arm's step function."""

    def __init__(self, preset: str, device: torch.device, batch: int) -> None:
        from transformers import AutoConfig

        self.shape = PRESETS[preset]
        self.device = device
        self.dtype = torch.bfloat16 if device.type == "cuda" else None
        self.config = AutoConfig.for_model(
            "bert", vocab_size=30522, hidden_size=self.shape["hidden_size"],
            num_hidden_layers=self.shape["num_hidden_layers"], num_attention_heads=self.shape["num_attention_heads"],
            intermediate_size=self.shape["intermediate_size"])
        torch.manual_seed(0)
        self.ids = torch.randint(1000, 20000, (batch, self.shape["seq"]), device=device)
        self.mask = torch.ones_like(self.ids)
        self.labels = torch.randint(0, 2, (batch,), device=device)

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def store_frozen(self, module: torch.nn.Module) -> None:
        """What adapt train / adapt infer do under autocast: frozen linear layers stored in its dtype."""
        from adapter_cli.devices import cast_frozen_linears

        if self.dtype is not None:
            cast_frozen_linears(module, self.dtype)

    def train_step(self, model: Any, **kw: Any) -> Callable[[], None]:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, fused=self.device.type == "cuda") if params else None

        def step() -> None:
            with self.autocast():
                out = model(input_ids=self.ids, attention_mask=self.mask, **kw)
                loss = out.loss if getattr(out, "loss", None) is not None \
                    else out.last_hidden_state[:, 0].float().pow(2).mean()
            loss.backward()
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
        return step

    def infer(self, model: Any, **kw: Any) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode(), self.autocast():
                return model(input_ids=self.ids, attention_mask=self.mask, **kw)
        return run

    def plain(self, trainable: bool) -> Any:
        from transformers import AutoModel

        torch.manual_seed(0)
        model = AutoModel.from_config(self.config).to(self.device).train()
        if not trainable:
            # The floor: only layer 0's output LayerNorm trains, where the lowest adapter sits, so the
            # backward crosses every layer above it with nothing but activation gradients: what any adapter
            # placed in every layer must pay at least.
            model.requires_grad_(False)
            model.encoder.layer[0].output.LayerNorm.requires_grad_(True)
            self.store_frozen(model)
        return model

    def adapter_model(self, preset: str = "pfeiffer", name: str = "a0") -> Any:
        from adapter_cli import AdapterModel

        torch.manual_seed(0)
        model = AdapterModel.from_config(self.config).to(self.device)
        model.add_adapter(name, preset)
        model.add_head("h", num_labels=2)
        model.train_adapters([name], heads=["h"])
        self.store_frozen(model.base)
        return model.train()

    def decoder_config(self) -> Any:
        """A Llama of this bench's size: half as many key/value heads as query heads, LM head untied."""
        from transformers import AutoConfig

        c = self.config
        return AutoConfig.for_model("llama", vocab_size=32000, hidden_size=c.hidden_size,
                                    num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                                    num_key_value_heads=max(1, c.num_attention_heads // 2),
                                    intermediate_size=c.intermediate_size, max_position_embeddings=512,
                                    tie_word_embeddings=False)

    def decoder_arm(self, arm: str) -> tuple[Callable[[], None], Any]:
        """A causal-LM training step on the batch's own tokens: the whole model, or an adapter under the
        model's frozen LM head (a one-layer causal_lm head, untied, as lm_head.py attaches it)."""
        config = self.decoder_config()
        torch.manual_seed(0)
        if arm == "decoder: full fine-tuning step":
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_config(config).to(self.device).train()
            return self.train_step(model, labels=self.ids), model
        from adapter_cli import AdapterModel

        model = AdapterModel.from_config(config).to(self.device)
        model.add_adapter("a0", "pfeiffer")
        model.add_head("lm", "causal_lm", vocab_size=config.vocab_size, layers=1, activation_function=None)
        model.train_adapters(["a0"], heads=[])  # the LM head stays frozen
        self.store_frozen(model.base)
        if arm.endswith("checkpointed"):
            model.gradient_checkpointing_enable()
        return self.train_step(model.train(), active="a0", head="lm", labels=self.ids), model

    def training_arm(self, arm: str) -> tuple[Callable[[], None], Any]:
        """The step function and model of one training arm that needs nothing else built first."""
        if arm in DECODER_ARMS:
            return self.decoder_arm(arm)
        if arm in ("full fine-tuning step", "frozen floor"):
            model = self.plain(trainable=arm == "full fine-tuning step")
            return self.train_step(model), model
        if arm in LORA_ARMS:
            preset, name = LORA_ARMS[arm]
            model = self.adapter_model(preset, name)
            return self.train_step(model, active=name, labels=self.labels), model
        model = self.adapter_model()
        if arm == "adapter training step, checkpointed":
            model.gradient_checkpointing_enable()  # the recipe's gradient_checkpointing=true
        return self.train_step(model, active="a0", labels=self.labels), model


def peak_rss_child(preset: str, batch: int, arm: str, steps: int) -> int:
    """Run one training arm alone in this process; bytes of resident memory at its peak, above what the
    process held before the model was built (Linux: the high-water mark is reset through clear_refs)."""
    def status(key: str) -> int:
        return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    import gc

    # Touch every kernel first on a throwaway tiny model: the library code paged in on first use is
    # resident memory too, and it belongs to the process, not to the arm.
    warm = Bench(preset, torch.device("cpu"), 2)
    warm.config = type(warm.config)(**{**warm.config.to_dict(), "hidden_size": 32, "num_attention_heads": 2,
                                       "intermediate_size": 64, "num_hidden_layers": 2})
    warm.training_arm(arm)[0]()
    del warm
    gc.collect()
    bench = Bench(preset, torch.device("cpu"), batch)
    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")
    step, _ = bench.training_arm(arm)
    for _ in range(steps):
        step()
    return status("VmHWM") - before


def peak_rss(preset: str, batch: int, arm: str, steps: int = 3) -> int | None:
    if not Path("/proc/self/clear_refs").exists():
        return None
    # With every allocation of 64 KiB or more mapped on its own, a freed tensor leaves resident memory at
    # once; otherwise glibc keeps freed heap memory, and the peak would tell the allocator's history.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, __file__, "--preset", preset, "--peak-rss-arm", arm, "--batch", str(batch),
                           "--repeat", str(steps)], capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:  # e.g. a container where clear_refs cannot be written: no CPU peak, not no bench
        print(f"no peak memory for {arm}: {(done.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
        return None
    return int(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5, help="clean timed calls wanted per arm")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--batch", type=int, help="one batch size instead of the preset's")
    parser.add_argument("--arms", choices=("all", "lora", "mixed", "compiled", "decoder"), default="all",
                        help="lora: only the LoRA set (LoRA and (IA)³ arms with the baselines measured beside "
                             "them: a full fine-tuning step, a bottleneck adapter step, the backbone alone); "
                             "mixed: only the mixed batch at scale; compiled: only one adapter eager against "
                             "compiled (torch.compile), inference and training step; decoder: a Llama-shaped "
                             "causal LM, a full fine-tuning step against an adapter step (checkpointed too)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu (CPU only): run torch on one thread and time each arm by that thread's CPU "
                             "time, which other processes on a shared machine hardly change")
    parser.add_argument("--max-others", type=float, default=0.25, metavar="CORES",
                        help="reject a timed call during which other processes used more than this many cores "
                             "(Linux, from /proc/stat; inf: never reject)")
    parser.add_argument("--min-clean", type=int, default=5, metavar="K",
                        help="print no time ratio from an arm with fewer clean calls than this")
    parser.add_argument("--max-tries", type=int, default=3, metavar="F",
                        help="at most F × --repeat timed calls per arm, rejected ones included")
    parser.add_argument("--min-call-ms", type=float, default=100.0,
                        help="a timed call runs its arm enough times to last this long (0: once), so that "
                             "the 10 ms jiffies of /proc/stat resolve the interference")
    parser.add_argument("--mixed-adapters", type=int, default=MIXED_ADAPTERS, metavar="K",
                        help="the mixed batch at scale: K rows routed to K distinct adapters (beside K/4 and "
                             "one adapter), to K distinct 2-level stacks and to K distinct LoRA adapters (each "
                             "beside one) (0: skip it)")
    parser.add_argument("--memory-only", action="store_true",
                        help="CPU: only the peak resident memory of the training arms (quick at BERT-base shape)")
    parser.add_argument("--peak-rss-arm", choices=MEMORY_ARMS + DECODER_ARMS, help=argparse.SUPPRESS)  # peak_rss's child
    args = parser.parse_args(argv)
    if args.peak_rss_arm:
        print(peak_rss_child(args.preset, args.batch, args.peak_rss_arm, args.repeat))
        return 0
    batches = [args.batch] if args.batch else PRESETS[args.preset]["batches"]
    if args.memory_only:
        peaks = {arm: peak_rss(args.preset, batches[0], arm) for arm in MEMORY_ARMS}
        if None in peaks.values():
            print("peak resident memory needs Linux (/proc/self/clear_refs)", file=sys.stderr)
            return 1
        full = peaks["full fine-tuning step"]
        print(f"| arm (preset {args.preset}, batch {batches[0]}, CPU fp32) | peak MiB | / full fine-tuning |")
        print("|---|---|---|")
        for arm, peak in peaks.items():
            print(f"| {arm} | {peak / 2**20:.0f} | {peak / full:.2f} |")
        return 0

    from adapter_cli import fastpaths
    from adapter_cli.fusion import FusionLayer

    device = torch.device(args.device)
    clock = time.perf_counter
    if args.clock == "cpu":
        if device.type != "cpu":
            parser.error("--clock cpu times CPU work only; use it with --device cpu")
        torch.set_num_threads(1)  # every kernel, forward and backward, then runs on the calling thread
        clock = time.thread_time
    busy, source = system_busy_reader()
    timer = Timer(clock=clock, busy=busy, max_others=args.max_others, min_call=args.min_call_ms / 1000,
                  max_tries=args.max_tries)
    shape = {**PRESETS[args.preset], "batches": batches,
             "mixed_adapters": args.mixed_adapters if args.arms in ("all", "mixed") else 0}
    biggest = max(shape["fuse"])
    rows: list[dict[str, Any]] = []
    merge_check: dict[int, dict[str, float]] = {}  # batch -> max abs differences of the last hidden states
    cpu_peaks: dict[tuple[int, str], int | None] = {}  # (batch, memory arm) -> peak resident bytes

    def reference(fn: Callable[[], Any]) -> Callable[[], Any]:
        """The product with its fast paths off (ADAPT_REFERENCE_ORDER=1): the baseline they are measured
        against."""
        def run() -> Any:
            saved = fastpaths.ENABLED, FusionLayer.restructured
            fastpaths.ENABLED = FusionLayer.restructured = False
            try:
                return fn()
            finally:
                fastpaths.ENABLED, FusionLayer.restructured = saved
        return run

    def add_row(batch: int, arm: str, timing: ArmTiming, peak: int | None, saved: int | None) -> None:
        rows.append({"batch": batch, "arm": arm, "seconds": timing.seconds, "peak_bytes": peak,
                     "saved_bytes": saved, "calls": timing.summary()})
        others = timing.summary()["others_cores"]["clean_median"]
        print(f"batch {batch:>4} {arm:<44} {timing.seconds * 1000:9.2f} ms  clean {len(timing.clean):>2} "
              f"rejected {len(timing.rejected):>2}" + (f"  others {others:.2f} cores" if others is not None else "")
              + (f"  peak {peak / 2**20:.0f} MiB" if peak else ""), file=sys.stderr)

    def measure(fns: dict[str, Callable[[], Any]]) -> dict[str, ArmTiming]:
        return timer.round_robin(fns, device, args.warmup, args.repeat)

    def cpu_peak(batch: int, arm: str) -> int | None:
        if (batch, arm) not in cpu_peaks:
            cpu_peaks[batch, arm] = peak_rss(args.preset, batch, arm)
        return cpu_peaks[batch, arm]

    Builder = Callable[[], tuple[dict[str, Callable[[], None]], Any]]

    def training_group(batch: int, builders: list[Builder], memory: dict[str, str] | None = None,
                       keep: tuple[str, ...] = ()) -> dict[str, Any]:
        """Training arms: each builder makes one model and the arms (label -> step) that train it. On CPU
        all are built and timed round-robin together, and the arms named in ``memory`` (label -> memory arm)
        get their peak from a child process; on CUDA each builder's arms are timed with only its model
        resident, so that the allocator's peak is that model's. Returns the models of the arms in ``keep``."""
        memory = memory or {}
        kept: dict[str, Any] = {}

        def finish(arms: dict[str, Callable[[], None]], model: Any, times: dict[str, ArmTiming]) -> None:
            for label, step in arms.items():
                peak = cpu_peak(batch, memory[label]) if device.type == "cpu" and label in memory \
                    else times[label].peak
                saved = None if label.endswith("reference order") \
                    else saved_activation_bytes(step, parameter_storages(model))
                add_row(batch, label, times[label], peak, saved)
                if label in keep:
                    kept[label] = model

        if device.type == "cuda":
            for build in builders:
                arms, model = build()
                finish(arms, model, measure(arms))
                for label in kept:  # off the GPU until the others are measured
                    kept[label] = kept[label].cpu()
                del arms, model
            return {label: model.to(device) for label, model in kept.items()}
        built = [build() for build in builders]
        times = measure({label: step for arms, _ in built for label, step in arms.items()})
        for arms, model in built:
            finish(arms, model, times)
        return kept

    def inference_group(batch: int, fns: dict[str, Callable[[], Any]]) -> None:
        for arm, timing in measure(fns).items():
            add_row(batch, arm, timing, timing.peak, None)

    def training_builder(bench: Bench, arm: str, label: str | None = None) -> Builder:
        def build() -> tuple[dict[str, Callable[[], None]], Any]:
            step, model = bench.training_arm(arm)
            return {label or arm: step}, model
        return build

    def fusion_model(bench: Bench, sizes: list[int]) -> tuple[Any, dict[int, str], list[str]]:
        """An adapter model with adapters a0..a(N-1) and a fusion fN over the first N of them for each N."""
        model = bench.adapter_model()
        for i in range(1, max(sizes)):
            model.add_adapter(f"a{i}")
        actives, fusions = {}, []
        for n in sizes:
            members = [f"a{i}" for i in range(n)]
            fusions.append(model.add_fusion(members, name=f"f{n}"))
            actives[n] = f"fuse({','.join(members)},name=f{n})"
        return model, actives, fusions

    def fusion_builder(bench: Bench, n: int) -> Builder:
        def build() -> tuple[dict[str, Callable[[], None]], Any]:
            model, actives, fusions = fusion_model(bench, [n])
            model.train_adapters([], fusions=fusions, heads=["h"])
            model.train()
            arms = {f"fuse-{n} training step": bench.train_step(model, active=actives[n], labels=bench.labels)}
            if n == biggest:
                arms[f"fuse-{n} training step, reference order"] = reference(
                    bench.train_step(model, active=actives[n], labels=bench.labels))
            return arms, model
        return build

    def routed(names: list[str], rows_each: int) -> str:
        return f"batch_split({','.join(names)},sizes=[{','.join([str(rows_each)] * len(names))}])"

    def main_arms(bench: Bench, batch: int) -> None:
        """Training group, then inference group, at one batch size."""
        training_group(batch, [training_builder(bench, arm) for arm in MEMORY_ARMS[:4]]
                       + [fusion_builder(bench, n) for n in shape["fuse"]],
                       memory={arm: arm for arm in MEMORY_ARMS[:4]})
        floor = bench.plain(trainable=False).eval()
        one = bench.adapter_model().eval()
        model, actives, _ = fusion_model(bench, shape["fuse"])
        for i in range(batch):
            model.add_adapter(f"m{i}")
        model.eval()
        fns = {"inference, no adapter": bench.infer(floor), "inference, one adapter": bench.infer(one, active="a0")}
        for n in shape["fuse"]:
            fns[f"inference, fuse-{n}"] = bench.infer(model, active=actives[n])
            if n == biggest:
                fns[f"inference, fuse-{n}, reference order"] = reference(bench.infer(model, active=actives[n]))
        mixed = routed([f"m{i}" for i in range(batch)], 1)
        fns[f"inference, {batch} distinct adapters"] = bench.infer(model, active=mixed)
        fns[f"inference, {batch} distinct adapters, one by one"] = reference(bench.infer(model, active=mixed))
        inference_group(batch, fns)

    def mixed_at_scale(k: int) -> None:
        """A batch of k rows through one adapter, through k/4 adapters (4 rows each) and through k distinct
        adapters (with the routing fast path, and one by one), all on one model holding the k adapters; the
        same for k distinct 2-level stacks stack(s_(i mod k/4), m_i) (k/4 language-like adapters under the k
        task adapters) beside one stack, and, on a second model, for k distinct LoRA adapters beside one."""
        bench = Bench(args.preset, device, k)
        model = bench.adapter_model("pfeiffer", "m0")
        for i in range(1, k):
            model.add_adapter(f"m{i}")
        lower = max(1, k // 4)
        for i in range(lower):
            model.add_adapter(f"s{i}")
        model.eval()
        names = [f"m{i}" for i in range(k)]
        stacks = [f"stack(s{i % lower},m{i})" for i in range(k)]
        fns = {f"{MIXED}one adapter": bench.infer(model, active="m0")}
        if k >= 8 and k % 4 == 0:
            fns[f"{MIXED}{k // 4} distinct adapters"] = bench.infer(model, active=routed(names[:k // 4], 4))
        fns[f"{MIXED}{k} distinct adapters"] = bench.infer(model, active=routed(names, 1))
        fns[f"{MIXED}{k} distinct adapters, one by one"] = reference(bench.infer(model, active=routed(names, 1)))
        fns[f"{MIXED}one stack"] = bench.infer(model, active=stacks[0])
        fns[f"{MIXED}{k} distinct stacks"] = bench.infer(model, active=routed(stacks, 1))
        fns[f"{MIXED}{k} distinct stacks, one by one"] = reference(bench.infer(model, active=routed(stacks, 1)))
        lora = bench.adapter_model("lora", "l0")
        for i in range(1, k):
            lora.add_adapter(f"l{i}", "lora")
        lora.eval()
        loras = routed([f"l{i}" for i in range(k)], 1)
        fns[f"{MIXED}one LoRA adapter"] = bench.infer(lora, active="l0")
        fns[f"{MIXED}{k} distinct LoRA adapters"] = bench.infer(lora, active=loras)
        fns[f"{MIXED}{k} distinct LoRA adapters, one by one"] = reference(bench.infer(lora, active=loras))
        inference_group(k, fns)

    def lora_arms(bench: Bench, batch: int) -> None:
        """The LoRA family beside its baselines. Training: full fine-tuning, the bottleneck adapter
        (pfeiffer), LoRA and (IA)³ steps (CPU peaks from child processes, shared with the main arms).
        Inference, hidden states only: the backbone alone (the same base weights, stored as the others),
        LoRA unmerged, the same LoRA merged into the weights, (IA)³ unmerged."""
        training = {arm: arm if arm in LORA_ARMS else f"{arm}, beside LoRA" for arm in LORA_TRAINING}
        # the trained adapters serve the inference arms (B no longer zero)
        models = training_group(batch, [training_builder(bench, arm, label) for arm, label in training.items()],
                                memory={label: arm for arm, label in training.items() if arm in MEMORY_ARMS},
                                keep=tuple(LORA_ARMS))
        lora, ia3 = (models[arm].eval() for arm in LORA_ARMS)
        merged = bench.adapter_model("lora", "l0")
        merged.load_state_dict(lora.state_dict())
        merged.eval().merge_adapter("l0")
        backbone = bench.plain(trainable=False).eval()  # the same base weights (seed 0) as the LoRA models
        # The merged arm computes what the unmerged one does, and that is not the backbone's output.
        hidden = [fn().last_hidden_state.float() for fn in (bench.infer(backbone), bench.infer(lora, active="l0"),
                                                            bench.infer(merged, active="l0"))]
        merge_check[batch] = {"merged vs unmerged": (hidden[2] - hidden[1]).abs().max().item(),
                              "unmerged vs backbone": (hidden[1] - hidden[0]).abs().max().item()}
        # Hidden states only (head=None), as the backbone gives: the arms differ by the adapter alone.
        inference_group(batch, dict(zip(LORA_INFERENCE, (
            bench.infer(backbone), bench.infer(lora, active="l0", head=None),
            bench.infer(merged, active="l0", head=None), bench.infer(ia3, active="i0", head=None)))))

    def compiled_arms(bench: Bench, batch: int) -> None:
        """One adapter, eager and under torch.compile (two models with the same weights): inference and a
        training step. The compilation happens in the warm-up calls, which are not timed."""
        from adapter_cli.compiled import blocker, compile_model

        reason = blocker(device)
        if reason is not None:
            print(f"compiled arms skipped: {reason}", file=sys.stderr)
            return
        eager, compiled = bench.adapter_model().eval(), bench.adapter_model().eval()
        compile_model(compiled, True, device, "bench")
        inference_group(batch, {"inference, one adapter, eager": bench.infer(eager, active="a0"),
                                "inference, one adapter, compiled": bench.infer(compiled, active="a0")})
        eager, compiled = bench.adapter_model(), bench.adapter_model()
        compile_model(compiled, True, device, "bench")
        inference_group(batch, {  # timed alike; no peak or saved-activation figures for these two
            "adapter training step, eager": bench.train_step(eager, active="a0", labels=bench.labels),
            "adapter training step, compiled": bench.train_step(compiled, active="a0", labels=bench.labels)})

    if args.arms == "decoder":  # not in "all": its own file, a causal LM's vocabulary-sized logits
        for batch in batches:
            bench = Bench(args.preset, device, batch)
            training_group(batch, [training_builder(bench, arm) for arm in DECODER_ARMS],
                           memory={arm: arm for arm in DECODER_ARMS})
    if args.arms not in ("mixed", "compiled", "decoder"):
        for batch in batches:
            bench = Bench(args.preset, device, batch)
            if args.arms == "all":
                main_arms(bench, batch)
            lora_arms(bench, batch)
    if args.arms == "compiled":  # not in "all": compiling takes longer than the rest of the small suite
        for batch in batches:
            compiled_arms(Bench(args.preset, device, batch), batch)
    if shape["mixed_adapters"]:
        mixed_at_scale(shape["mixed_adapters"])

    ratios = compute_ratios(rows, shape, args.min_clean)
    interference = timer.describe(source, args.min_clean) | {
        "calls": sum(r["calls"]["clean"] + r["calls"]["rejected"] for r in rows),
        "rejected_calls": sum(r["calls"]["rejected"] for r in rows)}
    env = {"device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
           "torch": torch.__version__, "preset": args.preset, "shape": shape,
           "dtype": str(torch.bfloat16 if device.type == "cuda" else None), "threads": torch.get_num_threads(),
           "clock": "CPU time of the one thread" if args.clock == "cpu" else "wall",
           "warmup": args.warmup, "repeat": args.repeat, "interference": interference,
           "peak_memory": "CUDA allocator peak" if device.type == "cuda" else "resident memory peak (child process)",
           "lora_max_abs_diff": merge_check}
    args.out.mkdir(parents=True, exist_ok=True)
    # The LoRA set or the mixed batch alone, or timed by CPU time, gets a file of its own: it does not
    # replace the full table.
    stem = args.out / (f"results-{device.type}-{args.preset}" + ("" if args.arms == "all" else f"-{args.arms}")
                       + ("-cputime" if args.clock == "cpu" else ""))
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "arms": rows, "ratios": ratios}, indent=1))
    markdown = table(env, rows, ratios)
    stem.with_suffix(".md").write_text(markdown)
    print(markdown, end="")
    return 0


def compute_ratios(rows: list[dict[str, Any]], shape: dict[str, Any], min_clean: int = 1) -> list[dict[str, Any]]:
    """Every ratio between arms of one batch size. A time ratio whose arms have fewer than ``min_clean`` clean
    calls gets no value, and a note instead."""
    ratios = []
    biggest = max(shape["fuse"])

    def adder(batch: int) -> Callable[..., None]:
        arms = {r["arm"]: r for r in rows if r["batch"] == batch}

        def add(name: str, num: str, den: str, key: str = "seconds") -> None:
            if num not in arms or den not in arms or not arms[num][key] or not arms[den][key]:
                return
            entry: dict[str, Any] = {"batch": batch, "ratio": name, "value": arms[num][key] / arms[den][key]}
            if key == "seconds":
                clean = min(arms[arm].get("calls", {}).get("clean", min_clean) for arm in (num, den))
                entry["clean_calls"] = clean
                if clean < min_clean:
                    entry |= {"value": None, "note": f"n/a (too few clean calls: {clean})"}
            ratios.append(entry)
        return add

    for batch in shape["batches"]:
        add = adder(batch)
        full, adapter, fuse_step = "full fine-tuning step", "adapter training step", f"fuse-{biggest} training step"
        add("adapter step / full fine-tuning step", adapter, full)
        add("adapter step / frozen floor", adapter, "frozen floor")
        add("adapter step / full fine-tuning step: peak memory", adapter, full, "peak_bytes")
        add("one-adapter inference / backbone inference", "inference, one adapter", "inference, no adapter")
        add(f"fuse-{biggest} inference / one-adapter inference", f"inference, fuse-{biggest}",
            "inference, one adapter")
        add(f"fuse-{biggest} step / full fine-tuning step", fuse_step, full)
        add(f"one adapter / mixed batch of {batch} adapters (throughput)", "inference, one adapter",
            f"inference, {batch} distinct adapters")
        add("adapter step / full fine-tuning step: saved activation bytes", adapter, full, "saved_bytes")
        add("checkpointed adapter step / full fine-tuning step: peak memory", f"{adapter}, checkpointed", full,
            "peak_bytes")
        add("checkpointed adapter step / full fine-tuning step: saved activation bytes", f"{adapter}, checkpointed",
            full, "saved_bytes")
        add("checkpointed adapter step / full fine-tuning step", f"{adapter}, checkpointed", full)
        add(f"fuse-{biggest} step / full fine-tuning step: peak memory", fuse_step, full, "peak_bytes")
        add(f"fuse-{biggest} step / full fine-tuning step: saved activation bytes", fuse_step, full, "saved_bytes")
        add(f"fast paths / reference order: fuse-{biggest} inference", f"inference, fuse-{biggest}",
            f"inference, fuse-{biggest}, reference order")
        add(f"fast paths / reference order: fuse-{biggest} step", fuse_step, f"{fuse_step}, reference order")
        add(f"fast paths / one by one: mixed batch of {batch}", f"inference, {batch} distinct adapters",
            f"inference, {batch} distinct adapters, one by one")
        # The LoRA set: its ratios divide by the baselines measured beside it.
        lora, ia3 = "LoRA training step", "(IA)³ training step"
        full_b, adapter_b = "full fine-tuning step, beside LoRA", "adapter training step, beside LoRA"
        add("LoRA step / full fine-tuning step", lora, full_b)
        add("adapter step (pfeiffer) / full fine-tuning step, beside LoRA", adapter_b, full_b)
        add("(IA)³ step / full fine-tuning step", ia3, full_b)
        add("LoRA step / adapter step (pfeiffer)", lora, adapter_b)
        add("LoRA step / full fine-tuning step: peak memory", lora, full_b, "peak_bytes")
        add("adapter step (pfeiffer) / full fine-tuning step, beside LoRA: peak memory", adapter_b, full_b,
            "peak_bytes")
        add("LoRA step / full fine-tuning step: saved activation bytes", lora, full_b, "saved_bytes")
        add("(IA)³ step / full fine-tuning step: saved activation bytes", ia3, full_b, "saved_bytes")
        backbone, unmerged, merged, ia3_inference = LORA_INFERENCE
        add("unmerged LoRA inference / backbone inference", unmerged, backbone)
        add("merged LoRA inference / backbone inference", merged, backbone)
        add("unmerged (IA)³ inference / backbone inference", ia3_inference, backbone)
        add("compiled / eager: one-adapter inference", "inference, one adapter, compiled",
            "inference, one adapter, eager")
        add("compiled / eager: adapter training step", "adapter training step, compiled",
            "adapter training step, eager")
        full_d, adapter_d, checkpointed_d = DECODER_ARMS
        for key, what in (("seconds", ""), ("peak_bytes", ": peak memory"), ("saved_bytes", ": saved activation bytes")):
            add(f"decoder: adapter step / full fine-tuning step{what}", adapter_d, full_d, key)
            add(f"decoder: checkpointed adapter step / full fine-tuning step{what}", checkpointed_d, full_d, key)
    k = shape.get("mixed_adapters")
    if k:  # the mixed batch at scale: throughput relative to one adapter, same batch of k rows
        add = adder(k)
        one = f"{MIXED}one adapter"
        add(f"{MIXED}one adapter / {k} distinct adapters (throughput)", one, f"{MIXED}{k} distinct adapters")
        add(f"{MIXED}one adapter / {k // 4} distinct adapters (throughput)", one,
            f"{MIXED}{k // 4} distinct adapters")
        add(f"{MIXED}fast path / one by one, {k} distinct adapters", f"{MIXED}{k} distinct adapters",
            f"{MIXED}{k} distinct adapters, one by one")
        for what, single in (("stacks", "one stack"), ("LoRA adapters", "one LoRA adapter")):
            add(f"{MIXED}{single} / {k} distinct {what} (throughput)", f"{MIXED}{single}",
                f"{MIXED}{k} distinct {what}")
            add(f"{MIXED}fast path / one by one, {k} distinct {what}", f"{MIXED}{k} distinct {what}",
                f"{MIXED}{k} distinct {what}, one by one")
    return ratios


def table(env: dict[str, Any], rows: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> str:
    clock = ", timed by CPU time on 1 thread" if env.get("clock", "wall") != "wall" else ""
    lines = [f"# adapt benchmark: {env['device']}, preset {env['preset']}, dtype {env['dtype']}{clock}", "",
             "| batch | ratio | value |", "|---|---|---|"]
    lines += [f"| {r['batch']} | {r['ratio']} | "
              + (f"{r['value']:.2f}" if r["value"] is not None else r.get("note", "n/a")) + " |" for r in ratios]
    interference = env.get("interference", {})
    if "max_others_cores" in interference:
        limit = interference["max_others_cores"]
        rule = "no call is rejected (--max-others inf)" if limit is None else \
            f"a call is rejected when other processes used more than {limit} cores during it"
        note = (f"Interference: {interference['source']}; {rule}; {interference.get('rejected_calls', 0)} of "
                f"{interference.get('calls', 0)} timed calls rejected; a time ratio needs "
                f"{interference['min_clean_calls']} clean calls per arm.")
    else:
        note = f"Interference: {interference.get('source', 'not measured')}."
    lines += ["", note, "", f"Peak memory: {env['peak_memory']}.", "",
              "| batch | arm | median ms | min-max ms | clean / rejected calls | others' CPU, cores (clean / rejected,"
              " median) | peak MiB | saved activations MB |", "|---|---|---|---|---|---|---|---|"]

    def cores(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for r in rows:
        calls = r.get("calls") or {}
        spread, others = calls.get("spread_seconds") or {}, calls.get("others_cores") or {}
        lines.append(
            f"| {r['batch']} | {r['arm']} | {r['seconds'] * 1000:.2f} | "
            + (f"{spread['min'] * 1000:.2f}-{spread['max'] * 1000:.2f}" if spread else "-") + " | "
            + (f"{calls['clean']} / {calls['rejected']}" if calls else "-") + " | "
            + f"{cores(others.get('clean_median'))} / {cores(others.get('rejected_median'))} | "
            + (f"{r['peak_bytes'] / 2**20:.0f}" if r["peak_bytes"] else "-") + " | "
            + (f"{r['saved_bytes'] / 1e6:.1f}" if r["saved_bytes"] else "-") + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
