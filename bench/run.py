"""Speed and memory benchmark of adapt: every ratio comes from arms measured in the same run (the same
process, except CPU peak memory, which takes one child process per training arm).

    python bench/run.py --device cpu --preset small        # a quick CPU shape (make bench)
    python bench/run.py --device cuda --preset bert-base   # BERT-base shape, seq 128, batch 32 and 128, bf16
    python bench/run.py --preset bert-base --batch 8 --memory-only   # CPU peak memory of the training arms
    python bench/run.py --device cpu --preset small --arms lora     # only the LoRA-family arms and their baselines
    python bench/run.py --device cpu --clock cpu    # one thread, timed by its CPU time (a busy shared machine)

Arms: full fine-tuning step (plain transformers model, fused AdamW on CUDA), the frozen floor (all weights
frozen but layer 0's output LayerNorm, so the backward still crosses every layer above it), adapter training
step, fusion training steps for N = 2, 4, 8, 16, inference with no adapter / one adapter / fuse-N, and a mixed
batch where every example uses another adapter. The LoRA set: LoRA and (IA)³ training steps beside a full
fine-tuning step and a bottleneck adapter step (the "pfeiffer" preset), and inference with the backbone alone,
LoRA unmerged, LoRA merged into the weights (merge_adapter) and (IA)³ unmerged; each group is timed
round-robin (one call of each arm in turn, so that drift in the machine's speed reaches every arm alike; on
CUDA the training arms run one after another, so that each allocator peak holds one model). Wall time
is CUDA-synchronised, after warm-up, as a median. Peak memory: on CUDA the allocator's peak per arm; on CPU
the peak resident memory of each training arm run alone in a child process, above what the process held before
building the model. Every training arm also records the bytes autograd keeps for its backward. Output: JSON
and a markdown table (bench/results-<device>-<preset>.*).

The adapter-model arms run as `adapt train` / `adapt infer` run them: under bf16 autocast (CUDA) the frozen
linear layers are stored in bf16. The frozen floor and the backbone-only arm get the same storage, so the
ratios against them measure the adapters, not the storage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

PRESETS = {
    "small": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512,
              "seq": 64, "batches": [8], "fuse": [2, 4, 8]},
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072, "seq": 128, "batches": [32, 128], "fuse": [2, 4, 8, 16]},
}
# Training arms whose peak resident memory is measured in a child process on CPU.
MEMORY_ARMS = ("full fine-tuning step", "frozen floor", "adapter training step",
               "adapter training step, checkpointed", "LoRA training step")
# LoRA-family training arms: arm -> (adapter preset, adapter name).
LORA_ARMS = {"LoRA training step": ("lora", "l0"), "(IA)³ training step": ("ia3", "i0")}
# The training arms of the LoRA set (the first two are measured again beside LoRA, as "<arm>, beside LoRA").
LORA_TRAINING = ("full fine-tuning step", "adapter training step", *LORA_ARMS)
# The inference arms timed round-robin; the first is the baseline of the others.
LORA_INFERENCE = ("inference, backbone, beside LoRA", "inference, LoRA unmerged", "inference, LoRA merged",
                  "inference, (IA)³ unmerged")


# What times an arm: wall time, or with --clock cpu the CPU time of the one thread that does all the work.
CLOCK: Callable[[], float] = time.perf_counter


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeat: int) -> tuple[float, int | None]:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    samples = []
    for _ in range(repeat):
        start = CLOCK()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(CLOCK() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return statistics.median(samples), peak


def timed_round_robin(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int,
                      repeat: int) -> dict[str, tuple[float, int | None]]:
    """Like ``timed`` for several arms at once: each round calls every arm once, in an order rotated by one
    each round, so that a slower or faster spell of the machine reaches every arm alike. On CUDA the peak of
    an arm is the allocator's peak during its calls (the other arms' models are resident too)."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, int] = dict.fromkeys(names, 0)
    for i in range(repeat):
        for name in names[i % len(names):] + names[:i % len(names)]:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = CLOCK()
            fns[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated())
            samples[name].append(CLOCK() - start)
    return {name: (statistics.median(samples[name]), peaks[name] or None) for name in names}


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

    def training_arm(self, arm: str) -> tuple[Callable[[], None], Any]:
        """The step function and model of one training arm that needs nothing else built first."""
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--batch", type=int, help="one batch size instead of the preset's")
    parser.add_argument("--arms", choices=("all", "lora"), default="all",
                        help="lora: only the LoRA set (LoRA and (IA)³ arms with the baselines measured beside "
                             "them: a full fine-tuning step, a bottleneck adapter step, the backbone alone)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu (CPU only): run torch on one thread and time each arm by that thread's CPU "
                             "time, which other processes on a shared machine hardly change")
    parser.add_argument("--memory-only", action="store_true",
                        help="CPU: only the peak resident memory of the training arms (quick at BERT-base shape)")
    parser.add_argument("--peak-rss-arm", choices=MEMORY_ARMS, help=argparse.SUPPRESS)  # the child of peak_rss
    args = parser.parse_args()
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

    shape = PRESETS[args.preset]
    device = torch.device(args.device)
    if args.clock == "cpu":
        if device.type != "cpu":
            parser.error("--clock cpu times CPU work only; use it with --device cpu")
        global CLOCK
        torch.set_num_threads(1)  # every kernel, forward and backward, then runs on the calling thread
        CLOCK = time.thread_time
    rows: list[dict[str, Any]] = []
    merge_check: dict[int, dict[str, float]] = {}  # batch -> max abs differences of the last hidden states

    @contextlib.contextmanager
    def reference_order() -> Any:
        """The product with its fast paths off (ADAPT_REFERENCE_ORDER=1): the baseline they are measured against."""
        saved = fastpaths.ENABLED, FusionLayer.restructured
        fastpaths.ENABLED = FusionLayer.restructured = False
        try:
            yield
        finally:
            fastpaths.ENABLED, FusionLayer.restructured = saved

    shape = {**shape, "batches": batches}
    for batch in shape["batches"]:
        bench = Bench(args.preset, device, batch)

        def add_row(arm: str, seconds: float, peak: int | None, saved: int | None) -> None:
            rows.append({"batch": batch, "arm": arm, "seconds": seconds, "peak_bytes": peak, "saved_bytes": saved})
            print(f"batch {batch:>4} {arm:<28} {seconds * 1000:9.2f} ms" +
                  (f"  peak {peak / 2**20:.0f} MiB" if peak else ""), file=sys.stderr)

        def record(arm: str, fn: Callable[[], Any], model: Any = None) -> None:
            seconds, peak = timed(fn, device, args.warmup, args.repeat)
            saved = None
            if model is not None:  # a training arm: also the activation bytes autograd keeps
                saved = saved_activation_bytes(fn, parameter_storages(model))
                if device.type == "cpu" and arm in MEMORY_ARMS:
                    peak = peak_rss(args.preset, batch, arm)
            add_row(arm, seconds, peak, saved)

        def lora_arms() -> None:
            """The LoRA family beside its baselines. Training: full fine-tuning, the bottleneck adapter
            (pfeiffer), LoRA and (IA)³ steps, timed round-robin on CPU (on CUDA one after another, so that each
            arm's allocator peak holds its own model only); CPU peaks come from child processes as elsewhere.
            Inference, round-robin, hidden states only: the backbone alone (the same base weights, stored as
            the others), LoRA unmerged, the same LoRA merged into the weights, (IA)³ unmerged."""
            models = {}
            training = {arm: arm if arm in LORA_ARMS else f"{arm}, beside LoRA" for arm in LORA_TRAINING}
            if device.type == "cuda":
                for arm, label in training.items():
                    step, model = bench.training_arm(arm)
                    seconds, peak = timed(step, device, args.warmup, args.repeat)
                    add_row(label, seconds, peak, saved_activation_bytes(step, parameter_storages(model)))
                    if arm in LORA_ARMS:  # the trained adapters serve the inference arms (B no longer zero),
                        models[LORA_ARMS[arm][1]] = model.eval().cpu()  # off the GPU until the others are measured
                    del step, model
                models = {name: model.to(device) for name, model in models.items()}
            else:
                built = {arm: bench.training_arm(arm) for arm in training}
                times = timed_round_robin({arm: step for arm, (step, _) in built.items()}, device, args.warmup,
                                          args.repeat)
                measured = {r["arm"]: r["peak_bytes"] for r in rows if r["batch"] == batch}
                for arm, label in training.items():
                    step, model = built[arm]
                    peak = measured.get(arm) or (peak_rss(args.preset, batch, arm) if arm in MEMORY_ARMS else None)
                    add_row(label, times[arm][0], peak, saved_activation_bytes(step, parameter_storages(model)))
                    if arm in LORA_ARMS:
                        models[LORA_ARMS[arm][1]] = model.eval()
                del built
            lora, ia3 = models["l0"], models["i0"]
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
            fns = dict(zip(LORA_INFERENCE, (bench.infer(backbone), bench.infer(lora, active="l0", head=None),
                                            bench.infer(merged, active="l0", head=None),
                                            bench.infer(ia3, active="i0", head=None))))
            for arm, (seconds, peak) in timed_round_robin(fns, device, args.warmup, args.repeat).items():
                add_row(arm, seconds, peak, None)

        if args.arms == "lora":
            lora_arms()
            continue

        for arm in ("full fine-tuning step", "frozen floor"):
            step, model = bench.training_arm(arm)
            record(arm, step, model)
        model.eval()
        record("inference, no adapter", bench.infer(model))
        del model, step

        for arm in ("adapter training step", "adapter training step, checkpointed"):
            step, model = bench.training_arm(arm)
            record(arm, step, model)
        model.gradient_checkpointing_disable()
        model.eval()
        record("inference, one adapter", bench.infer(model, active="a0"))
        for n in shape["fuse"]:
            for i in range(1, n):
                if f"a{i}" not in model.adapters:
                    model.add_adapter(f"a{i}")
            members = [f"a{i}" for i in range(n)]
            fusion = model.add_fusion(members, name=f"f{n}")
            active = f"fuse({','.join(members)},name=f{n})"
            model.train_adapters([], fusions=[fusion], heads=["h"])
            model.train()
            record(f"fuse-{n} training step", bench.train_step(model, active=active, labels=bench.labels), model)
            if n == max(shape["fuse"]):
                with reference_order():
                    record(f"fuse-{n} training step, reference order",
                           bench.train_step(model, active=active, labels=bench.labels))
            model.eval()
            record(f"inference, fuse-{n}", bench.infer(model, active=active))
            if n == max(shape["fuse"]):
                with reference_order():
                    record(f"inference, fuse-{n}, reference order", bench.infer(model, active=active))
        for i in range(batch):
            if f"m{i}" not in model.adapters:
                model.add_adapter(f"m{i}")
        mixed = f"batch_split({','.join(f'm{i}' for i in range(batch))},sizes=[{','.join(['1'] * batch)}])"
        record(f"inference, {batch} distinct adapters", bench.infer(model, active=mixed))
        with reference_order():
            record(f"inference, {batch} distinct adapters, one by one", bench.infer(model, active=mixed))
        del model, step
        lora_arms()

    ratios = compute_ratios(rows, shape)
    env = {"device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
           "torch": torch.__version__, "preset": args.preset, "shape": shape,
           "dtype": str(torch.bfloat16 if device.type == "cuda" else None), "threads": torch.get_num_threads(),
           "clock": "CPU time of the one thread" if args.clock == "cpu" else "wall",
           "peak_memory": "CUDA allocator peak" if device.type == "cuda" else "resident memory peak (child process)",
           "lora_max_abs_diff": merge_check}
    args.out.mkdir(parents=True, exist_ok=True)
    # The LoRA set alone, or timed by CPU time, gets a file of its own: it does not replace the full table.
    stem = args.out / (f"results-{device.type}-{args.preset}" + ("-lora" if args.arms == "lora" else "")
                       + ("-cputime" if args.clock == "cpu" else ""))
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "arms": rows, "ratios": ratios}, indent=1))
    markdown = table(env, rows, ratios)
    stem.with_suffix(".md").write_text(markdown)
    print(markdown, end="")
    return 0


def compute_ratios(rows: list[dict[str, Any]], shape: dict[str, Any]) -> list[dict[str, Any]]:
    ratios = []
    biggest = max(shape["fuse"])
    for batch in shape["batches"]:
        arms = {r["arm"]: r for r in rows if r["batch"] == batch}

        def add(name: str, num: str, den: str, key: str = "seconds") -> None:
            if num in arms and den in arms and arms[num][key] and arms[den][key]:
                ratios.append({"batch": batch, "ratio": name, "value": arms[num][key] / arms[den][key]})

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
    return ratios


def table(env: dict[str, Any], rows: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> str:
    clock = ", timed by CPU time on 1 thread" if env.get("clock", "wall") != "wall" else ""
    lines = [f"# adapt benchmark: {env['device']}, preset {env['preset']}, dtype {env['dtype']}{clock}", "",
             "| batch | ratio | value |", "|---|---|---|"]
    lines += [f"| {r['batch']} | {r['ratio']} | {r['value']:.2f} |" for r in ratios]
    lines += ["", f"Peak memory: {env['peak_memory']}.", "",
              "| batch | arm | median ms | peak MiB | saved activations MB |", "|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['arm']} | {r['seconds'] * 1000:.2f} | "
              + (f"{r['peak_bytes'] / 2**20:.0f}" if r["peak_bytes"] else "-") + " | "
              + (f"{r['saved_bytes'] / 1e6:.1f}" if r["saved_bytes"] else "-") + " |" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
