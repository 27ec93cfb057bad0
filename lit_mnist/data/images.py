"""The user's own digit images, made to look like MNIST digits for prediction."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from lit_mnist.errors import LitMNISTError

log = logging.getLogger(__name__)


class ImageError(LitMNISTError):
    """An image that cannot be read as a digit: empty, too big, or not a PNG or JPEG."""


#: The PIL formats read; any other file in the folder is skipped with a warning.
IMAGE_FORMATS = ("PNG", "JPEG")
#: MNIST digits are scaled to fit a 20×20 box and centred by mass in the 28×28 image.
SIZE, BOX = 28, 20
#: The row and column (pixel index) of MNIST digits' centre of mass: the middle of the image, 14.
CENTRE = SIZE / 2
#: The largest image read: bytes of the file, and width × height pixels (checked before decoding).
MAX_BYTES, MAX_PIXELS = 5_000_000, 4000 * 4000
#: Pixels of at least this fraction of the darkest ink count towards the digit's bounding box.
INK_THRESHOLD = 0.1


def mnist_digit(image: Image.Image) -> np.ndarray:
    """One photo or drawing of a digit as an MNIST-like uint8 ``[28, 28]`` array.

    The image is turned upright by its EXIF orientation, laid on white where it is transparent
    and converted to grey. When its border is mostly light (a dark digit on paper) it is
    inverted, so the digit is light on dark as in MNIST. The border's median grey is taken as
    the background and subtracted, the ink is stretched to 0…255, and the digit's bounding box
    is scaled to fit 20×20 (keeping its aspect ratio) and placed so that its centre of mass is
    where MNIST's digits have theirs (``CENTRE``), as MNIST was made. A blank image gives all zeros.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 127:
        grey, border = 255 - grey, 255 - border
    ink = np.clip(grey - np.median(border), 0, None)
    out = np.zeros((SIZE, SIZE), dtype=np.uint8)
    if ink.max() <= 0:
        return out
    ink /= ink.max()
    rows, cols = np.nonzero(ink >= INK_THRESHOLD)
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = BOX / max(crop.shape)
    height, width = (max(1, round(n * scale)) for n in crop.shape)
    digit = Image.fromarray((crop * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(digit, dtype=np.float32)
    total = pixels.sum() or 1.0
    centre_row = (pixels.sum(axis=1) * np.arange(height)).sum() / total
    centre_col = (pixels.sum(axis=0) * np.arange(width)).sum() / total
    top = min(max(round(CENTRE - centre_row), 0), SIZE - height)
    left = min(max(round(CENTRE - centre_col), 0), SIZE - width)
    out[top : top + height, left : left + width] = pixels.astype(np.uint8)
    return out


def read_digit(data: bytes) -> np.ndarray:
    """A PNG or JPEG file's bytes as an MNIST-like uint8 ``[28, 28]`` digit (``mnist_digit``).

    The byte size and the pixel size in the header are checked before the image is decoded, so
    a decompression bomb (a small file of a huge image) is refused without using the memory.

    Args:
        data: the file's content.

    Raises:
        ImageError: the data is empty, over ``MAX_BYTES`` or ``MAX_PIXELS``, or not a readable PNG or JPEG.
    """
    if not data:
        raise ImageError("The image is empty.")
    if len(data) > MAX_BYTES:
        raise ImageError(f"The image is {len(data):,} bytes; the limit is {MAX_BYTES:,}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"The image is {width} × {height} pixels; the limit is {MAX_PIXELS:,} pixels."
                    )
                image.load()
                return mnist_digit(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"The image is too large to decode; the limit is {MAX_PIXELS:,} pixels.") from None
    except (OSError, ValueError, SyntaxError):
        raise ImageError("The data is not a readable PNG or JPEG image.") from None


def _read_image(path: Path) -> np.ndarray | None:
    """``read_digit`` of the file, or ``None`` if it cannot be read as one."""
    try:
        return read_digit(path.read_bytes())
    except ImageError:
        return None


def load_image_folder(folder: str | Path) -> tuple[torch.Tensor, list[str]]:
    """Every PNG and JPEG file in ``folder`` (not its subfolders) as uint8 ``[N, 28, 28]`` digits.

    Files are taken in name order and the names are returned alongside. Hidden files (``.name``)
    are ignored; other files that are empty, too large or not readable PNG/JPEG images are listed in one
    warning and skipped.

    Raises:
        LitMNISTError: ``folder`` is not a folder, or none of its files is a PNG or JPEG image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise LitMNISTError(f"predict_dir {root} is not a folder.")
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    digits, names, skipped = [], [], []
    for path in files:
        digit = _read_image(path)
        if digit is None:
            skipped.append(path.name)
        else:
            digits.append(digit)
            names.append(path.name)
    if not digits:
        found = f" (skipped {', '.join(skipped)})" if skipped else ""
        raise LitMNISTError(f"No PNG or JPEG image to predict in {root}{found}.")
    if skipped:
        log.warning(
            "Skipped %d file(s) in %s that are empty, too large or not PNG/JPEG images: %s",
            len(skipped),
            root,
            ", ".join(skipped),
        )
    return torch.from_numpy(np.stack(digits)), names
