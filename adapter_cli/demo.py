"""``make demo``: the adapter engine on the embedded default model (all-MiniLM-L6-v2), offline.

Shows what each adapter architecture costs on a real pretrained model, runs single adapters, a stack
and a fusion on real sentences, and saves/reloads in both formats with identical outputs.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

SENTENCES = ["The movie was a delight from start to finish.", "The service was slow and the food was cold.",
             "Adapters keep the pretrained model frozen."]


def main() -> int:
    from transformers import AutoTokenizer

    from . import AdapterModel
    from .defaults import embedded_model_path

    start = time.perf_counter()
    path = embedded_model_path()
    print(f"base model: all-MiniLM-L6-v2 from {path}")
    model = AdapterModel.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    base_params = sum(p.numel() for p in model.base.parameters())
    print(f"  {model.config.model_type}, hidden {model.hidden_size}, {model.num_layers} layers, "
          f"{base_params / 1e6:.1f}M parameters (frozen)\n")

    print(f"{'adapter':<10}{'placement':<30}{'parameters':>12}{'% of base':>11}{'fp32 size':>11}")
    for preset in ("pfeiffer", "houlsby", "bapna", "parallel"):
        model.add_adapter(preset, preset)
        n = sum(p.numel() for p in model.adapters[preset].parameters())
        cfg = model.adapter_config(preset)
        print(f"{preset:<10}{' + '.join(cfg.locations):<30}{n:>12,}{100 * n / base_params:>10.2f}%"
              f"{n * 4 / 1e6:>9.2f} MB")

    torch.manual_seed(0)
    with torch.no_grad():  # give the fresh adapters some weight so their effect is visible
        for name in ("pfeiffer", "bapna"):
            for p in model.adapters[name].parameters():
                p.add_(torch.randn_like(p) * 0.05)
    model.add_fusion(["pfeiffer", "bapna"])
    model.add_head("sentiment", num_labels=2)
    model.eval()
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    print("\nforward passes on real sentences (max change of the final hidden states vs. no adapter):")
    with torch.no_grad():
        base = model(**batch).last_hidden_state
        for active in ("pfeiffer", "houlsby", "stack(pfeiffer,bapna)", "fuse(pfeiffer,bapna)"):
            out = model(**batch, active=active)
            print(f"  {active:<24} {float((out.last_hidden_state - base).abs().max()):.4f}"
                  f"   logits shape {tuple(out.logits.shape)}")

    with tempfile.TemporaryDirectory() as tmp:
        print("\nsave -> load round trips:")
        for fmt in ("adapt", "adapterhub"):
            target = Path(tmp) / fmt
            model.save_adapter(target / "pfeiffer", "pfeiffer", format=fmt)
            model.save_adapter(target / "bapna", "bapna", format=fmt)
            model.save_fusion(target / "fusion", "pfeiffer,bapna", format=fmt)
            fresh = AdapterModel.from_pretrained(path)
            fresh.load_adapter(target / "pfeiffer")
            fresh.load_adapter(target / "bapna")
            fresh.load_fusion(target / "fusion")
            fresh.eval()
            with torch.no_grad():
                same = torch.equal(fresh(**batch, active="fuse(pfeiffer,bapna)").last_hidden_state,
                                   model(**batch, active="fuse(pfeiffer,bapna)").last_hidden_state)
            size = sum(f.stat().st_size for f in (target / "pfeiffer").iterdir())
            print(f"  {fmt:<11} pfeiffer adapter {size / 1e3:.0f} KB on disk; reloaded fusion outputs identical: {same}")
            if not same:
                return 1
    print(f"\ndone in {time.perf_counter() - start:.1f}s. Next:")
    print("  .venv/bin/adapt add houlsby --model minilm reduction_factor=8 --save ./my-adapter")
    print("  .venv/bin/adapt inspect ./my-adapter --json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
