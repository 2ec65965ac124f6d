"""Answer a data subject's request from the audit: which source files match (by key, by
content hash, or by a near-copy of a photo they sent in), the outputs derived from them, when
and by which run, and the faces found; and export every audit table for other tools.

Library code: returns data; sanitizer/cli.py prints it.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sanitizer import audit, phash, storage
from sanitizer.errors import SanitizerError

if TYPE_CHECKING:
    import pandas as pd


class QueryError(SanitizerError):
    """A query that cannot be answered (bad argument, unreadable query photo)."""


@dataclass
class Query:
    """Exactly one of key (a glob over source keys), sha256 (hex, a prefix of >= 8 digits
    is enough) or like (the bytes of a photo; near-copies within max_distance bits)."""

    key: str | None = None
    sha256: str | None = None
    like: bytes | None = None
    like_name: str = ""
    max_distance: int = phash.DEFAULT_MAX_DISTANCE
    like_hash: str = field(default="", init=False)

    def check(self) -> None:
        given = [n for n in ("key", "sha256", "like") if getattr(self, n) is not None]
        if len(given) != 1:
            raise QueryError("give exactly one of --key GLOB, --sha256 HEX, --like IMAGE")
        if self.sha256 is not None:
            s = self.sha256.strip().lower()
            if len(s) < 8 or any(c not in "0123456789abcdef" for c in s):
                raise QueryError(
                    f"--sha256 {self.sha256!r}: expected hex digits (at least 8 of the 64)"
                )
            self.sha256 = s
        if self.like is not None:
            try:
                self.like_hash = phash.of_image_bytes(self.like)
            except SanitizerError as exc:
                raise QueryError(f"{self.like_name or '--like'}: {exc}") from None

    def describe(self) -> str:
        if self.key is not None:
            return f"key {self.key}"
        if self.sha256 is not None:
            return f"sha256 {self.sha256}"
        return f"like {self.like_name} (phash {self.like_hash}, max distance {self.max_distance})"


@dataclass
class Found:
    """Every files row of the matching sources (all runs), their detections and erasures."""

    query: Query
    files: pd.DataFrame  # files rows + `distance` (--like) + `output_present`
    detections: pd.DataFrame
    erasures: pd.DataFrame

    @property
    def sources(self) -> list[tuple[str, str]]:
        """(key, source sha256) of the matching sources, sorted."""
        pairs = self.files[["key", "source_sha256"]].drop_duplicates()
        return sorted((str(k), str(s)) for k, s in pairs.itertuples(index=False))

    def to_dict(self) -> dict[str, Any]:
        out = []
        for key, sha in self.sources:
            rows = self.files[(self.files.key == key) & (self.files.source_sha256 == sha)]
            runs = []
            for r in rows.sort_values("finished").itertuples():
                faces = self.detections[
                    (self.detections.key == key) & (self.detections.run_id == r.run_id)
                ]
                runs.append(
                    {
                        "run_id": r.run_id,
                        "finished": _iso(r.finished),
                        "status": r.status,
                        "error": r.error,
                        "output_uri": r.output_uri,
                        "output_sha256": r.output_sha256,
                        "n_faces": int(r.n_faces),
                        "faces": [
                            {
                                "frame": int(d.frame),
                                "x": round(float(d.x), 1),
                                "y": round(float(d.y), 1),
                                "w": round(float(d.w), 1),
                                "h": round(float(d.h), 1),
                                "score": round(float(d.score), 3),
                            }
                            for d in faces.itertuples()
                        ],
                    }
                )
            last = rows.sort_values("finished").iloc[-1]
            erased = self.erasures[self.erasures.key == key]
            item = {
                "key": key,
                "source_sha256": sha,
                "source_uri": str(last.source_uri),
                "kind": str(last.kind),
                "output_present": bool(last.output_present),
                "runs": runs,
                "erasures": [
                    {"erased_at": _iso(e.erased_at), "reason": e.reason, "removed": bool(e.removed)}
                    for e in erased.itertuples()
                ],
            }
            if "distance" in rows:
                item["distance"] = int(rows["distance"].min())
            out.append(item)
        return {"query": self.query.describe(), "sources": out}


def _iso(ts: Any) -> str:
    return ts.isoformat() if hasattr(ts, "isoformat") else str(ts)


def find(dst: storage.Location, query: Query) -> Found:
    """The files rows (every run) of the sources matching `query`."""
    query.check()
    files = audit.read(dst, "files")
    if query.key is not None:
        hit = files["key"].map(lambda k: fnmatch.fnmatchcase(k, query.key))
        matched = files[hit]
    elif query.sha256 is not None:
        matched = files[files["source_sha256"].str.startswith(query.sha256)]
    else:
        far = phash.LOW * phash.LOW + 1  # rows without a hash
        dist = files["phash"].fillna("").map(lambda h: phash.nearest(query.like_hash, h, far))
        close = files[dist <= query.max_distance]
        # every row of those sources (a skipped "unchanged" row carries no hash of its own)
        pairs = set(zip(close.key, close.source_sha256, strict=True))
        matched = files[
            [(k, s) in pairs for k, s in zip(files.key, files.source_sha256, strict=True)]
        ].copy()
        best = {}
        for k, s, d in zip(close.key, close.source_sha256, dist[close.index], strict=True):
            best[(k, s)] = min(best.get((k, s), 99), int(d))
        matched["distance"] = [
            best[(k, s)] for k, s in zip(matched.key, matched.source_sha256, strict=True)
        ]
    matched = matched[matched["source_sha256"] != ""].copy()  # e.g. failed before reading
    present = {k: storage.exists(dst, k) for k in set(matched["key"])}
    matched["output_present"] = matched["key"].map(present).astype(bool)
    dets = audit.read(dst, "detections")
    pairs = set(zip(matched.key, matched.run_id, strict=True))
    dets = dets[[(k, r) in pairs for k, r in zip(dets.key, dets.run_id, strict=True)]]
    erasures = audit.read(dst, "erasures")
    erasures = erasures[erasures.key.isin(set(matched.key))]
    return Found(query, matched.reset_index(drop=True), dets.reset_index(drop=True), erasures)


def export(dst: storage.Location, fmt: str, out_dir: str) -> list[tuple[str, int, str]]:
    """Write every audit table as DIR/<table>.csv or .jsonl; [(table, rows, path)]."""
    if fmt not in ("csv", "jsonl"):
        raise QueryError(f"unknown export format {fmt!r} (known: csv, jsonl)")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise QueryError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
    written = []
    for table in audit.SCHEMAS:
        df = audit.read(dst, table)
        for col in df.columns:  # timestamps as ISO 8601 (UTC) text in both formats
            if str(df[col].dtype).startswith("datetime64"):
                df[col] = df[col].map(lambda t: t.isoformat() if t is not None else "")
        path = os.path.join(out_dir, f"{table}.{fmt}")
        try:
            if fmt == "csv":
                df.to_csv(path, index=False)
            else:
                with open(path, "w", encoding="utf-8") as f:
                    for row in df.to_dict(orient="records"):
                        f.write(json.dumps(row, default=_plain, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise QueryError(f"cannot write {path}: {exc.strerror or exc}") from None
        written.append((table, len(df), path))
    return written


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)
