"""Images for vision encoders (ViT): files and folders of them, decoded and checked, and turned into the
model's ``pixel_values`` by the model's own image processor.

The processor is transformers' ``AutoImageProcessor`` from the model directory (its
``preprocessor_config.json``: resizing, cropping, rescaling and normalisation as the checkpoint was trained),
always with the PIL backend: transformers' torchvision backend resizes differently, and which one a machine
has must not change the numbers. A directory without that file gets ViT's defaults: a resize to the
model's ``image_size`` and a mean and standard deviation of 0.5 per channel.

Every file in an image folder is taken for an image (hidden ones, ``.name`` and ``__MACOSX``, left out): a
file that does not decode is one line naming it, never skipped in silence, so no picture of a label can go
missing unnoticed. Pictures are decoded as a viewer shows them: turned upright by their EXIF orientation,
16-bit and floating-point pixels scaled to 8 bits (not clipped), transparency dropped.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

# The formats named in messages (Pillow decodes more; any file is tried).
IMAGE_FORMATS = "PNG, JPEG, BMP, GIF, WebP, TIFF or PPM"
# Decoded, preprocessed images kept in memory per split for the epochs after the first; beyond this they
# are decoded again each time they are drawn.
CACHE_BYTES = 1024 ** 3
# Larger images are refused before they are decoded (Pillow's own limit against decompression bombs; below
# it Pillow only warns, which would reach the terminal as a raw Python warning).
MAX_PIXELS = 178_956_970
# Images decoded at a time: each is resized right after, so a batch of large photos never sits in memory whole.
DECODE_CHUNK = 8


def load_image_processor(path: str, config: Any) -> Any:
    """The model's own image processor (PIL backend), or ViT's defaults for its image size; checked against
    the model: what it makes must be the images the model takes."""
    from transformers import AutoImageProcessor

    local = Path(path).is_dir()
    if not local or (Path(path) / "preprocessor_config.json").is_file():
        try:
            processor = AutoImageProcessor.from_pretrained(path, backend="pil")
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            where = Path(path) / "preprocessor_config.json" if local else path
            raise UsageError(f"cannot load the image processor of {where}: {str(exc).splitlines()[0][:160]}; "
                             "fix or remove that file (without it the model's image_size and mean/std 0.5 "
                             "are used)") from None
    else:
        from transformers import ViTImageProcessorPil

        size = int(getattr(config, "image_size", 224))
        processor = ViTImageProcessorPil(size={"height": size, "width": size})
    _check_fits(processor, config, path)
    return processor


def _check_fits(processor: Any, config: Any, path: str) -> None:
    """What the processor makes of a picture must be what the model reads: its size and channels."""
    from PIL import Image

    shape = tuple(pixel_values(processor, [Image.new("RGB", (37, 23))]).shape[1:])
    size = getattr(config, "image_size", None)
    channels = int(getattr(config, "num_channels", 3))
    want = (channels, *(tuple(size) if isinstance(size, (list, tuple)) else (size, size)))
    if size is not None and shape != want:
        raise UsageError(f"the image processor of {path} makes {shape[0]}-channel {shape[1]}x{shape[2]} images but "
                         f"the model takes {want[0]}-channel {want[1]}x{want[2]} ones; fix its "
                         "preprocessor_config.json (size, crop_size) or the model's image_size")


def open_image(source: Any, where: str = "") -> Any:
    """An upright RGB ``PIL.Image`` from a path, the bytes of a file, or an image already decoded (as the Hub's
    datasets give them), fully decoded, so that a broken file is found here and named, not mid-training."""
    from PIL import Image, ImageOps

    if isinstance(source, Image.Image):
        return _rgb(ImageOps.exif_transpose(source), where or "an image")
    if isinstance(source, (bytes, bytearray)):
        import io

        return _decode(io.BytesIO(source), where or "an image's bytes")
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"{where + ': ' if where else ''}no image file {path}")
    return _decode(path, str(path) if not where or where == str(path) else f"{where}: {path}")


def _decode(source: Any, name: str) -> Any:
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise UsageError(f"{name} has {image.width}x{image.height} pixels, more than adapt decodes "
                                     f"({MAX_PIXELS}); shrink it first")
                image.load()
                return _rgb(ImageOps.exif_transpose(image), name)
    except UsageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UsageError(f"cannot decode {name} as an image ({str(exc).splitlines()[0][:120]}); give {IMAGE_FORMATS} "
                         "files, and keep other files out of image folders") from None


def _rgb(image: Any, name: str) -> Any:
    """8-bit RGB. ``convert`` would clip 16-bit pixels to 255 and truncate floats to 0: those are scaled."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        import numpy as np
        from PIL import Image

        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" else 65535.0
        if values.size and (values.min() < 0 or values.max() > top):
            raise UsageError(f"{name} holds {image.mode} pixels outside 0..{top:g}; give 8- or 16-bit images")
        image = Image.fromarray(np.rint(values * (255.0 / top)).astype(np.uint8), mode="L")
    return image.convert("RGB")


def pixel_values(processor: Any, images: list[Any]) -> Any:
    """``pixel_values`` [N, channels, height, width] (float32) of decoded images."""
    return processor(images=images, return_tensors="pt")["pixel_values"]


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in path.relative_to(root).parts)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p, folder))


def image_files(path: str | Path) -> list[Path]:
    """``path`` itself (a file), or every file under a folder, recursively, in sorted order (hidden ones left out)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"no image file or folder {path}")
    found = _files(path)
    if not found:
        raise UsageError(f"folder {path} holds no files")
    return found


def read_image_folder(root: Path, inside: Path | None = None) -> list[tuple[Path, str]]:
    """A split laid out as ``root/<label>/<image>``: every image and the name of the folder it is in. With
    ``inside``, an image whose real path leads out of that folder (a link) is refused."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder; an image task's split is a folder with a sub-folder of images "
                         "per label")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p, root))
    if not folders:
        raise UsageError(f"{root} has no label folders: put each label's images in a sub-folder named after it "
                         f"({root}/<label>/<image>)")
    rows = []
    for folder in folders:
        images = _files(folder)
        if not images:
            raise UsageError(f"label folder {folder} holds no images; add its pictures or remove the folder")
        for image in images:
            if inside is not None and not image.resolve().is_relative_to(inside.resolve()):
                raise UsageError(f"{image} leads outside {inside} (a link); copy the image into the task's folder, "
                                 "or give the folder that holds it as `data_dir`")
            rows.append((image, folder.name))
    return rows


@dataclass
class Images:
    """A split's images as the model reads them: each decoded and preprocessed once when the split is made
    (``check``) and kept in memory up to ``CACHE_BYTES``, decoded again past it."""

    processor: Any
    sources: list[Any]
    _cache: dict[int, Any] = field(default_factory=dict)
    _bytes: int = 0

    def check(self, where: list[str] | None = None) -> None:
        """Decode every image once (a broken one is named now, with ``where`` its origin) and keep what fits."""
        for start in range(0, len(self.sources), DECODE_CHUNK):
            chunk = list(range(start, min(start + DECODE_CHUNK, len(self.sources))))
            for i, tensor in zip(chunk, self._process(chunk, where)):
                size = tensor.numel() * tensor.element_size()
                if self._bytes + size <= CACHE_BYTES:
                    self._cache[i] = tensor
                    self._bytes += size

    def pixels(self, indices: list[int]) -> Any:
        import torch

        missing = [i for i in indices if i not in self._cache]
        fresh = dict(zip(missing, self._process(missing))) if missing else {}
        return torch.stack([self._cache[i] if i in self._cache else fresh[i] for i in indices])

    def _process(self, indices: list[int], where: list[str] | None = None) -> Any:
        import torch

        parts = [pixel_values(self.processor, [open_image(self.sources[i], where[i] if where else "")
                                               for i in indices[start:start + DECODE_CHUNK]])
                 for start in range(0, len(indices), DECODE_CHUNK)]
        return torch.cat(parts) if parts else []
