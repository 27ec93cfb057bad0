"""Random distortions of training digits: whole uint8 batches, on the batch's device, reproducibly.

Each digit of a batch draws its own stroke width, rotation and shear and, where their bounds are
set, its blur, zoom, shift and elastic warp: the stroke width is a 3 × 3 grey-scale dilation or
erosion, the blur a Gaussian per digit (one grouped convolution), the geometry one
``torch.nn.functional.grid_sample`` call for the whole batch. The random numbers come from a
generator seeded with ``(seed, epoch, batch, process)``, so a batch is distorted the same way
whenever it is seen again (a resumed run, another device), and the global random state that dropout
draws from is never touched. Why not torchvision's or kornia's transforms, and what this costs:
docs/benchmarks.md, "Augmentation's cost".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lit_mnist.errors import LitMNISTError


@dataclass(frozen=True)
class Augmentation:
    """How each training digit is distorted; every bound is drawn uniformly, digit by digit.

    Zoom and shift are off by default: every path that feeds a model a digit (``predict_dir``,
    ``serve``, the draw page) scales it into MNIST's 20 × 20 box and centres it by mass, as MNIST's
    own digits are, so a zoomed or shifted training digit looks like no digit a model is given;
    they cost the models accuracy on handwriting from elsewhere (docs/benchmarks.md, "Digits from
    elsewhere"). They are there for models fed digits prepared some other way.

    Args:
        rotation: Largest rotation, in degrees either way.
        scale: Smallest and largest zoom factor; ``(1, 1)``: no zoom.
        shear: Largest shear, in degrees either way, along each axis.
        translate: Largest shift along each axis, as a fraction of the image side; 0: no shift.
        thickness: Largest change of stroke width: a digit is blended towards its 3 × 3 dilation
            (thicker) or erosion (thinner) by a fraction drawn from [-thickness, thickness].
        blur: Largest Gaussian blur, as its standard deviation in pixels: each digit is blurred by
            one drawn from [0, blur] (pen and scan softer than MNIST's); 0 turns it off.
        elastic: Largest displacement of the elastic warp (Simard et al., 2003), in pixels;
            0 turns it off.
        elastic_sigma: Smoothness of the elastic warp: the standard deviation, in pixels, of the
            Gaussian that smooths its random displacement field.
    """

    rotation: float = 15.0
    scale: tuple[float, float] = (1.0, 1.0)
    shear: float = 10.0
    translate: float = 0.0
    thickness: float = 1.0
    blur: float = 0.0
    elastic: float = 0.0
    elastic_sigma: float = 4.0

    def __post_init__(self) -> None:
        low, high = self.scale
        problems = [
            (self.rotation < 0, f"rotation must be 0 or more degrees, got {self.rotation}"),
            (not 0 < low <= high, f"scale must be (low, high) with 0 < low <= high, got {self.scale}"),
            (not 0 <= self.shear < 90, f"shear must be in [0, 90) degrees, got {self.shear}"),
            (not 0 <= self.translate <= 1, f"translate must be in [0, 1], got {self.translate}"),
            (not 0 <= self.thickness <= 1, f"thickness must be in [0, 1], got {self.thickness}"),
            (not 0 <= self.blur <= 5, f"blur must be in [0, 5] pixels, got {self.blur}"),
            (self.elastic < 0, f"elastic must be 0 or more pixels, got {self.elastic}"),
            (self.elastic_sigma <= 0, f"elastic_sigma must be above 0, got {self.elastic_sigma}"),
        ]
        for bad, message in problems:
            if bad:
                raise LitMNISTError(f"data.augment: {message}.")

    def __call__(self, images: torch.Tensor, key: tuple[int, ...]) -> torch.Tensor:
        """Distorted copies of uint8 ``[B, 1, H, W]`` ``images``, the same for the same ``key``."""
        generator = torch.Generator().manual_seed(_seed_of(key))
        batch, _, height, width = images.shape
        device = images.device
        # The few random numbers and the [B, 2, 3] matrices are made on the CPU, whatever the device.
        u = torch.rand(batch, 7, generator=generator) * 2 - 1
        x = images.float()
        if self.thickness:
            change = (u[:, 6] * self.thickness).view(-1, 1, 1, 1).to(device, non_blocking=True)
            thicker, thinner = _dilated(x), -_dilated(-x)
            x = x + change.clamp(min=0) * (thicker - x) - change.clamp(max=0) * (thinner - x)
        if self.blur:
            x = self._blurred(x, torch.rand(batch, generator=generator) * self.blur)
        theta = self._matrices(u)
        grid = F.affine_grid(
            theta.to(device, non_blocking=True), [batch, 1, height, width], align_corners=False
        )
        if self.elastic:
            grid = grid + self._elastic_field(batch, height, width, generator).to(device, non_blocking=True)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return x.round_().clamp_(0, 255).to(torch.uint8)

    def _matrices(self, u: torch.Tensor) -> torch.Tensor:
        """``[B, 2, 3]`` maps from output to input coordinates (what ``affine_grid`` takes)."""
        low, high = self.scale
        angle = u[:, 0] * math.radians(self.rotation)
        zoom = (low + high) / 2 + u[:, 1] * (high - low) / 2
        shear_x = torch.tan(u[:, 2] * math.radians(self.shear))
        shear_y = torch.tan(u[:, 3] * math.radians(self.shear))
        cos, sin, one = torch.cos(angle), torch.sin(angle), torch.ones_like(angle)
        rotate = torch.stack([cos, -sin, sin, cos], 1).view(-1, 2, 2)
        shear = torch.stack([one, shear_x, shear_y, one], 1).view(-1, 2, 2)
        # grid_sample looks up where each output pixel comes from: the inverse of the distortion
        linear = torch.linalg.inv(rotate @ shear * zoom.view(-1, 1, 1))
        shift = -linear @ (u[:, 4:6] * 2 * self.translate).unsqueeze(-1)  # 2 = the grid's side, -1 to 1
        return torch.cat([linear, shift], dim=2)

    def _blurred(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Image ``b`` of ``x`` (``[B, 1, H, W]``) blurred by a Gaussian of deviation ``sigma[b]`` pixels."""
        batch, _, height, width = x.shape
        radius = math.ceil(3 * self.blur)
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        taps = torch.exp(-0.5 * (offsets / sigma.clamp_min(1e-3).unsqueeze(1)) ** 2)  # [B, 2r + 1]
        taps = (taps / taps.sum(dim=1, keepdim=True)).to(x.device, non_blocking=True)
        rows = F.conv2d(
            F.pad(x.view(1, batch, height, width), (0, 0, radius, radius)),
            taps.view(batch, 1, -1, 1),
            groups=batch,
        )
        return F.conv2d(
            F.pad(rows, (radius, radius, 0, 0)), taps.view(batch, 1, 1, -1), groups=batch
        ).view_as(x)

    def _elastic_field(self, batch: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """``[B, H, W, 2]`` smooth random shifts in ``grid_sample``'s units, at most ``elastic`` pixels."""
        noise = torch.rand(batch, 2, height, width, generator=generator) * 2 - 1
        radius = math.ceil(3 * self.elastic_sigma)
        taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1) / self.elastic_sigma) ** 2)
        taps = (taps / taps.sum()).repeat(2, 1, 1, 1)
        smooth = F.conv2d(F.pad(noise, (radius,) * 4, mode="replicate"), taps.view(2, 1, 1, -1), groups=2)
        smooth = F.conv2d(smooth, taps.view(2, 1, -1, 1), groups=2)
        smooth = smooth / smooth.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        pixels = torch.tensor([2 / width, 2 / height]).view(1, 2, 1, 1)
        return (smooth * self.elastic * pixels).permute(0, 2, 3, 1)


def _dilated(x: torch.Tensor) -> torch.Tensor:
    """The 3 × 3 grey-scale dilation of ``[B, 1, H, W]`` images (the border repeated outwards).

    ``max_pool2d(x, 3, stride=1, padding=1)`` computes the same, but takes ten times longer on the
    CPU for one-channel 28 × 28 images than these two passes of pairwise maxima.
    """
    rows = F.pad(x, (1, 1, 0, 0), mode="replicate")
    rows = torch.maximum(torch.maximum(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])
    both = F.pad(rows, (0, 0, 1, 1), mode="replicate")
    return torch.maximum(torch.maximum(both[..., :-2, :], both[..., 1:-1, :]), both[..., 2:, :])


def _seed_of(key: tuple[int, ...]) -> int:
    """A 63-bit seed from ``key``: nearby keys give unrelated seeds (NumPy's ``SeedSequence``)."""
    return int(np.random.SeedSequence([k % 2**63 for k in key]).generate_state(1, np.uint64)[0] >> 1)
