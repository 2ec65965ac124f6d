"""The CenterFace graph's names and input format, shared by the runtime (centerface.py) and the
int8 derivation (quantize.py), so that neither imports the other's module for them.

Two forms of one network:

- the *network graph* (the prepared fp32 graph, or its int8 quantization): input `INPUT`, a
  1x3xHxW float32 blob (`to_blob`), four outputs (`OUTPUTS`). The int8 graph is derived and
  pinned in this form (quantize.py);
- the *serving graph* the runtime runs (`serving_graph`): the same network, fed the uint8 RGB
  image itself (`to_image`: 1xHxWx3, zero-padded to /32) and giving only the three outputs
  the boxes are decoded from. Its outputs are bit-identical to the network graph's
  (tests/test_detector.py); it skips the float blob, the int8 graph's input quantization
  (an identity: scale 1, zero point 0) and the transposes around it, and the landmarks head:
  up to 11 % less time per look in int8, up to 5 % in fp32, and a 1080p video 0.88x the
  time (BENCHMARKS.md, Images → Serving graph).
"""

from __future__ import annotations

import numpy as np

INPUT = "input.1"
OUTPUTS = ["537", "538", "539", "540"]  # heatmap, scale, offset, landmarks
SERVING_INPUT = "image"
SERVING_OUTPUTS = OUTPUTS[:3]  # the landmarks are never used
# the serving transform's version: part of its cache key (quantize.serving_path)
SERVING = "u8-nhwc-3out-v1"


def to_blob(image: np.ndarray) -> np.ndarray:
    """The network graph's input for an HxWx3 uint8 RGB image: 1x3xHxW float32, zero-padded
    to /32."""
    h, w = image.shape[:2]
    blob = np.zeros((1, 3, -(-h // 32) * 32, -(-w // 32) * 32), np.float32)
    blob[0, :, :h, :w] = image.transpose(2, 0, 1)
    return blob


def to_image(image: np.ndarray) -> np.ndarray:
    """The serving graph's input for an HxWx3 uint8 RGB image: 1xHxWx3 uint8, zero-padded to
    /32 (no copy when the image is contiguous and already that size)."""
    h, w = image.shape[:2]
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    if (ph, pw) == (h, w):
        return np.ascontiguousarray(image, np.uint8)[None]
    out = np.zeros((1, ph, pw, 3), np.uint8)
    out[0, :h, :w] = image
    return out


def serving_graph(network: bytes) -> bytes:
    """The serving form (module docstring) of a network graph (fp32 or int8)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(network)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    users = [n for n in g.node if INPUT in n.input]
    first = users[0] if len(users) == 1 else None
    if (
        first is not None
        and first.op_type == "QuantizeLinear"
        and len(first.input) == 3
        and first.input[1] in inits
        and first.input[2] in inits
        and inits[first.input[2]].data_type == TensorProto.UINT8
        and np.all(numpy_helper.to_array(inits[first.input[1]]) == 1.0)
        and np.all(numpy_helper.to_array(inits[first.input[2]]) == 0)
    ):
        # quantizing a 0..255 integer image with scale 1 and zero point 0 is the identity
        g.node.remove(first)
        head = [
            helper.make_node("Transpose", [SERVING_INPUT], [first.output[0]], perm=[0, 3, 1, 2])
        ]
    else:
        nchw = SERVING_INPUT + "_nchw"
        head = [
            helper.make_node("Transpose", [SERVING_INPUT], [nchw], perm=[0, 3, 1, 2]),
            helper.make_node("Cast", [nchw], [INPUT], to=TensorProto.FLOAT),
        ]
    nodes = head + list(g.node)
    kept_outputs = [o for o in g.output if o.name in SERVING_OUTPUTS]
    # only the nodes the kept outputs need, in their order
    needed = {o.name for o in kept_outputs}
    live = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(node.input)
    del g.node[:]
    g.node.extend(reversed(live))
    used = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(used)
    del g.output[:]
    g.output.extend(kept_outputs)
    del g.input[:]
    g.input.append(
        helper.make_tensor_value_info(SERVING_INPUT, TensorProto.UINT8, ["B", "H", "W", 3])
    )
    return model.SerializeToString()
