"""Commands that only read configs or metadata start without torch or transformers (issue 11).

Each command runs as ``python -X importtime -m adapter_cli ...`` in a fresh process, and the import
log says which modules were loaded: a test of behaviour, not of timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, tiny_model

HEAVY = ("torch", "transformers")


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the CLI in a fresh interpreter; return the process and the top-level packages it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "adapter_cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:") and line.count("|") == 2}
    return proc, imported


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Adapters saved by a real model: without a head (both formats, safetensors) and with one."""
    root = tmp_path_factory.mktemp("startup")
    model = tiny_model()
    model.add_adapter("plain", "houlsby")
    model.save_adapter(root / "adapt", "plain")
    model.save_adapter(root / "adapterhub", "plain", format="adapterhub", safetensors=True)
    model.add_adapter("headed")
    model.add_head("headed", num_labels=3)
    model.save_adapter(root / "headed", "headed")
    model.add_adapter("other", "houlsby")
    model.add_fusion(["plain", "other"], name="fz")
    model.save_fusion(root / "fusion", "fz")
    return {p.name: p for p in root.iterdir()}


@pytest.mark.parametrize("args", [
    ["add", "pfeiffer", "--hidden-size", "768", "--num-layers", "12"],
    ["add", "houlsby[reduction_factor=8]", "non_linearity=gelu", "--hidden-size", "768", "--num-layers", "12",
     "--json"],
    ["add", "--help"],
])
def test_add_from_the_config_alone_imports_no_torch(args) -> None:
    proc, imported = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "parameters" in proc.stdout or "Usage" in proc.stdout
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_bad_add_input_imports_no_torch() -> None:
    proc, imported = run_cli("add", "pfeifer", "--hidden-size", "768", "--num-layers", "12")
    assert proc.returncode == 2 and "did you mean 'pfeiffer'" in proc.stderr
    assert not imported & set(HEAVY)


@pytest.mark.parametrize("which", ["adapt", "adapterhub"])
def test_inspect_of_an_adapter_imports_no_torch(saved, which) -> None:
    proc, imported = run_cli("inspect", str(saved[which]), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    model = tiny_model()
    model.add_adapter("plain", "houlsby")
    assert data["parameters"] == sum(p.numel() for p in model.adapters["plain"].parameters())
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


@pytest.mark.parametrize("which", ["headed", "fusion"])
def test_inspect_of_a_head_or_fusion_imports_no_torch(saved, which) -> None:
    proc, imported = run_cli("inspect", str(saved[which]), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_inspect_of_a_legacy_bin_still_works() -> None:
    """AdapterHub ``.bin`` pickles are the one case that needs torch to be read."""
    proc, imported = run_cli("inspect", str(ROOT / "tests/fixtures/adapterhub_roberta/adapters/pfr"), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["parameters"] > 0 and "torch" in imported
