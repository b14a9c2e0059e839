"""Speed and memory benchmark of adapt: every ratio comes from arms measured in the same process and run.

    python bench/run.py --device cpu --preset small        # a quick CPU shape (make bench)
    python bench/run.py --device cuda --preset bert-base   # BERT-base shape, seq 128, batch 32 and 128, bf16

Arms: full fine-tuning step (plain transformers model, fused AdamW on CUDA), the frozen floor (all weights
frozen, but the backward still crosses every layer), adapter training step, fusion training steps for
N = 2, 4, 8, 16, inference with no adapter / one adapter / fuse-N, and a mixed batch where every example
uses another adapter. Wall time is CUDA-synchronised, after warm-up, as a median; peak memory per arm on
CUDA. Output: JSON and a markdown table (bench/results-<device>.{json,md}).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

PRESETS = {
    "small": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512,
              "seq": 64, "batches": [8], "fuse": [2, 4, 8]},
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072, "seq": 128, "batches": [32, 128], "fuse": [2, 4, 8, 16]},
}


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeat: int) -> tuple[float, int | None]:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return statistics.median(samples), peak


def saved_activation_bytes(fn: Callable[[], Any], params: set[int]) -> int:
    """Bytes of the tensors autograd keeps for the backward of one call (weights excluded): the activation
    memory of a training step, measurable on any device (a CPU stand-in for peak memory)."""
    seen: dict[tuple[int, int, Any], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            seen[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()

    from transformers import AutoConfig, AutoModel

    from adapter_cli import AdapterModel

    shape = PRESETS[args.preset]
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    config = AutoConfig.for_model("bert", vocab_size=30522, hidden_size=shape["hidden_size"],
                                  num_hidden_layers=shape["num_hidden_layers"],
                                  num_attention_heads=shape["num_attention_heads"],
                                  intermediate_size=shape["intermediate_size"])
    rows: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def reference_order() -> Any:
        """The product with its fast paths off (ADAPT_REFERENCE_ORDER=1): the baseline they are measured against."""
        from adapter_cli import fastpaths
        from adapter_cli.fusion import FusionLayer

        saved = fastpaths.ENABLED, FusionLayer.restructured
        fastpaths.ENABLED = FusionLayer.restructured = False
        try:
            yield
        finally:
            fastpaths.ENABLED, FusionLayer.restructured = saved

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    for batch in shape["batches"]:
        ids = torch.randint(1000, 20000, (batch, shape["seq"]), device=device)
        mask = torch.ones_like(ids)
        labels = torch.randint(0, 2, (batch,), device=device)

        def record(arm: str, fn: Callable[[], Any], model: Any = None) -> None:
            seconds, peak = timed(fn, device, args.warmup, args.repeat)
            saved = None
            if model is not None:  # a training arm: also the activation bytes autograd keeps
                saved = saved_activation_bytes(fn, {p.untyped_storage().data_ptr() for p in model.parameters()})
            rows.append({"batch": batch, "arm": arm, "seconds": seconds, "peak_bytes": peak, "saved_bytes": saved})
            print(f"batch {batch:>4} {arm:<28} {seconds * 1000:9.2f} ms" +
                  (f"  peak {peak / 2**30:.2f} GiB" if peak else ""), file=sys.stderr)

        def train_step(model: Any, params: list[torch.Tensor], **kw: Any) -> Callable[[], None]:
            opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda") if params else None

            def step() -> None:
                with autocast():
                    out = model(input_ids=ids, attention_mask=mask, **kw)
                    hidden = out.last_hidden_state
                    loss = hidden[:, 0].float().pow(2).mean() if not hasattr(out, "loss") or out.loss is None \
                        else out.loss
                loss.backward()
                if opt is not None:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            return step

        torch.manual_seed(0)
        plain = AutoModel.from_config(config).to(device).train()
        record("full fine-tuning step", train_step(plain, list(plain.parameters())), plain)
        plain.requires_grad_(False)
        plain.embeddings.word_embeddings.weight.requires_grad_(True)  # the floor: backward crosses every layer
        record("frozen floor", train_step(plain, []), plain)
        plain.eval()
        with torch.no_grad():
            record("inference, no adapter", lambda: plain(input_ids=ids, attention_mask=mask))
        del plain

        model = AdapterModel.from_config(config).to(device)
        model.add_adapter("a0")
        model.add_head("h", num_labels=2)
        model.train_adapters(["a0"], heads=["h"])
        model.train()
        record("adapter training step", train_step(model, [p for p in model.parameters() if p.requires_grad],
                                                   active="a0", labels=labels), model)
        model.gradient_checkpointing_enable()  # the recipe's gradient_checkpointing=true
        record("adapter training step, checkpointed",
               train_step(model, [p for p in model.parameters() if p.requires_grad], active="a0", labels=labels), model)
        model.gradient_checkpointing_disable()
        model.eval()
        with torch.no_grad():
            record("inference, one adapter", lambda: model(input_ids=ids, attention_mask=mask, active="a0"))
        for n in shape["fuse"]:
            for i in range(1, n):
                if f"a{i}" not in model.adapters:
                    model.add_adapter(f"a{i}")
            members = [f"a{i}" for i in range(n)]
            fusion = model.add_fusion(members, name=f"f{n}")
            active = f"fuse({','.join(members)},name=f{n})"
            model.train_adapters([], fusions=[fusion], heads=["h"])
            model.train()
            record(f"fuse-{n} training step", train_step(model, [p for p in model.parameters() if p.requires_grad],
                                                         active=active, labels=labels), model)
            if n == max(shape["fuse"]):
                with reference_order():
                    record(f"fuse-{n} training step, reference order",
                           train_step(model, [p for p in model.parameters() if p.requires_grad], active=active,
                                      labels=labels))
            model.eval()
            with torch.no_grad():
                record(f"inference, fuse-{n}", lambda: model(input_ids=ids, attention_mask=mask, active=active))
                if n == max(shape["fuse"]):
                    with reference_order():
                        record(f"inference, fuse-{n}, reference order",
                               lambda: model(input_ids=ids, attention_mask=mask, active=active))
        for i in range(batch):
            if f"m{i}" not in model.adapters:
                model.add_adapter(f"m{i}")
        mixed = f"batch_split({','.join(f'm{i}' for i in range(batch))},sizes=[{','.join(['1'] * batch)}])"
        with torch.no_grad():
            record(f"inference, {batch} distinct adapters", lambda: model(input_ids=ids, attention_mask=mask,
                                                                            active=mixed))
            with reference_order():
                record(f"inference, {batch} distinct adapters, one by one",
                       lambda: model(input_ids=ids, attention_mask=mask, active=mixed))
        del model

    def ratio(batch: int, num: str, den: str) -> float:
        get = {r["arm"]: r["seconds"] for r in rows if r["batch"] == batch}
        return get[num] / get[den]

    def saved_ratio(batch: int, num: str, den: str) -> float:
        get = {r["arm"]: r["saved_bytes"] for r in rows if r["batch"] == batch}
        return get[num] / get[den]

    ratios = []
    for batch in shape["batches"]:
        biggest = max(shape["fuse"])
        ratios.append({"batch": batch, "ratio": "adapter step / full fine-tuning step: saved activation bytes",
                       "value": saved_ratio(batch, "adapter training step", "full fine-tuning step")})
        ratios.append({"batch": batch, "ratio": "checkpointed adapter step / full fine-tuning step: saved activation bytes",
                       "value": saved_ratio(batch, "adapter training step, checkpointed", "full fine-tuning step")})
        ratios.append({"batch": batch, "ratio": "checkpointed adapter step / full fine-tuning step",
                       "value": ratio(batch, "adapter training step, checkpointed", "full fine-tuning step")})
        ratios.append({"batch": batch, "ratio": f"fuse-{biggest} step / full fine-tuning step: saved activation bytes",
                       "value": saved_ratio(batch, f"fuse-{biggest} training step", "full fine-tuning step")})
        for name, num, den in (
            ("adapter step / full fine-tuning step", "adapter training step", "full fine-tuning step"),
            ("adapter step / frozen floor", "adapter training step", "frozen floor"),
            ("one-adapter inference / backbone inference", "inference, one adapter", "inference, no adapter"),
            (f"fuse-{biggest} inference / one-adapter inference", f"inference, fuse-{biggest}",
             "inference, one adapter"),
            (f"fuse-{biggest} step / full fine-tuning step", f"fuse-{biggest} training step", "full fine-tuning step"),
            (f"one adapter / mixed batch of {batch} adapters (throughput)", "inference, one adapter",
             f"inference, {batch} distinct adapters"),
            (f"fast paths / reference order: fuse-{biggest} inference", f"inference, fuse-{biggest}",
             f"inference, fuse-{biggest}, reference order"),
            (f"fast paths / reference order: fuse-{biggest} step", f"fuse-{biggest} training step",
             f"fuse-{biggest} training step, reference order"),
            (f"fast paths / one by one: mixed batch of {batch}", f"inference, {batch} distinct adapters",
             f"inference, {batch} distinct adapters, one by one"),
        ):
            ratios.append({"batch": batch, "ratio": name, "value": ratio(batch, num, den)})
    env = {"device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
           "torch": torch.__version__, "preset": args.preset, "shape": shape, "dtype": str(dtype),
           "threads": torch.get_num_threads()}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"results-{device.type}-{args.preset}"
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "arms": rows, "ratios": ratios}, indent=1))
    lines = [f"# adapt benchmark: {env['device']}, preset {args.preset}, dtype {env['dtype']}", "",
             "| batch | ratio | value |", "|---|---|---|"]
    lines += [f"| {r['batch']} | {r['ratio']} | {r['value']:.2f} |" for r in ratios]
    lines += ["", "| batch | arm | median ms | peak GiB | saved activations MB |", "|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['arm']} | {r['seconds'] * 1000:.2f} | "
              + (f"{r['peak_bytes'] / 2**30:.2f}" if r["peak_bytes"] else "-") + " | "
              + (f"{r['saved_bytes'] / 1e6:.1f}" if r["saved_bytes"] else "-") + " |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
