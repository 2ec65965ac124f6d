"""A person looks at a random sample of published outputs before a dataset is released.

`page` writes one self-contained HTML file (no network: thumbnails are inlined as data URIs,
the script is inline) with the redacted regions outlined, any `sanitizer verify` residuals
highlighted, a "looks fine / face left" choice per file, and a button that downloads the
verdicts as JSON; `import_verdicts` records that JSON as DST/_audit/reviews.

The page shows outputs (already redacted), never originals; a face the run missed is visible
in it, which is the point: keep the page where the dataset's outputs are kept.
"""

from __future__ import annotations

import base64
import html
import io
import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sanitizer import audit, storage
from sanitizer.errors import SanitizerError

THUMB_SIDE = 360  # px, long side of a thumbnail
VIDEO_SCAN_FRAMES = 300  # a video is shown at its frame with most faces among its first these
VERDICTS = ("fine", "face_left")


class ReviewError(SanitizerError):
    """Nothing to review, or a verdicts file that cannot be recorded."""


@dataclass
class Sampled:
    key: str
    run_id: str
    output_sha256: str
    width: int
    height: int
    thumb_jpeg: bytes
    faces: list[tuple[float, float, float, float]]  # x, y, w, h in output pixels
    residuals: list[tuple[float, float, float, float, float]]  # x, y, w, h, score
    frame: int = 0  # the video frame shown (0 for images)
    kind: str = "image"


def candidates(dst: storage.Location) -> Any:
    """The latest `ok` files row of every image and video whose output is at DST (not erased
    since)."""
    files = audit.read(dst, "files")
    ok = files[(files.status == "ok") & files.kind.isin(["image", "video"])]
    latest = ok.sort_values("finished").groupby("key").tail(1)
    erasures = audit.read(dst, "erasures")
    if not erasures.empty:
        erased = erasures.groupby("key")["erased_at"].max()
        latest = latest[
            [
                k not in erased.index or f > erased[k]
                for k, f in zip(latest.key, latest.finished, strict=True)
            ]
        ]
    return latest.sort_values("key").reset_index(drop=True)


def sample(dst: storage.Location, n: int, seed: int) -> list[Sampled]:
    """`n` outputs drawn at random (reproducibly, by `seed`) with their boxes."""
    from PIL import Image

    if n < 1:
        raise ReviewError("--sample must be at least 1")
    rows = candidates(dst)
    rows = rows[[storage.exists(dst, k) for k in rows.key]]
    if rows.empty:
        raise ReviewError(f"{dst.url}: no published image or video to review")
    picked = sorted(random.Random(seed).sample(list(rows.index), min(n, len(rows))))
    dets = audit.read(dst, "detections")
    verify = audit.read(dst, "verify")
    out = []
    for i in picked:
        r = rows.loc[i]
        of_file = dets[(dets.key == r.key) & (dets.run_id == r.run_id)]
        frame = 0
        try:
            if r.kind == "video":
                frame = _busiest_frame(of_file.frame)
                im = _video_frame(dst, r.key, frame)
            else:
                im = Image.open(io.BytesIO(storage.read_bytes(dst, r.key)))
                im.seek(0)
            width, height = im.size
            im = im.convert("RGB")
            im.thumbnail((THUMB_SIDE, THUMB_SIDE))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
        except (OSError, ValueError, EOFError) as exc:
            raise ReviewError(f"{r.key}: cannot read the output ({exc})") from None
        mine = of_file[of_file.frame == frame]
        left = verify[
            (verify.key == r.key)
            & (verify.status == "residual")
            & (verify.frame.isin([frame, -1]) if r.kind == "video" else True)
            & (verify.checked_run_id.isin([r.run_id, ""]))
        ]
        if not left.empty:  # the latest verify pass only
            left = left[left.run_id == left.run_id.max()]
        out.append(
            Sampled(
                r.key,
                r.run_id,
                r.output_sha256,
                width,
                height,
                buf.getvalue(),
                [(float(d.x), float(d.y), float(d.w), float(d.h)) for d in mine.itertuples()],
                [
                    (float(v.x), float(v.y), float(v.w), float(v.h), float(v.score))
                    for v in left.itertuples()
                    if r.kind == "image" or v.frame == frame
                ],
                frame,
                r.kind,
            )
        )
    return out


def _busiest_frame(frames) -> int:
    """The frame with most face boxes among the first VIDEO_SCAN_FRAMES (0 when none)."""
    early = frames[frames < VIDEO_SCAN_FRAMES]
    return int(early.value_counts().sort_index().idxmax()) if len(early) else 0


def _video_frame(dst: storage.Location, key: str, index: int):
    """Frame `index` of a published video as a PIL image (as stored, like the boxes)."""
    import av

    with storage.local_copy(dst, key) as (path, _):
        try:
            with av.open(path) as c:
                for i, frame in enumerate(c.decode(video=0)):
                    if i == index:
                        return frame.to_image()
        except (av.FFmpegError, IndexError) as exc:
            raise ValueError(f"cannot decode the video: {exc}") from None
    raise ValueError(f"the video has no frame {index}")


def page(dst: storage.Location, items: list[Sampled], seed: int) -> str:
    """The review page (HTML text)."""
    review_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    cards = "\n".join(_card(i, it) for i, it in enumerate(items))
    meta = json.dumps({"review_id": review_id, "destination": dst.url, "seed": seed})
    return _PAGE.format(
        title=html.escape(f"sanitizer review of {dst.url}"),
        dst=html.escape(dst.url),
        n=len(items),
        seed=seed,
        cards=cards,
        meta=meta.replace("</", "<\\/"),
    )


def _card(i: int, it: Sampled) -> str:
    img = base64.b64encode(it.thumb_jpeg).decode()
    from sanitizer.verify import FAIL_SCORE

    boxes = "".join(
        f'<rect class="face" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}"/>'
        for x, y, w, h in it.faces
    ) + "".join(
        f'<rect class="{"residual" if s >= FAIL_SCORE else "suspect"}" x="{x:.1f}" y="{y:.1f}" '
        f'width="{w:.1f}" height="{h:.1f}"><title>verify residual, score {s:.2f}</title></rect>'
        for x, y, w, h, s in it.residuals
    )
    key = html.escape(it.key)
    left = sum(s >= FAIL_SCORE for *_, s in it.residuals)
    warn = f'<span class="warn">{left} face(s) left per verify</span>' if left else ""
    if len(it.residuals) > left:
        warn += f' <span class="suspects">{len(it.residuals) - left} suspect(s)</span>'

    where = f" &middot; frame {it.frame}" if it.kind == "video" else ""
    return f"""<figure class="item" data-key="{key}" data-run="{html.escape(it.run_id)}" data-sha="{it.output_sha256}">
  <div class="thumb"><img class="thumbnail" alt="{key}" src="data:image/jpeg;base64,{img}">
  <svg viewBox="0 0 {it.width} {it.height}" preserveAspectRatio="none">{boxes}</svg></div>
  <figcaption><code>{key}</code>{where} &middot; {len(it.faces)} redacted region(s) {warn}<br>
  <label><input type="radio" name="v{i}" value="fine"> looks fine</label>
  <label><input type="radio" name="v{i}" value="face_left"> face left</label>
  <input class="note" type="text" placeholder="note (optional)"></figcaption>
</figure>"""


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{title}</title>
<style>
body {{ font: 14px sans-serif; margin: 1em; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }}
figure.item {{ margin: 0; padding: 6px; border: 1px solid #ccc; width: 372px; }}
.thumb {{ position: relative; line-height: 0; }}
.thumb img {{ width: 100%; height: auto; display: block; }}
.thumb svg {{ position: absolute; left: 0; top: 0; width: 100%; height: 100%; }}
rect.face {{ fill: none; stroke: #00c853; stroke-width: 2px; vector-effect: non-scaling-stroke; }}
rect.residual {{ fill: rgba(255,0,0,0.25); stroke: red; stroke-width: 3px; vector-effect: non-scaling-stroke; }}
rect.suspect {{ fill: none; stroke: orange; stroke-width: 1.5px; stroke-dasharray: 3 2; vector-effect: non-scaling-stroke; }}
.warn {{ color: #c00; font-weight: bold; }} .suspects {{ color: #b60; }}
figure.fine {{ border-color: #00c853; }} figure.face_left {{ border-color: red; background: #fee; }}
</style></head>
<body>
<h1>Review of {dst}</h1>
<p>{n} outputs drawn at random (seed {seed}). Green outlines: regions the run redacted; red:
faces <code>sanitizer verify</code> found outside them (dashed orange: weaker suspects). Mark each file, then
<button id="export">download verdicts (JSON)</button> and record them with
<code>sanitizer review DST --import verdicts.json</code>.
Reviewer: <input id="reviewer" type="text" placeholder="your name"></p>
<div class="grid">
{cards}
</div>
<script id="meta" type="application/json">{meta}</script>
<script>
document.querySelectorAll("figure.item input[type=radio]").forEach(function (r) {{
  r.addEventListener("change", function () {{
    var fig = r.closest("figure");
    fig.classList.remove("fine", "face_left");
    fig.classList.add(r.value);
  }});
}});
document.getElementById("export").addEventListener("click", function () {{
  var meta = JSON.parse(document.getElementById("meta").textContent);
  meta.reviewer = document.getElementById("reviewer").value;
  meta.exported = new Date().toISOString();
  meta.verdicts = [];
  document.querySelectorAll("figure.item").forEach(function (fig) {{
    var picked = fig.querySelector("input[type=radio]:checked");
    if (!picked) return;
    meta.verdicts.push({{key: fig.dataset.key, run_id: fig.dataset.run,
      output_sha256: fig.dataset.sha, verdict: picked.value,
      note: fig.querySelector("input.note").value}});
  }});
  var blob = new Blob([JSON.stringify(meta, null, 1)], {{type: "application/json"}});
  var a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "verdicts-" + meta.review_id + ".json";
  a.click();
}});
</script>
</body></html>
"""


def import_verdicts(dst: storage.Location, text: str, source: str) -> list[dict[str, Any]]:
    """Record an exported verdicts JSON as DST/_audit/reviews rows."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReviewError(f"{source}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("verdicts"), list):
        raise ReviewError(f"{source}: not a verdicts file of `sanitizer review` (no verdicts list)")
    review_id = str(data.get("review_id") or uuid.uuid4().hex[:12])
    reviewed_at = _when(data.get("exported"))
    rows = []
    for n, v in enumerate(data["verdicts"], 1):
        if not isinstance(v, dict) or v.get("verdict") not in VERDICTS or not v.get("key"):
            raise ReviewError(
                f"{source}: verdict {n} needs a key and a verdict of {' or '.join(VERDICTS)}"
            )
        rows.append(
            dict(
                review_id=review_id,
                reviewed_at=reviewed_at,
                key=str(v["key"]),
                run_id=str(v.get("run_id", "")),
                output_sha256=str(v.get("output_sha256", "")),
                verdict=v["verdict"],
                reviewer=str(data.get("reviewer", "")),
                note=str(v.get("note", "")),
            )
        )
    if not rows:
        raise ReviewError(f"{source}: no verdicts in it (nothing marked on the page)")
    audit.write_part(dst, "reviews", review_id, rows)
    return rows


def _when(text: Any) -> float:
    if isinstance(text, str):
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()
