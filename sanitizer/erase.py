"""Erasure on request (GDPR Art. 17): remove the outputs derived from matching sources, record
each erasure in DST/_audit/erasures, and keep later runs from publishing those sources again.

The audit rows of earlier runs stay: they are the record that the processing happened. They
hold no pixels (detections are boxes and scores; the perceptual hash reveals nothing of a face,
see phash.py).

Later runs skip an erased source key with the reason `erased on <date>` until a run with
`--force` (execution.skip_unchanged: false) publishes it again.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sanitizer import audit, storage
from sanitizer.errors import SanitizerError

if TYPE_CHECKING:
    from sanitizer.lookup import Found
    from sanitizer.records import MediaItem


@dataclass
class Erased:
    erasure_id: str
    rows: list[dict[str, Any]]  # the erasures rows written (one per matching source key)

    @property
    def removed(self) -> list[str]:
        return [r["key"] for r in self.rows if r["removed"]]


def erase(dst: storage.Location, found: Found, reason: str, dry_run: bool = False) -> Erased:
    """Remove the outputs at the keys of `found`'s sources; one erasures row per key."""
    if not reason.strip():
        raise SanitizerError("--reason is required: who asked, and the request's reference")
    erasure_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    files = found.files
    rows = []
    for key in sorted(set(files.key)):
        of_key = files[files.key == key].sort_values("finished")
        present = storage.exists(dst, key)
        out_sha = storage.sha256_of(dst, key) if present else ""
        if present and not dry_run:
            storage.remove(dst, key)
        ok = of_key[of_key.status == "ok"]
        matched_by = found.query.describe()
        if "distance" in of_key:
            matched_by += f": distance {int(of_key['distance'].min())}"
        rows.append(
            dict(
                erasure_id=erasure_id,
                erased_at=time.time(),
                key=key,
                source_sha256=" ".join(dict.fromkeys(of_key.source_sha256)),
                output_uri=dst.uri(key) if present else "",
                output_sha256=out_sha,
                removed=present,
                matched_by=matched_by,
                reason=reason.strip(),
                runs=" ".join(dict.fromkeys(ok.run_id)),
            )
        )
    if rows and not dry_run:
        audit.write_part(dst, "erasures", erasure_id, rows)
    return Erased(erasure_id, rows)


# --- the hook of job.py: later runs skip erased sources ------------------------------------


def held_back(dst: storage.Location, items: list[MediaItem], skip: bool) -> dict[str, str]:
    """key -> "erased on <date>" for the listed items erased since their last publication;
    {} when `skip` is False (run --force) or nothing was ever erased at DST."""
    if not skip or not audit.parts(dst, "erasures"):
        return {}  # (and no pandas import on the way to the cluster start)
    erasures = audit.read(dst, "erasures")
    last_erased = erasures.groupby("key")["erased_at"].max()
    files = audit.read(dst, "files")
    last_ok = files[files.status == "ok"].groupby("key")["finished"].max()
    out = {}
    for item in items:
        if item.kind == "other":
            continue
        when = last_erased.get(item.key)
        if when is None:
            continue
        republished = last_ok.get(item.key)
        if republished is not None and republished > when:
            continue  # a --force run published it again after the erasure
        out[item.key] = f"erased on {when.strftime('%Y-%m-%d')} (sanitizer erase; --force to redo)"
    return out


def skipped_rows(
    items: list[MediaItem], erased: dict[str, str], ctx: Any
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """A `skipped` files row (and no detections) per erased item; ctx: process.Context."""
    from sanitizer.process import file_result  # not at the top: `sanitizer erase` needs no media

    now = time.time()
    return [
        (
            file_result(
                ctx, item, status="skipped", error=erased[item.key], started=now, finished=now
            ).to_row(),
            [],
        )
        for item in items
        if item.key in erased
    ]
