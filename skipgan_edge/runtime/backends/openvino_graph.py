"""OpenVINO graph rewrites shared by the OpenVINO backend and Triton's Python backend.

Everything below the marker line is copied verbatim into each Triton repository's ``model.py``
(:func:`skipgan_edge.service.triton_repo.model_py_source`), which must not import skipgan_edge: so this
part uses only numpy, ``typing.Any`` and OpenVINO (imported inside the functions).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# ---- model.py (Triton's Python backend) inlines everything below this line ----
#: shape-specialised compiled models kept at once (by the OpenVINO backend and by Triton's model.py)
MAX_SPECIALISED = 4


def with_batch(model: Any, n: int) -> Any | None:
    """A copy of ``model`` (an ``openvino.Model``) with its batch dimension fixed to ``n``; None when the file fixes it already.
    OpenVINO's CPU plugin runs such a copy 10 to 20 % faster than the dynamic batch (skipgan_edge/runtime/backends/openvino.py)."""
    if not model.input(0).get_partial_shape()[0].is_dynamic:
        return None
    copy = model.clone()
    shape = copy.input(0).get_partial_shape()
    shape[0] = n
    copy.reshape({copy.input(0): shape})
    return copy


def split_transposed_convs(model: Any) -> int:
    """Rewrite each ConvTranspose of ``model`` (an ``openvino.Model``) with a constant 4×4 kernel, stride 2, padding 1,
    no dilation or output padding, as four 2×2 convolutions interleaved by DepthToSpace; return how many.

    Output pixel (2i + a, 2j + b) of such a transposed convolution sums input rows i - 1 + a .. i + a and columns
    j - 1 + b .. j + b against kernel taps 3 - a - 2u, 3 - b - 2v (u, v in 0, 1). So phase (a, b) is a 2×2 convolution
    padded (1 - a, 1 - b) before and (a, b) after; the four phases, concatenated along channels in the order
    (0,0), (0,1), (1,0), (1,1), are DepthToSpace's blocks-first layout. A bias stays where OpenVINO put it (an Add after).

    Why (OpenVINO keeps ConvTranspose in f32 when told bf16) and what it gains: skipgan_edge/runtime/backends/openvino.py.
    """
    import openvino.opset13 as ops

    n = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "ConvolutionBackpropData" or op.get_input_size() != 2:
            continue
        at = op.get_attributes()
        kernel = op.input_value(1).get_node()
        if kernel.get_type_name() != "Constant" or [list(at[k]) for k in ("strides", "dilations", "pads_begin", "pads_end", "output_padding")] \
                != [[2, 2], [1, 1], [1, 1], [1, 1], [0, 0]]:
            continue
        w = kernel.get_data()  # (in, out, 4, 4)
        if w.ndim != 4 or w.shape[2:] != (4, 4):
            continue
        x = op.input_value(0)
        phases = []
        for a in (0, 1):
            for b in (0, 1):
                k = np.ascontiguousarray(w[:, :, [3 - a, 1 - a]][:, :, :, [3 - b, 1 - b]].transpose(1, 0, 2, 3))  # (out, in, 2, 2)
                phases.append(ops.convolution(x, ops.constant(k), [1, 1], [1 - a, 1 - b], [a, b], [1, 1]))
        y = ops.depth_to_space(ops.concat(phases, 1), "blocks_first", 2)
        y.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(y.output(0))
        n += 1
    return n
