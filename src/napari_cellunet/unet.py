"""A dimension-generic UNet (Ronneberger et al. 2015) for 2D and 3D images.

Contracting path: per level 2x(3x3 conv, norm, ReLU) then 2x2 max-pool.
Expanding path: 2x2 up-conv (or interpolation + 1x1 conv), skip concatenation,
2x(3x3 conv, norm, ReLU); a final 1x1 conv gives the class logits (and,
optionally, one more output: each object's distance to its border).

Unlike the paper, convolutions are padded and the input is padded to a multiple
of ``2**depth`` (and cropped back), so any input size works.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "instance", "group", "none")
UP_MODES = ("transpose", "interpolate")


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild the network (stored in model files)."""

    dims: int = 2
    in_channels: int = 1
    n_classes: int = 3
    depth: int = 4
    base_channels: int = 16
    up_mode: str = "transpose"
    norm: str = "batch"
    distance: bool = False  # one extra output after the classes: distance to the object border (0-1)

    @property
    def n_outputs(self) -> int:
        return self.n_classes + int(self.distance)

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {self.dims}")
        if self.up_mode not in UP_MODES:
            raise ValueError(f"up_mode must be one of {UP_MODES}, got {self.up_mode!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.depth < 1 or self.base_channels < 1:
            raise ValueError("depth and base_channels must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def _conv(dims: int):
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _norm(kind: str, dims: int, channels: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class DoubleConv(nn.Sequential):
    """2x (3x3 conv -> norm -> ReLU), padded."""

    def __init__(self, dims: int, c_in: int, c_out: int, norm: str) -> None:
        conv = _conv(dims)
        bias = norm == "none"
        super().__init__(
            conv(c_in, c_out, 3, padding=1, bias=bias),
            _norm(norm, dims, c_out),
            nn.ReLU(inplace=True),
            conv(c_out, c_out, 3, padding=1, bias=bias),
            _norm(norm, dims, c_out),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """2x up-sampling, skip concatenation, double conv."""

    def __init__(self, dims: int, c_in: int, c_out: int, norm: str, mode: str) -> None:
        super().__init__()
        if mode == "transpose":
            tconv = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
            self.up = tconv(c_in, c_out, kernel_size=2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear" if dims == 2 else "trilinear",
                            align_corners=False),
                _conv(dims)(c_in, c_out, kernel_size=1),
            )
        self.conv = DoubleConv(dims, 2 * c_out, c_out, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """UNet producing per-pixel class logits (background, interior, boundary) [+ a distance logit]."""

    def __init__(self, config: UNetConfig | None = None, **kwargs) -> None:
        super().__init__()
        self.config = config or UNetConfig(**kwargs)
        c = self.config
        widths = [c.base_channels * 2**i for i in range(c.depth + 1)]
        self.down = nn.ModuleList([DoubleConv(c.dims, c.in_channels, widths[0], c.norm)])
        for i in range(c.depth):
            self.down.append(DoubleConv(c.dims, widths[i], widths[i + 1], c.norm))
        self.pool = (nn.MaxPool2d if c.dims == 2 else nn.MaxPool3d)(2)
        self.up = nn.ModuleList(
            Up(c.dims, widths[i + 1], widths[i], c.norm, c.up_mode)
            for i in reversed(range(c.depth))
        )
        self.head = _conv(c.dims)(widths[0], c.n_outputs, kernel_size=1)

    @property
    def size_multiple(self) -> int:
        """Spatial sizes must be a multiple of this (handled by padding in ``forward``)."""
        return 2**self.config.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = self.config.dims
        if x.ndim != dims + 2:
            raise ValueError(f"expected a {dims + 2}D tensor (N, C, spatial...), got shape {tuple(x.shape)}")
        spatial = x.shape[2:]
        m = self.size_multiple
        pads = [(-s) % m for s in spatial]
        if any(pads):
            # F.pad takes pairs from the last dimension backwards; pad at the end only.
            pad_arg: list[int] = []
            for p in reversed(pads):
                pad_arg += [0, p]
            mode = "reflect" if all(p < s for p, s in zip(pads, spatial)) else "replicate"
            x = F.pad(x, pad_arg, mode=mode)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            x = block(x, skips.pop())
        x = self.head(x)
        if any(pads):
            x = x[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]
        return x


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
