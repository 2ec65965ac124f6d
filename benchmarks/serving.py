"""The network graph against its serving form (sanitizer/detect/graph.py), per look.

    python benchmarks/serving.py [--precision int8|fp32] [--runs 15]

For each look size the detector runs (a 1080p band, its 704 px pieces, the cheap look, a
416x416 photo and its 1.5x pass), on a real-looking RGB image (the scikit-image astronaut
tiled): ms per look of the network graph fed the float blob (`to_blob`, four outputs) and of
the serving graph fed the uint8 image (`to_image`, or `to_packed` in int8: the packing is
timed with the look; three outputs), one onnxruntime thread,
both sessions built as the product builds them, interleaved run by run, medians; and the
largest difference between their outputs (0: bit-identical).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = ((320, 1920), (320, 704), (352, 640), (416, 416), (640, 640))


def session(data: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_mem_pattern = False
    opts.log_severity_level = 3
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def main() -> int:
    import cv2
    from skimage import data as skdata

    from sanitizer.detect import centerface
    from sanitizer.detect.graph import (
        INPUT,
        OUTPUTS,
        SERVING_INPUT,
        SERVING_OUTPUTS,
        feeder,
        to_blob,
    )

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--runs", type=int, default=15)
    a = ap.parse_args()
    path = str(centerface.model_path())
    network, _, precision = centerface._network(path, a.precision)
    net, srv = session(network), session(centerface._serving(path, a.precision))
    feed = feeder(srv.get_inputs()[0].shape[-1])
    tile = np.tile(skdata.astronaut(), (4, 4, 1))
    print(f"precision {precision}, one thread, median of {a.runs} interleaved runs")
    print("| look (h x w) | network graph ms | serving graph ms | serving / network | max diff |")
    print("| --- | --- | --- | --- | --- |")
    for h, w in SIZES:
        image = np.ascontiguousarray(cv2.resize(tile, (w, h), interpolation=cv2.INTER_AREA))
        want = net.run(OUTPUTS[:3], {INPUT: to_blob(image)})
        have = srv.run(SERVING_OUTPUTS, {SERVING_INPUT: feed(image)})
        diff = max(float(np.abs(x - y).max()) for x, y in zip(want, have, strict=True))
        times: dict[str, list[float]] = {"net": [], "srv": []}
        for _ in range(a.runs):
            t = time.perf_counter()
            net.run(OUTPUTS, {INPUT: to_blob(image)})
            times["net"].append(time.perf_counter() - t)
            t = time.perf_counter()
            srv.run(SERVING_OUTPUTS, {SERVING_INPUT: feed(image)})
            times["srv"].append(time.perf_counter() - t)
        tn, ts = (1000 * statistics.median(times[k]) for k in ("net", "srv"))
        print(f"| {h} x {w} | {tn:.2f} | {ts:.2f} | {ts / tn:.3f} | {diff:g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
