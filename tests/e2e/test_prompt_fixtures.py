"""Prompt tuning against the reference implementation (AdapterHub ``adapters`` 1.3.0), and against the right answer
where the reference is wrong.

The fixtures (tests/fixtures/prompt_<model type>/) were made by the real library on tiny BERT, RoBERTa,
XLM-RoBERTa, DistilBERT and ELECTRA models (tests/fixtures/make_prompt_fixtures.py): prompt adapters saved in its
format (the preset, a 3-token ``prefix_after_bos`` one, seeded ones, one drawn with scale 0.1, one initialised
from a string), a seq_bn and a LoRA adapter to stack after them, a classification and a masked-LM head, and the
outputs every case gave on right-padded, left-padded, one-row, short and unmasked batches. Each case is checked
through the public API within 1e-5 absolute, in the default order and in the reference order
(``ADAPT_REFERENCE_ORDER=1``):

* where the reference is right (no prompt, a batch without padding, and the rows of a padded batch its mask gets
  right: ``_reference_right``), against the reference's outputs;
* every row of a padded batch with a prompt, against the right answer: the same row in a batch of its own, and
  the same row alone without padding (its prompt and real tokens, and its logits where position 0 is not
  padding), at the positions its tokens had (``position_ids``, for the families whose positions count from the
  first column); for the default batch's unpadded rows also against the reference's unmasked run of them
  (``nomask_*``). Where ``_reference_right`` says the reference is wrong, it must be off by more than 1e-5:
  the documented differences (docs/numerics.md, "Prompt tuning") are exactly those.

Where the reference ignores a prompt adapter or fails inside, adapt refuses in one line; ``reference_behaviour``
in cases.json records what the reference did.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, fixture_inputs

ATOL = 1e-5
ROOTS = sorted(d for d in FIXTURES.glob("prompt_*") if (d / "cases.json").is_file())
STACKS = {"stack_pt_seq": "stack(pt,seq)", "stack_pt3_bos_lora": "stack(pt3_bos,lora)",
          "stack_pt_seed_seq_lora": "stack(pt_seed,seq,lora)"}
# families whose position ids count from the first column, padding included (RoBERTa's skip padding)
ABSOLUTE_POSITIONS = ("bert", "distilbert", "electra")
ERRORS: dict[str, dict[str, float]] = {}


def _load(root: Path):
    from adapter_cli import AdapterModel

    model = AdapterModel.from_pretrained(root / "base")
    for adapter in sorted((root / "adapters").iterdir()):
        model.load_adapter(adapter, with_head=False)
    model.load_head(root / "mlm_head", name="mlm")
    model.load_head(root / "head")
    return model.eval()


@pytest.fixture(scope="module", params=ROOTS, ids=lambda p: p.name)
def world(request):
    from safetensors.torch import load_file

    root = request.param
    return root, _load(root), load_file(str(root / "cases.safetensors")), json.loads((root / "cases.json").read_text())


def _active(case: str) -> str | None:
    if case in ("base", "mlm_base"):
        return None
    if case in STACKS:
        return STACKS[case]
    for batch in ("single_", "leftpad_", "one_row_", "short_", "nomask_", "mlm_"):
        if case.startswith(batch):
            return case.removeprefix(batch)
    raise AssertionError(f"unknown case {case!r}")


def _close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> float:
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
    err = (ours.float() - theirs).abs().max().item()
    assert err <= ATOL, f"{what}: max |error| {err:.2e} > {ATOL}"
    return err


def _combine(model, active: str | None) -> str | None:
    """The combine mode of the prompt that runs under ``active`` (None: no prompt runs)."""
    first = model.resolve_composition(active).leaves()[0] if active else None
    config = model.adapter_config(first) if first else None
    return getattr(config, "combine", None) if config is not None and config.architecture == "prompt_tuning" else None


def _reference_right(model_type: str, mask_row: torch.Tensor, combine: str) -> bool:
    """Whether AdapterHub 1.3.0's mask is right for this row of a padded batch with a prompt. Under SDPA (BERT,
    RoBERTa, XLM-R, DistilBERT) the prompt's query rows attend to padding, so only unpadded rows come out right,
    and none for DistilBERT (+1 on the prompt keys' scores in every row of a padded batch); ELECTRA's eager mask
    is right except for prefix_after_bos on a row whose first token is padding (the mask sits one token off)."""
    if model_type == "electra":
        return combine == "prefix" or bool(mask_row[0])
    return model_type != "distilbert" and bool(mask_row.all())


def _positions(length: int, combine: str, mask_row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the prompt and the real tokens of a row sit in the longer sequence."""
    prompt = torch.arange(length) + (0 if combine == "prefix" else 1)
    ext = torch.cat([torch.zeros(length, dtype=torch.bool), mask_row.bool()]) if combine == "prefix" else \
        torch.cat([mask_row[:1].bool(), torch.zeros(length, dtype=torch.bool), mask_row[1:].bool()])
    return prompt, ext.nonzero().flatten()


def _run(model, ids, mask, active, head, labels=None, **kwargs):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, active=active, head=head, labels=labels, **kwargs)
    return out


def _states(out, mlm: bool) -> torch.Tensor:
    return out.logits if mlm else out.last_hidden_state


def _check_row(model, model_type, out, batch, r, active, mlm, what) -> tuple[float, torch.Tensor]:
    """Row ``r`` of a padded batch against the same row in a batch of its own and alone without padding; returns
    the worst difference and the row alone's states (what the right answer is)."""
    ids, mask = batch["input_ids"][r:r + 1], batch["attention_mask"][r:r + 1]
    head = "mlm" if mlm else "cls_head"
    combine = _combine(model, active)
    own = _run(model, ids, mask, active, head)
    worst = _close(_states(out, mlm)[r], _states(own, mlm)[0], f"{what} row {r} vs its own batch")
    if not mlm:
        worst = max(worst, _close(out.logits[r], own.logits[0], f"{what} row {r} logits vs its own batch"))
    real = mask[0].bool()
    kwargs = {"position_ids": real.nonzero().flatten()[None]} if model_type in ABSOLUTE_POSITIONS else {}
    alone = _run(model, ids[:, real], torch.ones(1, int(real.sum()), dtype=torch.long), active, head, **kwargs)
    length = _states(out, mlm).shape[1] - ids.shape[1]
    prompt, tokens = _positions(length, combine, mask[0])
    prompt_alone, tokens_alone = _positions(length, combine, torch.ones(int(real.sum()), dtype=torch.long))
    mine, theirs = _states(out, mlm)[r], _states(alone, mlm)[0]
    worst = max(worst, _close(mine[prompt], theirs[prompt_alone], f"{what} row {r} prompt vs alone"),
                _close(mine[tokens], theirs[tokens_alone], f"{what} row {r} tokens vs alone"))
    if not mlm and (combine == "prefix" or bool(mask[0, 0])):  # else position 0, which the head reads, is padding
        worst = max(worst, _close(out.logits[r], alone.logits[0], f"{what} row {r} logits vs alone"))
    return worst, theirs[tokens_alone]


def _right_loss(alone_tokens: list[torch.Tensor], labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked-LM loss the rows give alone: each label on its own token's logits."""
    logits = torch.cat([t for t in alone_tokens])
    return torch.nn.functional.cross_entropy(logits, labels[mask.bool()], ignore_index=-100).reshape(1)


def _check_case(root: Path, model, tensors: dict, case: str, spec: dict, stats: dict) -> None:
    model_type, mlm = root.name.removeprefix("prompt_"), case.startswith("mlm_")
    active, batch = _active(case), fixture_inputs(tensors, spec["batch"])
    what = f"{root.name} {case}"
    out = _run(model, batch["input_ids"], batch.get("attention_mask"), active, "mlm" if mlm else "cls_head")
    loss = _run(model, batch["input_ids"], batch.get("attention_mask"), active, "mlm",
                labels=tensors["mlm_labels"]).loss.reshape(1) if mlm else None
    outputs = {"mlm_logits": out.logits, "mlm_loss": loss} if mlm else \
        {"last_hidden_state": out.last_hidden_state, "logits": out.logits}
    mask, combine = batch.get("attention_mask"), _combine(model, active)
    if combine is None or mask is None or bool(mask.all()):  # the reference is right: all of it, exactly
        for key, value in outputs.items():
            stats["reference"] = max(stats["reference"], _close(value, tensors[f"{case}.{key}"], f"{what} {key}"))
        return
    alone_tokens = []
    for r in range(mask.shape[0]):
        err, tokens = _check_row(model, model_type, out, batch, r, active, mlm, what)
        stats["alone"], right = max(stats["alone"], err), _reference_right(model_type, mask[r], combine)
        alone_tokens.append(tokens)
        for key, value in outputs.items():
            if key == "mlm_loss":
                continue
            diff = (value[r] - tensors[f"{case}.{key}"][r]).abs().max().item()
            assert (diff <= ATOL) == right, f"{what} {key} row {r}: {diff:.2e} from the reference, right={right}"
            stats["reference" if right else "reference_bug"] = max(stats["reference" if right else "reference_bug"],
                                                                    diff)
        nomask = f"nomask_{active}.{'logits' if mlm else 'last_hidden_state'}"
        if spec["batch"] == "default" and bool(mask[r].all()) and nomask in tensors and not mlm:
            stats["reference"] = max(stats["reference"], _close(out.last_hidden_state[r], tensors[nomask][r],
                                                                f"{what} row {r} vs the reference unmasked"))
    if mlm:
        stats["alone"] = max(stats["alone"], _close(loss, _right_loss(alone_tokens, tensors["mlm_labels"], mask),
                                                    f"{what} loss vs the rows alone"))


def _check_cases(root: Path, model, tensors: dict, meta: dict) -> dict[str, float]:
    stats = {"reference": 0.0, "alone": 0.0, "reference_bug": 0.0}
    for case, spec in meta["cases"].items():
        _check_case(root, model, tensors, case, spec, stats)
    return stats


def test_every_case_matches_the_reference(world):
    root, model, tensors, meta = world
    ERRORS[root.name] = _check_cases(root, model, tensors, meta)
    assert len(meta["cases"]) >= 20
    assert ERRORS[root.name]["reference_bug"] > 1e-3  # the fixtures hold the reference's padded-batch bugs


def test_every_case_matches_in_the_reference_order(world, monkeypatch):
    from adapter_cli import fastpaths

    monkeypatch.setattr(fastpaths, "ENABLED", False)  # ADAPT_REFERENCE_ORDER=1
    root, model, tensors, meta = world
    _check_cases(root, model, tensors, meta)


def test_initialisation_draws_the_reference_weights(world):
    """Seeded draws (also with scale 0.1) and a from_string prompt (the tokenizer beside the base model): the
    weights AdapterHub drew, bit for bit."""
    _, model, _, _ = world
    specs = {"pt_seed": "prompt_tuning[prompt_length=4,init_weights_seed=7]",
             "pt_scale": "prompt_tuning[prompt_length=5,init_weights_seed=3,random_uniform_scale=0.1]",
             "pt_str": "prompt_tuning[prompt_length=6,prompt_init=from_string,prompt_init_text='hello world prompt']"}
    for reference, spec in specs.items():
        name = model.add_adapter("drawn", spec, overwrite=True)
        ours, theirs = model.adapters[name].state_dict(), model.adapters[reference].state_dict()
        assert ours.keys() == theirs.keys() == {"prompt_embedding.weight"}
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), reference
    model.delete_adapter("drawn")


def test_compositions_the_reference_mishandles_are_refused(world):
    from adapter_cli.errors import CompositionError

    _, model, _, meta = world
    seen = meta["reference_behaviour"]
    assert seen["stack_seq_pt"] == "equals single_seq"  # the prompt ignored
    assert seen["stack_pt_pt3_bos"] == "equals single_pt"  # the second prompt ignored
    assert seen["stack_lora_pt3_bos"] == "equals single_lora"
    for trial in ("batch_split_pt_seq", "average_pt_seq", "parallel_pt_seq"):
        assert seen[trial].startswith("raised KeyError"), seen[trial]
    for spec in ("stack(seq,pt)", "stack(lora,pt3_bos)", "average(pt,seq)", "parallel(pt,seq)",
                 "batch_split(pt,seq,sizes=[2,2])", "stack(pt,seq,pt)"):
        with pytest.raises(CompositionError, match="runs alone or first in a stack"):
            model.resolve_composition(spec)
    with pytest.raises(CompositionError, match="holds 2 prompt-tuning adapters"):
        model.resolve_composition("stack(pt,pt3_bos)")
    with pytest.raises(CompositionError, match=r"batch_split\(...\) after prompt-tuning adapter"):
        model.resolve_composition("stack(pt,batch_split(seq,lora,sizes=[2,2]))")
    with pytest.raises(CompositionError, match="fuse works over bottleneck adapters only"):
        model.add_fusion(["pt", "seq"])


def _same_as(model, name: str, reference: str, tensors: dict, what: str) -> None:
    """Adapter ``name`` computes as ``reference`` does: the reference's outputs on the unpadded batch, ours on the
    padded one (where the reference's are wrong)."""
    with torch.no_grad():
        for batch in ("nomask", "default"):
            hidden = model(**fixture_inputs(tensors, batch), active=name, head=None).last_hidden_state
            expected = tensors[f"nomask_{reference}.last_hidden_state"] if batch == "nomask" else \
                model(**fixture_inputs(tensors, batch), active=reference, head=None).last_hidden_state
            _close(hidden, expected, f"{what} ({batch})")


def test_adapterhub_and_adapt_formats_round_trip(world, tmp_path):
    """Saved by us in AdapterHub's format (bin and safetensors) and in ours, loaded back: the same outputs and,
    for AdapterHub's, the reference's keys and config."""
    from safetensors.torch import load_file

    root, model, tensors, _ = world
    for fmt, safetensors in (("adapterhub", False), ("adapterhub", True), ("adapt", True)):
        out = tmp_path / f"{fmt}{safetensors}"
        model.save_adapter(out, "pt3_bos", format=fmt, safetensors=safetensors)
        name = model.load_adapter(out, name="again", with_head=False, overwrite=True)
        _same_as(model, name, "pt3_bos", tensors, f"{root.name} {fmt} round trip")
    for name in ("pt3_bos", "pt_str"):
        model.save_adapter(tmp_path / name, name, format="adapterhub")
        theirs = json.loads((root / "adapters" / name / "adapter_config.json").read_text())
        ours = json.loads((tmp_path / name / "adapter_config.json").read_text())
        assert ours["config"] == theirs["config"]
    mine = load_file(str(tmp_path / "adapterhubTrue" / "adapter.safetensors"))
    reference = torch.load(root / "adapters" / "pt3_bos" / "pytorch_adapter.bin", weights_only=True)
    assert set(mine) == set(reference) and all(torch.equal(mine[k], reference[k]) for k in mine)
    model.delete_adapter("again")


def test_safetensors_files_load_the_same(world):
    root, model, tensors, _ = world
    name = model.load_adapter(root / "adapters_safetensors" / "pt", name="pt_st", with_head=False)
    try:
        _same_as(model, name, "pt", tensors, f"{root.name} safetensors")
    finally:
        model.delete_adapter(name)


def test_parameter_counts_are_adapterhubs(world):
    _, model, _, meta = world
    for name, counted in meta["parameters"].items():
        config = model.adapter_config(name)
        assert sum(p.numel() for p in model.adapters[name].parameters()) == counted
        counts = config.parameter_count(model.hidden_size, model.num_layers, model.embedding_size)
        assert counts["parameters"] == counted


def test_worst_errors_are_reported():
    """Not a check: prints, per family, the worst absolute error against the reference where it is right, the worst
    row-vs-alone difference in padded batches, and how far off the reference is where it is wrong
    (docs/numerics.md)."""
    print({k: {what: f"{e:.1e}" for what, e in v.items()} for k, v in sorted(ERRORS.items())})
