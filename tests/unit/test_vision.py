"""The vision transformer (ViT): bit-identity without adapters, both sites on its one shared Dropout, the methods
and heads it takes, AdapterHub's image-classification head and LoRA names (transformers 5 renamed ViT's
modules), images from files and folders, and the image task kind. The numbers against AdapterHub itself are in
tests/e2e/test_adapterhub_fixtures.py (tests/fixtures/adapterhub_vit)."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

from adapter_cli.errors import UnsupportedModel, UsageError
from conftest import FIXTURES, randomise, tiny_model, tiny_pixels, tiny_vit, tiny_vit_config, write_image_task

VIT_FIXTURE = FIXTURES / "adapterhub_vit"


def plain_vit(seed: int = 0):
    from transformers import AutoModel

    torch.manual_seed(seed)
    return AutoModel.from_config(tiny_vit_config()).eval()


def test_no_active_adapter_is_bit_identical_to_transformers() -> None:
    plain, model = plain_vit(), tiny_vit()
    pixels = tiny_pixels()
    with torch.no_grad():
        want = plain(pixel_values=pixels).last_hidden_state
        fresh = model(pixel_values=pixels).last_hidden_state
        model.add_adapter("a", "houlsby")
        randomise(model.adapters["a"])
        inactive = model(pixel_values=pixels).last_hidden_state
        active = model(pixel_values=pixels, active="a").last_hidden_state
    assert torch.equal(fresh, want) and torch.equal(inactive, want)
    assert (active - want).abs().max() > 1e-2


def _bottleneck(w: dict[str, torch.Tensor], a: torch.Tensor) -> torch.Tensor:
    return F.linear(F.relu(F.linear(a, w["down.weight"], w["down.bias"])), w["up.weight"], w["up.bias"])


@pytest.mark.parametrize("mh", [True, False], ids=["both-sites", "output-site"])
def test_each_site_acts_on_its_own_call_of_the_shared_dropout(mh) -> None:
    """transformers 5's ViTLayer calls one Dropout after attention and again after the MLP. A hand reference
    with hooks of this test's own (on each sub-layer's output, the residual from its norm's input) must equal
    the stitched model: a site that acted on the other call would be off by O(1)."""
    model = tiny_vit()
    model.add_adapter("a", "pfeiffer", {"mh_adapter": mh, "leave_out": [0]})
    randomise(model.adapters["a"])
    state = model.adapters["a"].state_dict()
    plain = plain_vit()
    layer = plain.layers[1]
    residual: dict[str, torch.Tensor] = {}
    sites = {"output_adapter": ("mlp", "layernorm_after")}
    if mh:
        sites["mh_adapter"] = ("attention", "layernorm_before")
    for location, (sub, norm) in sites.items():
        w = {k[len(f"{location}.1."):]: v for k, v in state.items() if k.startswith(f"{location}.1.")}

        def keep(_m, args, location=location):
            residual[location] = args[0]

        def replace(_m, _args, output, location=location, w=w):
            h = output[0] if isinstance(output, tuple) else output
            new = _bottleneck(w, h + residual.pop(location)) + h  # AdapterHub's up(h + x) + h, then the layer adds x
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

        layer.get_submodule(norm).register_forward_pre_hook(keep)
        layer.get_submodule(sub).register_forward_hook(replace)
    pixels = tiny_pixels()
    with torch.no_grad():
        want = plain(pixel_values=pixels).last_hidden_state
        got = model(pixel_values=pixels, active="a").last_hidden_state
    assert torch.equal(got, want), (got - want).abs().max()


@pytest.mark.parametrize("preset", ["pfeiffer+inv", "seq_bn_inv"])
def test_methods_not_stitched_into_vit_are_one_line(preset) -> None:
    """Invertible adapters: AdapterHub refuses them on ViT too (an image has no word embeddings to invert)."""
    model = tiny_vit()
    with pytest.raises(UnsupportedModel) as err:
        model.add_adapter("a", preset)
    message = str(err.value)
    assert "bottleneck, lora, prefix tuning, prompt tuning and reft adapters into ViT models" in message
    assert "\n" not in message
    assert not model.adapters and not model._sites and not model._linear_sites


def test_a_prompt_from_words_is_refused_on_images() -> None:
    with pytest.raises(UsageError, match="which a vision model has none of; use prompt_init: random_uniform"):
        tiny_vit().add_adapter("p", "prompt_tuning", {"prompt_init": "from_string", "prompt_init_text": "hi"})


@pytest.mark.parametrize("preset", ["compacter", "lora", "ia3", "dora", "prefix_tuning", "prefix_tuning_flat", "mam",
                                    "unipelt", "prompt_tuning", "loreft", "noreft"])
def test_bottleneck_variants_and_the_lora_family_run_on_vit(preset) -> None:
    """Compacter is a bottleneck adapter with PHM layers, which AdapterHub places wherever it places one."""
    model = tiny_vit()
    model.add_adapter("a", preset, {"phm_dim": 2, "reduction_factor": 8} if preset == "compacter" else {})
    if not preset.endswith("reft"):  # a ReFT's fresh weights already edit; redrawn, its orthogonal map would be 0
        randomise(model.adapters["a"])
    pixels = tiny_pixels()
    with torch.no_grad():
        base = model(pixel_values=pixels).last_hidden_state
        got = model(pixel_values=pixels, active="a").last_hidden_state
    if preset == "prompt_tuning":  # the prompt's positions come first, as in AdapterHub
        assert got.shape[1] == base.shape[1] + model.adapters["a"].prompt_length
        got = got[:, -base.shape[1]:]
    assert (got - base).abs().max() > 1e-3


@pytest.mark.parametrize("head_type, kw", [("tagging", {"num_labels": 3}), ("question_answering", {"num_labels": 2}),
                                            ("multiple_choice", {"num_choices": 2, "num_labels": 1})])
def test_text_heads_are_refused_on_vit(head_type, kw) -> None:
    with pytest.raises(UsageError, match="ViT models cannot carry"):
        tiny_vit().add_head("h", head_type, **kw)


def test_wrong_inputs_for_the_family_are_one_line() -> None:
    with pytest.raises(UsageError, match="read images"):
        tiny_vit()(input_ids=torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(UsageError, match="read token ids"):
        tiny_model()(pixel_values=tiny_pixels())


def test_parallel_answers_as_each_member_alone() -> None:
    model = tiny_vit()
    for name, seed in (("a", 3), ("b", 4)):
        model.add_adapter(name, "pfeiffer")
        model.add_head(name, "classification", num_labels=3, layers=1)
        randomise(model.adapters[name], seed=seed)
        randomise(model.heads[name], seed=seed + 10)
    pixels = tiny_pixels()
    with torch.no_grad():
        both = model(pixel_values=pixels, active="parallel(a,b)")
        alone = [model(pixel_values=pixels, active=n).logits for n in ("a", "b")]
    for branch, want in zip(both.branches, alone):
        assert torch.allclose(branch.logits, want, atol=1e-6)


# ---------------------------------------------------------------------- AdapterHub's format


@pytest.mark.parametrize("head", ["cls", "tags", "score"])
def test_image_classification_heads_round_trip_in_adapterhub_format(tmp_path, head) -> None:
    """Read as classification / multi-label / regression heads, written back as AdapterHub's
    image_classification head with the same config and weight names."""
    from adapter_cli import AdapterModel

    model = AdapterModel.from_pretrained(VIT_FIXTURE / "base")
    name = model.load_head(VIT_FIXTURE / "heads" / head)
    kind = {"cls": "classification", "tags": "multilabel_classification", "score": "regression"}[head]
    assert model.heads[name].config.head_type == kind
    model.save_head(tmp_path / head, name, format="adapterhub", safetensors=True)
    ours = json.loads((tmp_path / head / "head_config.json").read_text())["config"]
    theirs = json.loads((VIT_FIXTURE / "heads" / head / "head_config.json").read_text())["config"]
    assert ours == theirs
    from safetensors.torch import load_file

    saved = next((tmp_path / head).glob("*.safetensors"))
    assert set(load_file(str(saved))) == set(load_file(str(VIT_FIXTURE / "heads" / head / "model_head.safetensors")))


def _saved_weights(directory) -> dict:
    from safetensors.torch import load_file

    found = next(directory.glob("*.safetensors"), None)
    return load_file(str(found)) if found else torch.load(next(directory.glob("*.bin")), weights_only=True)


@pytest.mark.parametrize("adapter", ["lora", "pf", "hb", "prefix", "prefix_flat", "unipelt", "prompt"])
def test_adapters_round_trip_under_adapterhub_names(tmp_path, adapter) -> None:
    """AdapterHub 1.3.0 names ViT's weights after transformers 4's modules (encoder.layer.N.attention.attention.
    query); adapt's modules are transformers 5's (layers.N.attention.q_proj). Written back, the names are
    AdapterHub's again."""
    from adapter_cli import AdapterModel

    model = AdapterModel.from_pretrained(VIT_FIXTURE / "base")
    name = model.load_adapter(VIT_FIXTURE / "adapters" / adapter, with_head=False)
    model.save_adapter(tmp_path / adapter, name, format="adapterhub", with_head=False)
    ours, theirs = _saved_weights(tmp_path / adapter), _saved_weights(VIT_FIXTURE / "adapters" / adapter)
    assert set(ours) == set(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key])


# ---------------------------------------------------------------------- images and the image task


def test_images_decode_resize_and_name_what_is_broken(tmp_path) -> None:
    from adapter_cli.images import Images, image_files, load_image_processor, open_image, pixel_values

    task = write_image_task(tmp_path / "toy", n_train=2, n_eval=1)
    files = image_files(task.parent / "train")
    assert files == sorted(files) and len(files) == 6 and {f.suffix for f in files} == {".png", ".jpg"}
    (task.parent / "train" / "red" / ".DS_Store").write_bytes(b"\0")
    (task.parent / "train" / "red" / ".thumbs").mkdir()
    (task.parent / "train" / "red" / ".thumbs" / "0.jpg").write_bytes(b"\0")
    assert image_files(task.parent / "train") == files  # hidden files and folders are not pictures
    processor = load_image_processor(str(tmp_path), tiny_vit_config())  # no preprocessor_config.json: defaults
    images = Images(processor, files)
    images.check()
    direct = pixel_values(processor, [open_image(f) for f in files[:2]])
    assert direct.shape == (2, 3, 32, 32)
    assert torch.equal(images.pixels([0, 1]), direct)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UsageError, match="cannot decode .*bad.png"):
        Images(processor, [files[0], tmp_path / "bad.png"]).check(["a", "train/red/bad.png"])
    with pytest.raises(UsageError, match="no image file"):
        open_image(tmp_path / "missing.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no files"):
        image_files(tmp_path / "empty")


def _png16(path, value: int) -> None:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((6, 5), value, dtype=np.uint16)).save(path)


def test_pixels_are_read_as_a_viewer_shows_them(tmp_path) -> None:
    """16-bit and float pixels are scaled to 8 bits, not clipped or truncated; EXIF orientation is applied."""
    import numpy as np
    from PIL import Image

    from adapter_cli.images import open_image

    _png16(tmp_path / "dim.png", 2000)
    _png16(tmp_path / "bright.png", 65000)
    assert Image.open(tmp_path / "dim.png").mode.startswith("I")
    assert open_image(tmp_path / "dim.png").getpixel((0, 0)) == (8, 8, 8)  # 2000 / 65535 * 255
    assert open_image(tmp_path / "bright.png").getpixel((0, 0)) == (253, 253, 253)
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), mode="F").save(tmp_path / "half.tiff")
    assert open_image(tmp_path / "half.tiff").getpixel((0, 0)) == (128, 128, 128)
    Image.fromarray(np.full((4, 4), 7.0, dtype=np.float32), mode="F").save(tmp_path / "hot.tiff")
    with pytest.raises(UsageError, match="hot.tiff holds F pixels outside 0..1"):
        open_image(tmp_path / "hot.tiff")
    tall = Image.new("RGB", (40, 20))
    exif = tall.getexif()
    exif[0x0112] = 6  # rotated: shown 90 degrees clockwise
    tall.save(tmp_path / "rotated.jpg", exif=exif)
    assert open_image(tmp_path / "rotated.jpg").size == (20, 40)


def test_image_processor_must_load_and_fit_the_model(tmp_path) -> None:
    from transformers import ViTImageProcessorPil

    from adapter_cli.images import load_image_processor

    config = tiny_vit_config()
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    assert load_image_processor(str(tmp_path), config).size == {"height": 32, "width": 32}
    ViTImageProcessorPil(size={"height": 48, "width": 48}).save_pretrained(tmp_path)
    with pytest.raises(UsageError, match="makes 3-channel 48x48 images but the model takes 3-channel 32x32"):
        load_image_processor(str(tmp_path), config)
    (tmp_path / "preprocessor_config.json").write_text('{"image_processor_type": "ViTImage')
    with pytest.raises(UsageError, match="cannot load the image processor of .*preprocessor_config.json"):
        load_image_processor(str(tmp_path), config)


def test_label_folders_hold_images_only(tmp_path) -> None:
    from adapter_cli.images import read_image_folder

    task = write_image_task(tmp_path / "toy", n_train=2, n_eval=1)
    train = task.parent / "train"
    (train / "__MACOSX").mkdir()
    (train / "__MACOSX" / "x.png").write_bytes(b"")
    (train / "red" / "._0.jpg").write_bytes(b"AppleDouble")
    assert len(read_image_folder(train)) == 6
    (train / "red" / "notes.heic").write_bytes(b"\0\0")
    rows = read_image_folder(train)  # every other file is taken for a picture: decoding it names it
    from adapter_cli.images import Images, load_image_processor

    with pytest.raises(UsageError, match="cannot decode .*notes.heic as an image"):
        Images(load_image_processor(str(tmp_path), tiny_vit_config()), [p for p, _ in rows]).check()
    (train / "purple").mkdir()
    with pytest.raises(UsageError, match="label folder .*purple holds no images"):
        read_image_folder(train)


def test_an_image_linked_from_outside_the_task_folder_is_refused(tmp_path) -> None:
    from adapter_cli.tasks import get_task
    from adapter_cli.tasks.loading import load_split

    task = write_image_task(tmp_path / "toy", n_train=2, n_eval=1)
    outside = tmp_path / "secret.png"
    outside.write_bytes((task.parent / "train" / "red" / "1.png").read_bytes())
    (task.parent / "train" / "red" / "link.png").symlink_to(outside)
    with pytest.raises(UsageError, match="link.png leads outside"):
        load_split(get_task(str(task)), "train")


@pytest.mark.parametrize("metrics, message", [
    ("[f1]", "f1 is the F1 of the second label against the first, for two labels; with 3 use macro_f1"),
    ("[accuracy, pearson]", "pearson correlates scores, for regression tasks"),
])
def test_metrics_that_do_not_fit_a_classification_task(tmp_path, metrics, message) -> None:
    from adapter_cli.tasks import get_task

    path = tmp_path / "t.yaml"
    path.write_text(f"name: t\nkind: image\nlabels: [a, b, c]\nmetrics: {metrics}\nlocal: {{train: tr, eval: ev}}\n")
    with pytest.raises(UsageError, match=re.escape(message)):
        get_task(str(path))


def test_image_subsets_keep_each_label_share(tmp_path) -> None:
    from adapter_cli.tasks import get_task
    from adapter_cli.training.data import load_examples

    spec = get_task(str(write_image_task(tmp_path / "toy", n_train=10, n_eval=2)))
    train, _, record = load_examples(spec, None, 1, 9, None)
    assert record["train"]["strategy"] == "stratified"
    assert sorted(e.label for e in train) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_image_task_reads_label_folders(tmp_path) -> None:
    from adapter_cli.tasks import get_task
    from adapter_cli.tasks.loading import load_split

    spec = get_task(str(write_image_task(tmp_path / "toy", n_train=2, n_eval=1)))
    assert spec.kind == "image" and spec.head_type == "classification" and spec.num_labels == 3
    examples = load_split(spec, "train")
    assert [e.label for e in examples] == [2, 2, 1, 1, 0, 0]  # folders sorted by name: blue, green, red
    assert all(e.image.parent.name == spec.labels[e.label] for e in examples)
    (tmp_path / "toy" / "train" / "purple").mkdir()
    (tmp_path / "toy" / "train" / "purple" / "x.png").write_bytes(b"")
    with pytest.raises(UsageError, match="folder 'purple' is not a label of task colours"):
        load_split(spec, "train")


@pytest.mark.parametrize("local, message", [
    ("{train: train.csv, eval: dev.csv, format: csv}", "not csv files"),
    ("{file: all, split_column: s, splits: {train: a, eval: b}}", "leave out file"),
    ("{train: train}", "no eval"),
])
def test_image_task_yaml_mistakes_are_one_line(tmp_path, local, message) -> None:
    from adapter_cli.tasks import get_task

    path = tmp_path / "t.yaml"
    path.write_text(f"name: t\nkind: image\nlabels: [a, b]\nmetrics: [accuracy]\nlocal: {local}\n")
    with pytest.raises(UsageError, match=message):
        get_task(str(path))


def test_folders_format_is_only_for_image_tasks(tmp_path) -> None:
    from adapter_cli.tasks import get_task

    path = tmp_path / "t.yaml"
    path.write_text("name: t\nkind: single\nlabels: [a, b]\nmetrics: [accuracy]\ncolumns: {text: t, label: l}\n"
                    "local: {train: tr, eval: ev, format: folders}\n")
    with pytest.raises(UsageError, match="folders is for image tasks"):
        get_task(str(path))


def test_hub_rows_carry_decoded_images(tmp_path) -> None:
    """A Hub dataset's image column holds decoded images (datasets' Image feature): they go through unchanged,
    in training (Images) and in scoring (inference.Row.image)."""
    import numpy as np
    from PIL import Image

    from adapter_cli.images import Images, load_image_processor
    from adapter_cli.tasks import task_from_dict
    from adapter_cli.tasks.loading import _example

    spec = task_from_dict({"name": "hubby", "kind": "image", "labels": ["a", "b"], "metrics": ["accuracy"],
                           "hub": {"path": "x/y", "train": "train", "eval": "test"},
                           "columns": {"image": "img", "label": "label"}}, "t.yaml")
    picture = Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8))
    example = _example(spec, {"img": picture, "label": 1}, dict(spec.columns), "x/y split test", 3)
    assert example.label == 1 and example.image is picture and example.texts == ("x/y split test row 3",)
    import io

    encoded = io.BytesIO()
    picture.save(encoded, format="PNG")
    undecoded = _example(spec, {"img": {"bytes": encoded.getvalue(), "path": None}, "label": 0},
                         dict(spec.columns), "x/y split test", 4)
    images = Images(load_image_processor(str(tmp_path), tiny_vit_config()), [example.image, undecoded.image])
    images.check()
    assert images.pixels([0, 1]).shape == (2, 3, 32, 32)
    assert torch.equal(images.pixels([0]), images.pixels([1]))
    with pytest.raises(UsageError, match="cannot decode an image's bytes"):
        Images(images.processor, [b"junk"]).check()
