"""The record of processing (GDPR Art. 30) a run writes: only what the controller configured,
plus what the tool itself did, stated from the run's own config and model.

The tool knows its own measures (which detector and model, how faces are redacted, that
metadata is stripped, that nothing half-processed is published); it cannot know the purpose,
legal basis, data subjects, recipients, retention or transfers of a dataset: those stay empty
until the controller fills in the config's `record` section.
"""

from __future__ import annotations

from sanitizer.config import Config

# a record without these says nothing about who processes what for which reason
REQUIRED_FIELDS = ("controller", "purpose", "legal_basis")

_METHODS = {
    "gaussian": "a Gaussian blur (sigma {blur_strength:g} x the face's side)",
    "pixelate": "pixelation ({blocks} blocks across a face)",
    "solid": "a solid fill",
}


def missing(cfg: Config) -> list[str]:
    """The required record fields the config leaves empty."""
    return [f"record.{name}" for name in REQUIRED_FIELDS if not getattr(cfg.record, name).strip()]


def warning(cfg: Config) -> str:
    """One line for the user when the record is incomplete ("" when it is complete)."""
    gaps = missing(cfg)
    if not gaps:
        return ""
    return (
        f"the record of processing has no {', '.join(gaps)}: the audit's runs row will leave "
        "them empty (fill in the config's `record` section; --require-record makes this an error)"
    )


def tool_measures(cfg: Config, detector_name: str, model_sha256: str) -> str:
    """What the tool did to every published file, from the run's own settings."""
    r = cfg.redact
    how = _METHODS.get(r.method, r.method).format(blur_strength=r.blur_strength, blocks=r.blocks)
    model = f" (model sha256 {model_sha256[:16]})" if model_sha256 else ""
    return (
        f"faces detected by {detector_name}{model} and redacted with {how}, "
        f"{r.shape} mask {r.margin:g}x the face box; "
        "image and video metadata of the originals not copied to outputs; "
        "fail-closed: a file not fully decoded, scanned and redacted is never published; "
        "originals never modified"
    )


def security_measures(cfg: Config, detector_name: str, model_sha256: str) -> str:
    """The run row's `security_measures`: the tool's measures, then the controller's own."""
    own = cfg.record.security_measures.strip()
    tool = "sanitizer: " + tool_measures(cfg, detector_name, model_sha256)
    return f"{tool}; controller: {own}" if own else tool
