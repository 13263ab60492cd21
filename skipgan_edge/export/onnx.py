"""Checkpoint → ``scorer.onnx``: the whole scorer (preprocessing, networks, score head) in one graph.

* input ``images``: uint8 [B, H, W, C] (dynamic B), channel order of the model card;
* outputs ``score`` [B], ``anomaly_map`` [B, 1, H, W], ``normalized_score`` [B], all float32;
* BatchNorm folded into the convolutions before export (eval-mode statistics; not the encoder tap's, which the
  encoder bank reads before its BatchNorm), opset 17;
* only what the outputs need: the discriminator's classifier head is not in the graph, and
  the two feature passes f(x), f(G(x)) run as one batch of 2B (exact in eval mode);
* the model card as JSON in ``metadata_props`` (key ``skipgan_edge.card``).

Right after export, ONNX Runtime runs the file on real images and must match the torch scorer:
the tolerance is 1e-4 relative to the spread of the normal validation scores (max - min), plus
an absolute 1e-6, for ``score`` and ``anomaly_map`` (FP32 on both sides; the differences are
float summation order). The max abs difference is reported.
"""

from __future__ import annotations

import copy
import itertools
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.card import ModelCard, card_from_onnx_metadata, set_onnx_metadata
from skipgan_edge.contract import INPUT_NAME, OUTPUT_NAMES
from skipgan_edge.errors import ExportError, require

log = logging.getLogger(__name__)

OPSET = 17
#: The exporter names a node after the module that made it ("/generator/.../Conv"); nodes made
#: by the scorer's own code (input cast and scaling, the score head, feature split) sit at the
#: top level ("/Sub_1"). This regex matches the top level: every precision variant keeps those
#: nodes in FP32, whatever the architecture.
HEAD_NODE_REGEX = r"^/[^/]*$"


def is_head_node(name: str) -> bool:
    """True for nodes outside the networks (preprocessing and the score head)."""
    import re

    return re.match(HEAD_NODE_REGEX, name) is not None
PARITY_RTOL = 1e-4


def fold_batchnorm(module: Any) -> Any:
    """A copy of ``module`` with every Conv/ConvTranspose → BatchNorm pair folded into the conv, except the generator
    encoder's tap that a scorer's bank reads (``TapConv2d``: the 2×2 map's for a gaussian bank, the 4×4 map's for a
    nearest bank of encoder features): the bank reads that conv's own output (model/bank.py), which folding would turn
    into the BatchNorm's. A module that is not a scorer keeps every tap unfolded."""
    import torch
    from torch import nn


    module = copy.deepcopy(module).eval()
    read = _read_taps(module)
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq._modules.items())
        for (_, conv), (bn_name, bn) in itertools.pairwise(children):
            if not isinstance(bn, nn.BatchNorm2d) or not isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) or any(conv is t for t in read):
                continue
            mean, var = bn.running_mean, bn.running_var
            if mean is None or var is None:
                continue
            scale = bn.weight.detach() / torch.sqrt(var + bn.eps)  # (out,)
            with torch.no_grad():
                if isinstance(conv, nn.Conv2d):
                    conv.weight.mul_(scale[:, None, None, None])
                else:  # ConvTranspose2d weight is (in, out, kh, kw)
                    conv.weight.mul_(scale[None, :, None, None])
                bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(mean)
                new_bias = (bias - mean) * scale + bn.bias.detach()
                conv.bias = nn.Parameter(new_bias)
            seq._modules[bn_name] = nn.Identity()
    return module


def _read_taps(module: Any) -> list[Any]:
    """The encoder taps whose own output ``module`` (a Scorer) reads: none without a bank or with D's features."""
    from skipgan_edge.model.networks import TapConv2d

    if not hasattr(module, "bank_names"):
        return [m for m in module.modules() if isinstance(m, TapConv2d)]
    if not module.bank_names:
        return []
    gen = module.model.generator
    if module.bank_kind == "gaussian":
        return [gen.tap2]
    return [gen.tap] if module.bank_source == "encoder" else []


def card_from_onnx(model: Any) -> ModelCard:
    """The card of an ONNX ModelProto (:func:`skipgan_edge.card.card_from_onnx_metadata`)."""
    return card_from_onnx_metadata({p.key: p.value for p in model.metadata_props}, "ONNX metadata")


def export_onnx(model_dir: Path, out: Path, parity_images: np.ndarray | None = None) -> dict[str, Any]:
    """Export a model folder to ``out`` (a .onnx path); returns the parity report."""
    require("torch", "train", "export")
    onnx = require("onnx", "export", "export")
    import torch

    from skipgan_edge.card import atomic_write_bytes
    from skipgan_edge.model.folder import build_scorer

    card, scorer = build_scorer(model_dir, "cpu")
    fused = fold_batchnorm(scorer)
    isize, ch = card.input.isize, card.input.channels
    dummy = torch.zeros(2, isize, isize, ch, dtype=torch.uint8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    # The TorchScript exporter (dynamo=False), on purpose: it names every node after the module
    # that made it ("/generator/.../Conv"), which is how the precision passes tell the networks
    # from the FP32 score head (HEAD_NODE_REGEX), for any architecture.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            fused, (dummy,), str(tmp), input_names=[INPUT_NAME], output_names=OUTPUT_NAMES,
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}},
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    m = onnx.load(str(tmp))
    tmp.unlink()
    m.producer_name = "skipgan-edge"
    set_onnx_metadata(m, card, "fp32")
    onnx.checker.check_model(m, full_check=True)
    atomic_write_bytes(out, m.SerializeToString())
    report: dict[str, Any] = {"onnx": str(out), "opset": OPSET, "model_id": card.model_id, "nodes": len(m.graph.node)}
    if parity_images is not None and len(parity_images):
        report["parity"] = check_parity(scorer, out, parity_images, card)
    return report


def check_parity(scorer: Any, onnx_path: Path, images: np.ndarray, card: ModelCard) -> dict[str, Any]:
    """ONNX Runtime vs the torch scorer on ``images``; raises ExportError beyond the tolerance."""
    from skipgan_edge.runtime.backends import CPU_ONLY, open_backend

    ref = scorer.score_numpy(images)
    with open_backend("onnx", onnx_path, "onnxruntime", CPU_ONLY) as be:
        got = be.infer_all(images)
    stats = card.score.val_stats
    spread = max(stats.max - stats.min, 1e-12)
    d_score = float(np.abs(ref.score - got.score).max())
    d_map = float(np.abs(ref.anomaly_map - got.anomaly_map).max())
    tol = PARITY_RTOL * spread + 1e-6
    rep = {"images": len(images), "max_abs_diff_score": d_score, "max_abs_diff_map": d_map, "tolerance": tol}
    if d_score > tol or d_map > max(tol, 1e-5):
        raise ExportError(f"ONNX Runtime scores differ from torch by {d_score:.3g} (tolerance {tol:.3g}); please report this model")
    log.info("ONNX Runtime matches torch on %d images: max |Δscore| %.3g, max |Δmap| %.3g (tolerance %.3g)", len(images), d_score,
             d_map, tol)
    return rep
