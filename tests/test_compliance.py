"""Issue 14: the record of processing, find / erase on request, the review page (rendered in
headless Chromium), the perceptual hash. Unit tests build their own DST; the CLI tests run the
real entry point once on generated photos."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sanitizer import audit, phash, storage
from sanitizer.config import Config
from sanitizer.records import FileResult
from tests.conftest import run_cli
from tests.servers import s3_server  # noqa: F401 - fixture

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field")


def photo(name: str) -> np.ndarray:
    from skimage import data

    arr = getattr(data, name)()
    return np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr


def encode(arr: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def near_copy(arr: np.ndarray) -> bytes:
    """What a data subject sends in: resized to 60 %, re-encoded as a low-quality JPEG."""
    im = Image.fromarray(arr)
    im = im.resize((im.width * 3 // 5, im.height * 3 // 5), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=60)
    return buf.getvalue()


# --- perceptual hash ---------------------------------------------------------------------


def test_phash_finds_near_copies_and_not_other_photos():
    hashes = {n: phash.of_array(photo(n)) for n in PHOTOS}
    for name in PHOTOS:
        query = phash.of_image_bytes(near_copy(photo(name)))
        dists = {n: phash.distance(query, h) for n, h in hashes.items()}
        assert dists[name] <= 4, (name, dists)
        others = [d for n, d in dists.items() if n != name]
        assert min(others) > phash.DEFAULT_MAX_DISTANCE, (name, dists)


def test_phash_of_video_keyframes(tmp_path):
    import av

    path = str(tmp_path / "clip.mp4")
    frames = [photo("astronaut")[:256, :256], photo("coffee")[:256, :256]]
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 256, 256, "yuv420p"
        s.options = {"g": "10"}  # a keyframe every second
        for i in range(40):
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(frames[i // 20]), format="rgb24"
            )
            c.mux(s.encode(frame))
        c.mux(s.encode())
    hashes = phash.of_video(path).split()
    assert 2 <= len(hashes) <= phash.VIDEO_KEYFRAMES
    still = phash.of_image_bytes(near_copy(frames[1]))
    assert phash.nearest(still, " ".join(hashes), 64) <= 6
    assert phash.of_video(str(tmp_path / "missing.mp4")) == ""


# --- record of processing ----------------------------------------------------------------


def test_record_defaults_state_nothing_the_controller_did_not():
    from sanitizer import record

    cfg = Config()
    for name in (
        "controller",
        "purpose",
        "legal_basis",
        "data_categories",
        "data_subjects",
        "recipients",
        "retention",
        "transfers",
        "security_measures",
    ):
        assert getattr(cfg.record, name) == "", name
    assert record.missing(cfg) == ["record.controller", "record.purpose", "record.legal_basis"]
    measures = record.security_measures(cfg, "centerface", "ab" * 32)
    assert "centerface" in measures and "abababab" in measures and "Gaussian" in measures
    assert "fail-closed" in measures and "controller:" not in measures
    cfg.record.security_measures = "encrypted at rest"
    assert record.security_measures(cfg, "haar", "").endswith("controller: encrypted at rest")
    for name in record.REQUIRED_FIELDS:
        setattr(cfg.record, name, "x")
    assert record.warning(cfg) == ""


def test_default_yaml_record_matches_config():
    import yaml

    from tests.conftest import REPO

    data = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    assert data["record"] == {
        k: v
        for k, v in Config().to_dict()["record"].items()  # every field, same defaults
    }


# --- a DST built by hand: find, erase, hold back, review ----------------------------------


def make_dst(root: Path, names=PHOTOS, run_id="r1") -> storage.Location:
    return make_dst_at(storage.location(str(root)), names, run_id)


def make_dst_at(dst: storage.Location, names=PHOTOS, run_id="r1") -> storage.Location:
    """Outputs and audit rows as a run would leave them (the 'redaction' is a grey square)."""
    files, dets = [], []
    now = time.time()
    for i, name in enumerate(names):
        arr = photo(name)
        src_bytes = encode(arr)
        key = f"people/{name}.jpg"
        out = arr.copy()
        out[20:80, 30:90] = 128
        payload = encode(out)
        storage.put_bytes(dst, key, payload)
        import hashlib

        files.append(
            FileResult(
                run_id=run_id,
                key=key,
                source_uri=f"/src/{key}",
                source_sha256=hashlib.sha256(src_bytes).hexdigest(),
                size=len(src_bytes),
                kind="image",
                status="ok",
                error="",
                n_faces=1,
                output_uri=dst.uri(key),
                output_sha256=hashlib.sha256(payload).hexdigest(),
                detector="centerface",
                model_sha256="m",
                config_fingerprint="f",
                started=now - 100 + i,
                finished=now - 100 + i + 0.5,
                duration_ms=500.0,
                frames=1,
                fps=0.0,
                media_duration_ms=0.0,
                audio_kept=False,
                dropped_packets=0,
                worker="w",
                phash=phash.of_array(arr),
            ).to_row()
        )
        dets.append(
            dict(
                run_id=run_id,
                key=key,
                frame=0,
                t_ms=0.0,
                x=30.0,
                y=20.0,
                w=60.0,
                h=60.0,
                score=0.9,
                track_id=-1,
                detected=True,
            )
        )
    audit.write_part(dst, "files", f"{run_id}-000001", files)
    audit.write_part(dst, "detections", f"{run_id}-000001", dets)
    return dst


def test_find_by_key_sha_and_like(tmp_path):
    from sanitizer.lookup import Query, QueryError, find

    dst = make_dst(tmp_path / "dst")
    by_key = find(dst, Query(key="people/c*.jpg"))
    assert [k for k, _ in by_key.sources] == [
        "people/camera.jpg",
        "people/chelsea.jpg",
        "people/coffee.jpg",
    ]
    sha = by_key.files[by_key.files.key == "people/coffee.jpg"].source_sha256.iloc[0]
    assert [k for k, _ in find(dst, Query(sha256=sha[:12].upper())).sources] == [
        "people/coffee.jpg"
    ]
    like = find(dst, Query(like=near_copy(photo("rocket")), like_name="me.jpg"))
    assert [k for k, _ in like.sources] == ["people/rocket.jpg"]
    d = like.to_dict()["sources"][0]
    assert d["output_present"] and d["runs"][0]["faces"][0]["w"] == 60.0 and d["distance"] <= 4
    with pytest.raises(QueryError):
        find(dst, Query(key="a", sha256="abcdef12"))
    with pytest.raises(QueryError):
        find(dst, Query(sha256="xyz"))
    with pytest.raises(QueryError, match="me.txt"):
        find(dst, Query(like=b"not an image", like_name="me.txt"))


def test_erase_removes_records_and_holds_back(tmp_path):
    from sanitizer.erase import erase, held_back, skipped_rows
    from sanitizer.lookup import Query, find
    from sanitizer.records import MediaItem

    dst = make_dst(tmp_path / "dst")
    found = find(dst, Query(like=near_copy(photo("coffee")), like_name="me.jpg"))
    with pytest.raises(Exception, match="reason"):
        erase(dst, found, " ")
    preview = erase(dst, found, "request 1", dry_run=True)
    assert preview.removed == ["people/coffee.jpg"] and storage.exists(dst, "people/coffee.jpg")
    assert audit.read(dst, "erasures").empty
    done = erase(dst, found, "request 1 (email of 2026-11-28)")
    assert done.removed == ["people/coffee.jpg"]
    assert not storage.exists(dst, "people/coffee.jpg") and storage.exists(dst, "people/rocket.jpg")
    rows = audit.read(dst, "erasures")
    assert len(rows) == 1 and rows.reason[0].startswith("request 1") and rows.removed[0]
    assert rows.runs[0] == "r1" and "like me.jpg" in rows.matched_by[0]
    # the earlier audit rows stay
    assert "people/coffee.jpg" in set(audit.read(dst, "files").key)
    items = [
        MediaItem(f"people/{n}.jpg", f"/src/people/{n}.jpg", "image", "jpeg", 1, "")
        for n in ("coffee", "rocket")
    ]
    held = held_back(dst, items, skip=True)
    assert list(held) == ["people/coffee.jpg"] and held["people/coffee.jpg"].startswith("erased on")
    assert held_back(dst, items, skip=False) == {}  # run --force

    class Ctx:
        run_id, fingerprint, detector = "r2", "f", None

    ((row, dets),) = skipped_rows(items, held, Ctx)
    assert row["status"] == "skipped" and row["error"].startswith("erased on") and dets == []
    assert row["raw_key"] == "people/coffee.jpg" and row["config_fingerprint"] == "f"


def test_review_page_and_verdicts(tmp_path):
    from sanitizer import review

    dst = make_dst(tmp_path / "dst")
    items = review.sample(dst, 4, seed=7)
    assert len(items) == 4 and items == review.sample(dst, 4, seed=7)  # reproducible
    assert len(review.sample(dst, 50, seed=1)) == len(PHOTOS)
    text = review.page(dst, items, 7)
    assert text.count('class="thumbnail"') == 4 and text.count('class="face"') == 4
    assert "http://" not in text and "https://" not in text  # nothing fetched from a network
    verdicts = {
        "review_id": "rv1",
        "reviewer": "QA",
        "exported": "2026-11-29T10:00:00Z",
        "verdicts": [
            {"key": items[0].key, "run_id": "r1", "verdict": "fine", "note": ""},
            {"key": items[1].key, "run_id": "r1", "verdict": "face_left", "note": "ear"},
        ],
    }
    rows = review.import_verdicts(dst, json.dumps(verdicts), "v.json")
    assert len(rows) == 2
    df = audit.read(dst, "reviews")
    assert sorted(df.verdict) == ["face_left", "fine"] and set(df.reviewer) == {"QA"}
    with pytest.raises(review.ReviewError, match="v.json"):
        review.import_verdicts(dst, "{", "v.json")
    with pytest.raises(review.ReviewError, match="verdict 1"):
        review.import_verdicts(dst, json.dumps({"verdicts": [{"key": "a"}]}), "v.json")
    with pytest.raises(review.ReviewError, match="no published image"):
        review.sample(storage.location(str(tmp_path / "empty")), 3, 0)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return exe


def _headless(exe: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="sanitizer-chromium-") as profile:
        return subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )


@pytest.mark.integration
def test_review_page_renders_in_headless_chromium(tmp_path):
    import cv2

    from sanitizer import review

    exe = _chromium()
    dst = make_dst(tmp_path / "dst")
    n = 5
    page = tmp_path / "review.html"
    page.write_text(review.page(dst, review.sample(dst, n, seed=3), 3), encoding="utf-8")
    dom = _headless(exe, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('class="thumbnail"') == n
    assert dom.stdout.count('src="data:image/jpeg;base64,') == n
    assert "Uncaught" not in dom.stderr, dom.stderr[-2000:]  # the page's script runs cleanly
    shot = tmp_path / "shot.png"
    res = _headless(exe, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    rgb = np.asarray(Image.open(shot).convert("RGB"))
    # the thumbnails are the big non-white blocks of the page: find them
    ink = (rgb.min(axis=2) < 190).astype(np.uint8)
    ink = cv2.morphologyEx(ink, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(ink)
    blocks = [s for s in stats[1:] if s[cv2.CC_STAT_WIDTH] > 200 and s[cv2.CC_STAT_HEIGHT] > 100]
    assert len(blocks) == n, [list(s) for s in blocks]
    for s in blocks:  # a photo, not a flat area
        x, y, w, h = s[:4]
        assert rgb[y : y + h, x : x + w].std() > 20


# --- the real CLI, once --------------------------------------------------------------------


RECORD = """record:
  controller: "Example Research Ltd, privacy@example.org"
  purpose: "A face-free dataset for crowd research"
  legal_basis: "GDPR Art. 6(1)(e)"
"""


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("compliance")
    src = root / "src"
    src.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        (src / f"{name}.jpg").write_bytes(encode(photo(name), quality=92))
    cfg = root / "record.yaml"
    cfg.write_text(RECORD)
    dst = root / "dst"
    proc = run_cli("run", str(src), str(dst), "--config", str(cfg), "--workers", "1", "--json")
    return root, src, dst, cfg, proc


@pytest.mark.integration
def test_cli_run_json_then_config_show_and_summary(recorded_run):
    root, src, dst, cfg, proc = recorded_run
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout.strip())  # --json: stdout is exactly one JSON line
    assert len(proc.stdout.strip().splitlines()) == 1
    assert line["ok"] == 3 and line["failed"] == 0 and line["exit_code"] == 0
    assert "warning" not in proc.stderr  # the record is complete
    show = run_cli("config", "show", "--config", str(cfg))
    assert show.returncode == 0 and "controller: Example Research Ltd" in show.stdout
    assert f"fingerprint {Config().fingerprint()}" in show.stdout
    for args in (("audit", "summary", str(dst)), ("audit", str(dst))):  # the old form still works
        s = run_cli(*args)
        assert s.returncode == 0, s.stderr
        assert "Example Research Ltd" in s.stdout and "(not stated)" in s.stdout
        assert "files: {'ok': 3}" in s.stdout and "fail-closed" in s.stdout
    runs = pd.read_parquet(dst / "_audit" / "runs")
    assert runs.retention.item() == "" and runs.legal_basis.item() == "GDPR Art. 6(1)(e)"
    exported = run_cli("audit", "export", str(dst), "--format", "jsonl", "--out", str(root / "x"))
    assert exported.returncode == 0, exported.stderr
    files = [json.loads(x) for x in (root / "x" / "files.jsonl").read_text().splitlines()]
    assert len(files) == 3 and all(len(f["phash"]) == 16 for f in files)
    csv = run_cli("audit", "export", str(dst), "--format", "csv", "--out", str(root / "c"))
    assert csv.returncode == 0 and len(pd.read_csv(root / "c" / "detections.csv")) >= 1


@pytest.mark.integration
def test_cli_find_erase_rerun(recorded_run):
    root, src, dst, cfg, _ = recorded_run
    found = run_cli("audit", "find", str(dst), "--key", "astronaut.jpg")
    assert found.returncode == 0 and "1 source matching" in found.stdout
    assert "face frame 0" in found.stdout
    me = root / "me.jpg"
    me.write_bytes(near_copy(photo("coffee")))
    like = run_cli("audit", "find", str(dst), "--like", str(me), "--json")
    assert [s["key"] for s in json.loads(like.stdout)["sources"]] == ["coffee.jpg"]
    gone = run_cli("erase", str(dst), "--like", str(me), "--reason", "request 7")
    assert gone.returncode == 0, gone.stderr
    assert not (dst / "coffee.jpg").exists() and (dst / "chelsea.jpg").exists()
    assert pd.read_parquet(dst / "_audit" / "erasures").reason.tolist() == ["request 7"]
    nothing = run_cli("erase", str(dst), "--key", "nobody.jpg", "--reason", "r")
    assert nothing.returncode == 1 and "nothing matches" in nothing.stderr
    rerun = run_cli("run", str(src), str(dst), "--config", str(cfg), "--quiet")
    assert rerun.returncode == 0 and rerun.stdout == "", rerun.stdout + rerun.stderr
    files = pd.read_parquet(dst / "_audit" / "files")
    last = files[files.run_id == files.sort_values("finished").run_id.iloc[-1]]
    coffee = last[last.key == "coffee.jpg"]
    assert coffee.status.item() == "skipped" and coffee.error.item().startswith("erased on")
    assert not (dst / "coffee.jpg").exists()


@pytest.mark.integration
def test_cli_record_warning_and_require_record(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(encode(photo("chelsea")))
    dst = tmp_path / "dst"
    strict = run_cli("run", str(src), str(dst), "--require-record")
    assert strict.returncode == 2 and "record.controller" in strict.stderr
    assert "nothing was processed" in strict.stderr and not dst.exists()
    required = tmp_path / "required.yaml"
    required.write_text("record:\n  required: true\n  controller: me\n")
    again = run_cli("run", str(src), str(dst), "--config", str(required))
    assert again.returncode == 2 and "record.purpose" in again.stderr and not dst.exists()
    loose = run_cli("run", str(src), str(dst), "--dry-run")
    assert loose.returncode == 0
    warnings = [x for x in loose.stderr.splitlines() if "warning" in x]
    assert len(warnings) == 1 and "record.legal_basis" in warnings[0]


# --- an object-store DST ---------------------------------------------------------------------


@pytest.mark.integration
def test_find_erase_export_review_on_s3(s3_server, tmp_path):  # noqa: F811
    import uuid

    import yaml

    bucket = f"b-{uuid.uuid4().hex[:10]}"
    s3_server.fs().mkdir(bucket)
    url = f"s3://{bucket}/clean"
    make_dst_at(storage.location(url, s3_server.storage_options), ("astronaut", "coffee", "rocket"))
    cfg = tmp_path / "s3.yaml"
    cfg.write_text(yaml.safe_dump({"output": {"storage_options": s3_server.storage_options}}))
    me = tmp_path / "me.jpg"
    me.write_bytes(near_copy(photo("rocket")))
    found = run_cli("audit", "find", url, "--like", str(me), "--json", "--config", str(cfg))
    assert found.returncode == 0, found.stderr
    assert [s["key"] for s in json.loads(found.stdout)["sources"]] == ["people/rocket.jpg"]
    gone = run_cli("erase", url, "--like", str(me), "--reason", "r", "--config", str(cfg))
    assert gone.returncode == 0, gone.stderr
    fs = s3_server.fs()
    assert not fs.exists(f"{bucket}/clean/people/rocket.jpg")
    assert fs.exists(f"{bucket}/clean/people/coffee.jpg")
    out = tmp_path / "export"
    exp = run_cli("audit", "export", url, "--out", str(out), "--config", str(cfg))
    assert exp.returncode == 0 and len(pd.read_csv(out / "erasures.csv")) == 1
    page = tmp_path / "r.html"
    rev = run_cli("review", url, "--sample", "5", "--out", str(page), "--config", str(cfg))
    assert rev.returncode == 0, rev.stderr
    assert page.read_text().count('class="thumbnail"') == 2  # the erased output is not drawn


@pytest.mark.integration
def test_review_page_exports_verdicts_that_import_records(tmp_path):
    """A person marks two files and presses the button: the page's own script builds the JSON
    (captured instead of downloaded), and `import_verdicts` records it."""
    import html as html_mod
    import re

    from sanitizer import review

    exe = _chromium()
    dst = make_dst(tmp_path / "dst")
    text = review.page(dst, review.sample(dst, 3, seed=1), 1)
    clicks = """<script>
window.Blob = function (parts) { document.body.setAttribute("data-exported", parts.join("")); };
URL.createObjectURL = function () { return "about:blank"; };
HTMLAnchorElement.prototype.click = function () {};
document.getElementById("reviewer").value = "QA 1";
var radios = document.querySelectorAll("input[type=radio]");
radios[0].click(); radios[3].click();
document.querySelectorAll("input.note")[1].value = "ear left";
document.getElementById("export").click();
</script></body>"""
    page = tmp_path / "clicked.html"
    page.write_text(text.replace("</body>", clicks), encoding="utf-8")
    dom = _headless(exe, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    assert "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    exported = html_mod.unescape(re.search(r'data-exported="([^"]*)"', dom.stdout).group(1))
    doc = json.loads(exported)
    assert doc["reviewer"] == "QA 1" and doc["seed"] == 1
    assert [v["verdict"] for v in doc["verdicts"]] == ["fine", "face_left"]
    assert doc["verdicts"][1]["note"] == "ear left"
    rows = review.import_verdicts(dst, exported, "verdicts.json")
    assert [r["verdict"] for r in rows] == ["fine", "face_left"]
    assert audit.read(dst, "reviews").review_id.nunique() == 1


def test_review_shows_a_video_at_its_busiest_frame(tmp_path):
    import av

    from sanitizer import review

    dst = make_dst(tmp_path / "dst", ("astronaut",))
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        for i in range(12):
            arr = np.full((96, 128, 3), 20 * i, np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        c.mux(s.encode())
    storage.put_file(dst, "clips/a.mp4", str(path))
    files = audit.read(dst, "files").iloc[[0]].copy()
    files["key"], files["kind"], files["phash"] = "clips/a.mp4", "video", ""
    rows = files.drop(columns=["schema_version"]).to_dict(orient="records")
    for r in rows:
        r["started"] = r["finished"] = time.time() - 50
    audit.write_part(dst, "files", "r1-000002", rows)
    box = dict(run_id="r1", key="clips/a.mp4", t_ms=0.0, x=10.0, y=10.0, w=20.0, h=20.0)
    dets = [dict(box, frame=f, score=0.9, track_id=1, detected=True) for f in (3, 7, 7)]
    audit.write_part(dst, "detections", "r1-000002", dets)
    (clip,) = [s for s in review.sample(dst, 5, seed=0) if s.kind == "video"]
    assert clip.frame == 7 and len(clip.faces) == 2 and (clip.width, clip.height) == (128, 96)
    assert "frame 7" in review.page(dst, [clip], 0)
