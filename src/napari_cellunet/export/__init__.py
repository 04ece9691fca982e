"""Models that travel: export to ONNX, TorchScript and bioimage.io packages; import packages back.

Every export is the network plus the output activations inference uses
(:class:`ProbabilityUNet`): softmax over the class logits (background, interior,
boundary) and a sigmoid on the optional distance output. Input: ``(N, C, [Z,] Y, X)``
float32, already normalised; any batch size and any spatial size of at least
``2**depth`` (padded to a multiple of ``2**depth`` inside the graph, then cropped back).
Post-processing (instance labels, counts) is not exported.

A bioimage.io package also carries the napari-cellunet model file, named in
``config["napari-cellunet"]``, so :func:`import_bioimageio` restores it exactly.
ONNX needs ``onnx`` + ``onnxruntime``, packages ``bioimageio.spec`` (+ ``bioimageio.core``
to test them); each is imported only when used.

Modules: :mod:`.networks` (the wrapped network, ONNX, TorchScript), :mod:`.bioimageio`
(packages), :mod:`.card` (their model card), :mod:`.imports` (packages back to models).
"""

from __future__ import annotations

from .bioimageio import ARCH_FILE, CONFIG_KEY, CROP, RDF_NAMES, SAMPLE_DIR, check_bioimageio, export_bioimageio
from .card import CARD, LICENSE
from .imports import import_bioimageio
from .networks import INPUT_ID, OUTPUT_ID, ProbabilityUNet, check_onnx, export_onnx, export_torchscript, probability_net

__all__ = ["ARCH_FILE", "CARD", "CONFIG_KEY", "CROP", "INPUT_ID", "LICENSE", "OUTPUT_ID", "RDF_NAMES", "SAMPLE_DIR",
           "ProbabilityUNet", "check_bioimageio", "check_onnx", "export_bioimageio", "export_onnx",
           "export_torchscript", "import_bioimageio", "probability_net"]
