"""The exported networks: the UNet plus inference's output activations, as ONNX or TorchScript.

:class:`ProbabilityUNet` is the network every export carries; :func:`probability_net`
builds it from a model (CPU, fp32, eval mode; the caller's network is never changed).
"""

from __future__ import annotations

import copy
import importlib
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models import CellModel, load_model
from ..unet import UNet, UNetConfig

INPUT_ID, OUTPUT_ID = "input", "probabilities"


class ProbabilityUNet(nn.Module):
    """A napari-cellunet UNet whose output is what inference uses: class softmax [+ distance sigmoid].

    ``ProbabilityUNet(**unet_config_fields)``; its state dict is the UNet's. Written so that
    ``torch.jit.script`` and ONNX tracing both keep the batch and spatial sizes dynamic.
    """

    def __init__(self, **config) -> None:
        super().__init__()
        net = UNet(UNetConfig.from_dict(config))
        self.down, self.pool, self.up, self.head = net.down, net.pool, net.up, net.head
        self.n_classes = net.config.n_classes
        self.multiple = net.size_multiple
        self.dims = net.config.dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        m = self.multiple
        pad: list[int] = []
        small = False
        for i in range(self.dims):  # pad at the end of each spatial axis, as UNet.forward does
            s = spatial[self.dims - 1 - i]
            p = (m - s % m) % m
            small = small or p >= s
            pad += [0, p]
        x = F.pad(x, pad, mode="replicate" if small else "reflect")
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            x = block(x, skips.pop())
        x = self.head(x)
        for i in range(self.dims):
            x = x.narrow(2 + i, 0, spatial[i])
        p = torch.softmax(x[:, : self.n_classes], dim=1)
        if x.shape[1] > self.n_classes:
            p = torch.cat([p, torch.sigmoid(x[:, self.n_classes:])], dim=1)
        return p


def _require(module: str, pip_name: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"this export needs {pip_name}: pip install {pip_name}") from err


def _as_model(model: CellModel | UNet | str | Path) -> CellModel:
    if isinstance(model, CellModel):
        return model
    if isinstance(model, UNet):
        return CellModel(name="cellunet-model", net=model)
    return load_model(model)


def _cpu_net(model: CellModel | UNet | str | Path) -> UNet:
    """A CPU fp32 eval copy (the caller's network is never moved or changed)."""
    net = copy.deepcopy(_as_model(model).net).float().cpu().eval()
    return net.to(memory_format=torch.contiguous_format)


def probability_net(model: CellModel | UNet | str | Path) -> ProbabilityUNet:
    """The network wrapped with its output activations (CPU, fp32, eval mode)."""
    net = _cpu_net(model)
    wrapped = ProbabilityUNet(**net.config.to_dict())
    wrapped.load_state_dict(net.state_dict())
    return wrapped.eval()


def _axis_ids(dims: int) -> str:
    return "zyx"[3 - dims:]


def export_onnx(model: CellModel | UNet | str | Path, path: str | Path, opset: int = 17) -> Path:
    """Write the wrapped network as ONNX (``input`` -> ``probabilities``; dynamic batch and spatial axes)."""
    onnx = _require("onnx", "onnx")
    net = probability_net(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = {0: "batch", **{2 + i: a for i, a in enumerate(_axis_ids(net.dims))}}
    example = torch.rand(1, net.down[0][0].in_channels, *(2 * net.multiple,) * net.dims)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notices and "legacy exporter" deprecation
        # The TorchScript-based exporter records the size arithmetic, so padding stays dynamic; the
        # torch.export-based one (dynamo=True) would need onnxscript and symbolic-shape guards.
        torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_ID], output_names=[OUTPUT_ID],
                          dynamic_axes={INPUT_ID: names, OUTPUT_ID: names})
    onnx.checker.check_model(str(path))
    return path


def check_onnx(model: CellModel | UNet | str | Path, path: str | Path, shape: tuple[int, ...] = (1, 1, 128, 160),
               seed: int = 0) -> float:
    """Max abs difference between onnxruntime on ``path`` and napari-cellunet's torch inference, random input."""
    ort = _require("onnxruntime", "onnxruntime")
    from ..inference import _forward

    net = _cpu_net(model)
    shape = (shape[0], net.config.in_channels, *shape[2:])
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    ref = _forward(net, torch.from_numpy(x), None, [()]).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    if out.shape != ref.shape:
        raise ValueError(f"ONNX output shape {out.shape} != torch output shape {ref.shape}")
    return float(np.abs(out - ref).max())


def export_torchscript(model: CellModel | UNet | str | Path, path: str | Path) -> Path:
    """Write the wrapped network as TorchScript (scripted: any size; ``torch.jit.load`` reads it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(probability_net(model)).save(str(path))
    return path
