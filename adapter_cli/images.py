"""Images for vision encoders (ViT): files and folders of them, decoded and checked, and turned into the
model's ``pixel_values`` by the model's own image processor.

The processor is transformers' ``AutoImageProcessor`` from the model directory (its
``preprocessor_config.json``: resizing, cropping, rescaling and normalisation as the checkpoint was trained),
always with the PIL backend: transformers' torchvision backend resizes differently, and which one a machine
has must not change the numbers. A directory without that file gets ViT's defaults: a resize to the
model's ``image_size`` and a mean and standard deviation of 0.5 per channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

# What a folder of images is searched for (by suffix, case-insensitive); other files are left alone.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
# Decoded, preprocessed images kept in memory for the epochs after the first; beyond this they are decoded
# again each time they are drawn.
CACHE_BYTES = 1024 ** 3
# Larger images are refused before they are decoded (PIL's own guard against decompression bombs is a
# warning up to twice its limit).
MAX_PIXELS = 178_956_970


def load_image_processor(path: str, config: Any) -> Any:
    """The model's own image processor (PIL backend), or ViT's defaults for its image size."""
    from transformers import AutoImageProcessor

    if (Path(path) / "preprocessor_config.json").is_file() or not Path(path).is_dir():
        try:
            return AutoImageProcessor.from_pretrained(path, backend="pil")
        except (OSError, ValueError, TypeError) as exc:
            if not Path(path).is_dir():
                raise UsageError(f"no image processor for {path}: {str(exc).splitlines()[0][:160]}") from None
    from transformers import ViTImageProcessorPil

    size = int(getattr(config, "image_size", 224))
    return ViTImageProcessorPil(size={"height": size, "width": size})


def open_image(source: Any, where: str = "") -> Any:
    """An RGB ``PIL.Image`` from a path (or an image already decoded, as the Hub's datasets give them), fully
    decoded, so that a broken file is found here and named, not in the middle of training."""
    from PIL import Image

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    path = Path(source)
    what = f"{where}: " if where else ""
    if not path.is_file():
        raise UsageError(f"{what}no image file {path}")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise UsageError(f"{what}image {path} has {image.width}x{image.height} pixels, more than adapt "
                                 f"decodes ({MAX_PIXELS}); shrink it first")
            image.load()
            return image.convert("RGB")
    except UsageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UsageError(f"{what}cannot decode {path} as an image ({str(exc).splitlines()[0][:120]}); "
                         "give PNG, JPEG, BMP, GIF, WebP or TIFF files") from None


def pixel_values(processor: Any, images: list[Any]) -> Any:
    """``pixel_values`` [N, channels, height, width] (float32) of decoded images."""
    return processor(images=images, return_tensors="pt")["pixel_values"]


def image_files(path: str | Path) -> list[Path]:
    """``path`` itself (a file), or every image file under a folder, recursively, in sorted order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"no image file or folder {path}")
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise UsageError(f"folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return found


def read_image_folder(root: Path) -> list[tuple[Path, str]]:
    """A split laid out as ``root/<label>/<image>``: every image and the name of the folder it is in."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder; an image task's split is a folder with a sub-folder of images "
                         "per label")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise UsageError(f"{root} has no label folders: put each label's images in a sub-folder named after it "
                         f"({root}/<label>/<image>)")
    rows = []
    for folder in folders:
        rows += [(image, folder.name) for image in sorted(folder.rglob("*"))
                 if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES]
    return rows


@dataclass
class Images:
    """A split's images as the model reads them: decoded and preprocessed once, each checked when the split
    is made (``check``), then kept in memory up to ``CACHE_BYTES`` and decoded again past it."""

    processor: Any
    sources: list[Any]
    _cache: dict[int, Any] = field(default_factory=dict)
    _bytes: int = 0

    def check(self, where: list[str] | None = None) -> None:
        """Decode every image once (a broken file is named now, with ``where`` its origin) and keep what fits."""
        for start in range(0, len(self.sources), 32):
            chunk = range(start, min(start + 32, len(self.sources)))
            self._fill(chunk, where)

    def pixels(self, indices: list[int]) -> Any:
        import torch

        missing = [i for i in indices if i not in self._cache]
        fresh = dict(zip(missing, self._process(missing))) if missing else {}
        return torch.stack([self._cache[i] if i in self._cache else fresh[i] for i in indices])

    def _fill(self, indices: range, where: list[str] | None) -> None:
        images = [open_image(self.sources[i], where[i] if where else "") for i in indices]
        for i, tensor in zip(indices, pixel_values(self.processor, images)):
            size = tensor.numel() * tensor.element_size()
            if self._bytes + size <= CACHE_BYTES:
                self._cache[i] = tensor
                self._bytes += size

    def _process(self, indices: list[int]) -> Any:
        return pixel_values(self.processor, [open_image(self.sources[i]) for i in indices])
