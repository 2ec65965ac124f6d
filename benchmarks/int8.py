"""Which CenterFace network a CPU without int8 dot-product instructions (AVX2-only x86) should
run: the fp32 file, the int8 graph of quantize.RECIPE (u8 x s8, whose products can saturate
on such CPUs), or the same recipe with 7-bit weights (`reduce_range`, exact everywhere).

    python benchmarks/int8.py --halves /work/bench/halves --work /work/bench/recall/sets \
        [--sets tune,tune-square416,...] [--delta -0.01] [--timing-only]

Prints ms per network run at three input sizes (one thread, median of 12; 4 at 1088x1920) and
coverage per face-size bucket of the default profile with each network on the sets (the
scoring of benchmarks/recall.py). `--delta` shifts every threshold of the int8 networks (a
score calibration chosen on the tune half). Both int8 graphs are built here from the product's
quantizer (quantize.build_int8), whatever this CPU; passes are cached per graph in --work.
"""

from __future__ import annotations

import hashlib
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recall  # noqa: E402  (benchmarks/recall.py: sets, scoring, pass cache)


class GraphModel:
    """A CenterFace graph (bytes) on onnxruntime, one thread: the Model protocol."""

    name = "centerface"

    def __init__(self, data: bytes, label: str) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        self.precision = label
        self.model_sha256 = hashlib.sha256(data).hexdigest()

    def run(self, blob: np.ndarray):
        from sanitizer.detect.graph import INPUT, OUTPUTS

        return self.session.run(OUTPUTS, {INPUT: blob})

    def infer(self, image: np.ndarray, threshold: float):
        from sanitizer.detect.centerface import decode
        from sanitizer.detect.graph import to_blob

        heatmap, scale, offset, _ = self.run(to_blob(image))
        return decode(heatmap, scale, offset, threshold)


def networks() -> dict[str, GraphModel]:
    from sanitizer.detect import centerface, quantize

    fp32, weights_sha = centerface._prepared_model(str(centerface.model_path()))
    plain = GraphModel(fp32, "fp32")
    plain.model_sha256 = weights_sha  # as the product names it: recall.py's pass cache is shared
    return {
        "fp32": plain,
        "int8": GraphModel(quantize.build_int8(fp32), "int8"),
        "int8-7bit": GraphModel(quantize.build_int8(fp32, reduce_range=True), "int8-7bit"),
    }


def timing(nets: dict[str, GraphModel]) -> None:
    from sanitizer.detect.graph import to_blob

    rng = np.random.default_rng(0)
    print("| input | " + " | ".join(f"{k} ms" for k in nets) + " |")
    print("| --- | " + " | ".join("---" for _ in nets) + " |")
    for h, w in ((416, 416), (640, 640), (1088, 1920)):
        blob = to_blob(rng.integers(0, 255, (h, w, 3), np.uint8))
        times: dict[str, list[float]] = {k: [] for k in nets}
        for net in nets.values():
            net.run(blob)
        for _ in range(12 if h < 1000 else 4):
            for k, net in nets.items():  # interleaved: the machine's load hits all alike
                t0 = time.perf_counter()
                net.run(blob)
                times[k].append(time.perf_counter() - t0)
        print(
            f"| {w}x{h} | " + " | ".join(f"{1e3 * np.median(v):.1f}" for v in times.values()) + " |"
        )


def coverage(nets: dict[str, GraphModel], a) -> None:
    from sanitizer import evaluate as ev
    from sanitizer.detect.policy import ScanDetector

    halves, work = Path(a.halves), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = recall.detect_config("default")
    plain_detect = ScanDetector.detect
    print(
        "\n| set | network | " + " | ".join(ev.ROWS) + " | face-free masked |\n"
        "| --- | --- | " + " | ".join("---" for _ in ev.ROWS) + " | --- |"
    )
    caches = {
        k: recall.CachingModel(net, recall.load_store(work, net)[0]) for k, net in nets.items()
    }
    for kind in a.sets.split(","):
        half, derived = recall.split_set(kind)
        gt, root = recall.make_set(half, derived, halves, work)
        for k, cache in caches.items():
            delta = 0.0 if k == "fp32" else a.delta
            # every pass's threshold shifted by delta; candidates gathered that much lower
            ScanDetector.detect = lambda self, im, d=delta: self.select(
                self.candidates(im, slack=max(0.0, -d)), d
            )
            try:
                r = recall.score(gt, root, cfg, cache)
            finally:
                ScanDetector.detect = plain_detect
            neg = r["negatives_masked_share"]
            label = k if not delta else f"{k} ({delta:+g})"
            print(
                f"| {kind} | {label} | "
                + " | ".join(recall.pct(r["coverage"][b]) for b in ev.ROWS)
                + f" | {'-' if neg is None else f'{100 * neg:.3f}%'} |",
                flush=True,
            )
    for k, cache in caches.items():
        recall.load_store(work, nets[k])[1].write_bytes(pickle.dumps(cache.store))


def main() -> int:
    ap = recall.parser(__doc__)
    ap.add_argument("--sets", default="tune,tune-square416,tune-down50,tune-thumb320,tune-jpeg25")
    ap.add_argument("--delta", type=float, default=0.0, help="threshold shift of int8 networks")
    ap.add_argument("--timing-only", action="store_true")
    a = ap.parse_args()
    nets = networks()
    timing(nets)
    if not a.timing_only:
        if not (recall.DATA / "faces_dev.json").is_file():
            print(f"no ground truth at {recall.DATA}/faces_dev.json", file=sys.stderr)
            return 2
        coverage(nets, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
