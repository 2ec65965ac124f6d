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

  In int8 the image also comes *packed* (`to_packed`: its 2x2 pixel blocks as 12 channels)
  and the first convolution (3x3, stride 2, on 3 channels: onnxruntime's least efficient
  layer, 14 % of a look) becomes the equal 2x2 stride-1 convolution on the packed image. Its
  integer sums are the same products in another order, so the outputs stay bit-identical;
  the layer takes half the time (`_pack_first_conv`). Not in fp32: float sums in another
  order round differently.
"""

from __future__ import annotations

import numpy as np

INPUT = "input.1"
OUTPUTS = ["537", "538", "539", "540"]  # heatmap, scale, offset, landmarks
SERVING_INPUT = "image"
SERVING_OUTPUTS = OUTPUTS[:3]  # the landmarks are never used
PACKED = 12  # channels of a packed image (to_packed): 2x2 blocks of RGB
# the serving transform's version: part of its cache key (quantize.serving_path)
SERVING = "u8-nhwc-3out-packed-v2"


STRIDE = 32  # the network's total stride: its input's sides are multiples of it


def _padded(h: int, w: int) -> tuple[int, int]:
    """Sides of an h x w image zero-padded to multiples of STRIDE."""
    return -(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE


def to_blob(image: np.ndarray) -> np.ndarray:
    """The network graph's input for an HxWx3 uint8 RGB image: 1x3xHxW float32, zero-padded
    to /32."""
    h, w = image.shape[:2]
    blob = np.zeros((1, 3, *_padded(h, w)), np.float32)
    blob[0, :, :h, :w] = image.transpose(2, 0, 1)
    return blob


def to_image(image: np.ndarray) -> np.ndarray:
    """The serving graph's input for an HxWx3 uint8 RGB image: 1xHxWx3 uint8, zero-padded to
    /32 (no copy when the image is contiguous and already that size)."""
    h, w = image.shape[:2]
    ph, pw = _padded(h, w)
    if (ph, pw) == (h, w):
        return np.ascontiguousarray(image, np.uint8)[None]
    out = np.zeros((1, ph, pw, 3), np.uint8)
    out[0, :h, :w] = image
    return out


def to_packed(image: np.ndarray) -> np.ndarray:
    """The packed input of an int8 serving graph for an HxWx3 uint8 RGB image: the image
    zero-padded to /32 and then by one pixel all round (the first convolution's padding), its
    2x2 blocks as channels: 1 x (H/2 + 1) x (W/2 + 1) x 12 uint8, channel (2 * row + column)
    * 3 + colour of the block's pixel (row, column)."""
    import cv2

    h, w = image.shape[:2]
    ph, pw = (side + 2 for side in _padded(h, w))
    padded = np.zeros((ph, pw, 3), np.uint8)
    padded[1 : h + 1, 1 : w + 1] = image
    pairs = padded.reshape(ph, pw // 2, 6)  # the two pixels of each block row, side by side
    return cv2.merge([pairs[0::2], pairs[1::2]])[None]  # top rows' 6 channels, then bottom's


def feeder(channels: int):
    """The input maker of a serving graph whose input has `channels` channels."""
    return to_packed if channels == PACKED else to_image


def _constant(inits: dict, node, i: int, value: float) -> bool:
    """True when input `i` of `node` is an initializer whose every element equals `value`."""
    from onnx import numpy_helper

    return (
        len(node.input) > i
        and node.input[i] in inits
        and bool(np.all(numpy_helper.to_array(inits[node.input[i]]) == value))
    )


def _pack_first_conv(g, quantized: str) -> bool:
    """Rewrite the int8 graph's first convolution, fed the quantized image `quantized` (NCHW),
    to take the packed image: a 3x3 stride-2 convolution with 1 px of padding over 3
    channels equals a 2x2 stride-1 one without padding over the padded image's 2x2 blocks
    (12 channels; the kernel's taps placed in the block they fall in, zero elsewhere). False,
    and the graph unchanged, when the convolution is not that one."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in g.initializer}
    dq = [n for n in g.node if quantized in n.input]
    if len(dq) != 1 or dq[0].op_type != "DequantizeLinear" or not _constant(inits, dq[0], 2, 0):
        return False  # the packed image's padding is 0: so must the image's zero point be
    convs = [n for n in g.node if dq[0].output[0] in n.input]
    if len(convs) != 1 or convs[0].op_type != "Conv" or convs[0].input[0] != dq[0].output[0]:
        return False
    conv = convs[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    wdq = next((n for n in g.node if n.output[0] == conv.input[1]), None)
    if (
        wdq is None
        or wdq.op_type != "DequantizeLinear"
        or wdq.input[0] not in inits
        or not _constant(inits, wdq, 2, 0)
        or attrs.get("kernel_shape") != [3, 3]
        or attrs.get("strides") != [2, 2]
        or attrs.get("pads") != [1, 1, 1, 1]
        or attrs.get("group", 1) != 1
        or attrs.get("dilations", [1, 1]) != [1, 1]
        or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
        or sum(1 for n in g.node if wdq.output[0] in n.input) != 1
        or sum(1 for n in g.node if wdq.input[0] in n.input) != 1
    ):
        return False
    weights = numpy_helper.to_array(inits[wdq.input[0]])
    if weights.ndim != 4 or weights.shape[1:] != (3, 3, 3) or weights.dtype != np.int8:
        return False
    packed = np.zeros((weights.shape[0], PACKED, 2, 2), np.int8)
    for row in range(2):
        for col in range(2):
            for u in range(2):
                for v in range(2):
                    kh, kw = 2 * u + row, 2 * v + col
                    if kh < 3 and kw < 3:
                        first = (2 * row + col) * 3
                        packed[:, first : first + 3, u, v] = weights[:, :, kh, kw]
    inits[wdq.input[0]].CopyFrom(numpy_helper.from_array(packed, wdq.input[0]))
    del conv.attribute[:]
    conv.attribute.extend(
        [
            helper.make_attribute("kernel_shape", [2, 2]),
            helper.make_attribute("strides", [1, 1]),
            helper.make_attribute("pads", [0, 0, 0, 0]),
            helper.make_attribute("group", 1),
            helper.make_attribute("dilations", [1, 1]),
        ]
    )
    return True


def serving_graph(network: bytes) -> bytes:
    """The serving form (module docstring) of a network graph (fp32 or int8)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(network)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    channels = 3
    users = [n for n in g.node if INPUT in n.input]
    first = users[0] if len(users) == 1 else None
    if (
        first is not None
        and first.op_type == "QuantizeLinear"
        and _constant(inits, first, 1, 1.0)
        and _constant(inits, first, 2, 0)
        and inits[first.input[2]].data_type == TensorProto.UINT8
    ):
        # quantizing a 0..255 integer image with scale 1 and zero point 0 is the identity
        g.node.remove(first)
        head = [
            helper.make_node("Transpose", [SERVING_INPUT], [first.output[0]], perm=[0, 3, 1, 2])
        ]
        if _pack_first_conv(g, first.output[0]):
            channels = PACKED
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
        helper.make_tensor_value_info(SERVING_INPUT, TensorProto.UINT8, ["B", "H", "W", channels])
    )
    return model.SerializeToString()
