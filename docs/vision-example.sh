#!/usr/bin/env bash
# Image classification with adapters on a vision transformer, end to end and offline (docs/vision.md).
#
# No pretrained ViT ships on PyPI, so this script builds a small one from a config (random weights: 4 layers,
# hidden 128, 64x64 images in 8x8 patches) with its image processor, and writes a toy image task: stripes/
# with pictures of horizontal, vertical and diagonal stripes in random colours, widths and phases (PNG and
# JPEG, of several sizes), a folder per label in train/ and val/. It then trains a Pfeiffer adapter and a
# LoRA with `adapt train`, scores them with `adapt infer --task`, answers single files and a folder with
# `adapt infer --json`, and runs both adapters at once under parallel(...). With a pretrained checkpoint the
# same commands take `--model google/vit-base-patch16-224-in21k` (and a task of your own images).
#
#   bash docs/vision-example.sh [WORK_DIR]      # default: ./vision-example (a few minutes on 2 CPU cores)
set -euo pipefail
ADAPT=${ADAPT:-adapt}
PY=${PYTHON:-python3}
WORK=${1:-vision-example}
mkdir -p "$WORK"
cd "$WORK"
export ADAPT_CACHE=${ADAPT_CACHE:-$PWD/cache}

"$PY" - <<'PYEOF'
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel, ViTImageProcessorPil

torch.manual_seed(0)
config = AutoConfig.for_model("vit", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                              intermediate_size=256, image_size=64, patch_size=8)
AutoModel.from_config(config).save_pretrained("vit-small")
ViTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained("vit-small")

rng = np.random.default_rng(0)
LABELS = ("horizontal", "vertical", "diagonal")


def stripes(label: str, height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    coordinate = {"horizontal": y, "vertical": x, "diagonal": x + y}[label]
    period = rng.integers(6, 16)
    on = ((coordinate + rng.integers(0, period)) % period) < period // 2
    colours = rng.integers(0, 256, (2, 3))
    picture = np.where(on[..., None], colours[0], colours[1]).astype(np.int16)
    picture += rng.integers(-30, 30, picture.shape)  # noise
    return np.clip(picture, 0, 255).astype(np.uint8)


for split, count in (("train", 120), ("val", 40)):
    for label in LABELS:
        folder = Path("stripes") / split / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            size = int(rng.integers(48, 96))
            Image.fromarray(stripes(label, size, size)).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
Path("stripes/task.yaml").write_text("name: stripes\nkind: image\nlabels: [horizontal, vertical, diagonal]\n"
                                     "metrics: [accuracy, macro_f1]\nlocal: {train: train, eval: val}\n")
print("wrote vit-small/ and stripes/ (360 training and 120 dev images)")
PYEOF

# Train a Pfeiffer adapter (and its image-classification head) on the frozen ViT, then a LoRA.
time "$ADAPT" train --task stripes/task.yaml --model vit-small --config pfeiffer --name stripes_pf \
    --run-dir runs/stripes-pf epochs=8 learning_rate=5e-3 batch_size=16
time "$ADAPT" train --task stripes/task.yaml --model vit-small --config lora --name stripes_lora \
    --run-dir runs/stripes-lora epochs=8 learning_rate=3e-3 batch_size=16

# Score each on the dev folders, then classify single files and a whole folder.
"$ADAPT" infer -m vit-small -a stripes_pf --task stripes/task.yaml --metrics pf-metrics.json > /dev/null
"$ADAPT" infer -m vit-small -a stripes_lora --task stripes/task.yaml --metrics lora-metrics.json > /dev/null
echo "dev: Pfeiffer $(cat pf-metrics.json | tr -d '\n ')   LoRA $(cat lora-metrics.json | tr -d '\n ')"
"$ADAPT" infer -m vit-small -a stripes_pf --json stripes/val/vertical/0.jpg stripes/val/diagonal/1.png
"$ADAPT" infer -m vit-small -a stripes_pf stripes/val/horizontal --output horizontal.csv
echo "stripes/val/horizontal: $(tail -n +2 horizontal.csv | grep -c ',horizontal,' || true) of $(tail -n +2 horizontal.csv | wc -l) answered horizontal"

# Both adapters in one forward pass: one answer per member.
"$ADAPT" infer -m vit-small -a stripes_pf -a stripes_lora --active 'parallel(stripes_pf,stripes_lora)' \
    --json stripes/val/diagonal/2.jpg
