"""CUDA paths: the fast paths, bf16 frozen storage, training, inference and the benchmark on a GPU.

Marked ``gpu``: skipped on machines without CUDA (CPU CI). Run them with ``pytest -m gpu`` on a GPU.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from typer.testing import CliRunner

from adapter_cli import fastpaths
from adapter_cli.cli import app
from adapter_cli.fusion import FusionLayer
from conftest import ROOT, save_tiny_model, tiny_inputs, tiny_model, write_sentiment_task

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
runner = CliRunner()


def _fusion_model(n: int = 4):
    model = tiny_model()
    for i in range(n):
        model.add_adapter(f"a{i}")
    model.add_fusion([f"a{i}" for i in range(n)])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in list(model.adapters.parameters()) + list(model.fusions.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model, f"fuse({','.join(f'a{i}' for i in range(n))})"


def test_fast_paths_on_cuda_equal_the_loop_and_the_cpu(monkeypatch) -> None:
    model, active = _fusion_model()
    ids, mask = tiny_inputs()
    cpu = model(input_ids=ids, attention_mask=mask, active=active).last_hidden_state
    model.to(CUDA)
    ids, mask = ids.to(CUDA), mask.to(CUDA)
    fast = model(input_ids=ids, attention_mask=mask, active=active).last_hidden_state
    monkeypatch.setattr(fastpaths, "ENABLED", False)
    monkeypatch.setattr(FusionLayer, "restructured", False)
    slow = model(input_ids=ids, attention_mask=mask, active=active).last_hidden_state
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_routed_rows_on_cuda_equal_each_adapter_alone() -> None:
    model = tiny_model()
    for i in range(3):
        model.add_adapter(f"m{i}")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    model.to(CUDA)
    ids, mask = (t.to(CUDA) for t in tiny_inputs())
    routed = model(input_ids=ids, attention_mask=mask, active="batch_split(m0,m1,m2,sizes=[1,1,1])")
    for row in range(3):
        alone = model(input_ids=ids[row:row + 1], attention_mask=mask[row:row + 1], active=f"m{row}")
        torch.testing.assert_close(routed.last_hidden_state[row:row + 1], alone.last_hidden_state,
                                   atol=1e-4, rtol=1e-4)


def test_bf16_frozen_storage_is_exact_under_cuda_autocast() -> None:
    model = tiny_model()
    model.add_adapter("a")
    model.add_head("h", num_labels=2)
    model.train_adapters(["a"], heads=["h"])
    model.to(CUDA).eval()  # no dropout: the two runs see the same computation
    cast = copy.deepcopy(model)
    assert cast.cast_frozen_linears(torch.bfloat16) > 0
    ids, mask = (t.to(CUDA) for t in tiny_inputs())
    labels = torch.tensor([0, 1, 1], device=CUDA)
    results = []
    for m in (model, cast):
        # the math attention kernel: its backward is deterministic, unlike some fused ones
        with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(SDPBackend.MATH):
            out = m(input_ids=ids, attention_mask=mask, active="a", labels=labels)
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.requires_grad}))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(results[0][1][k], results[1][1][k]) for k in results[0][1])


def test_train_and_infer_on_cuda(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    model = save_tiny_model(tmp_path / "tiny")
    task = write_sentiment_task(tmp_path / "task")
    result = runner.invoke(app, ["train", "--task", str(task), "--model", str(model), "--quiet", "--json",
                                 "--run-dir", "run", "epochs=2", "batch_size=16", "learning_rate=5e-3"])
    assert result.exit_code == 0, result.stderr
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert environment["device"].startswith("cuda")
    preds = {}
    for device in ("cuda", "cpu"):
        out = runner.invoke(app, ["infer", "-m", str(model), "-a", "toy_sentiment", "--device", device,
                                  "--precision", "fp32", "good film", "awful plot"])
        assert out.exit_code == 0, out.stderr
        preds[device] = [json.loads(line) for line in out.stdout.splitlines()]
    assert [p["label"] for p in preds["cuda"]] == [p["label"] for p in preds["cpu"]]
    assert all(abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(preds["cuda"], preds["cpu"]))


def test_bench_on_cuda_records_peak_memory(tmp_path) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--device", "cuda", "--preset", "small",
                          "--repeat", "2", "--warmup", "1", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "results-cuda-small.json").read_text())
    assert all(r["peak_bytes"] for r in result["arms"])
    ratios = {r["ratio"] for r in result["ratios"]}
    assert {"adapter step / full fine-tuning step: peak memory", "fuse-8 step / full fine-tuning step: peak memory"} \
        <= ratios
