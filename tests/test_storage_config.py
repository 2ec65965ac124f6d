import json

import pytest

from sanitizer import config, storage
from sanitizer.errors import ConfigError, StorageError


@pytest.mark.parametrize(
    "key", ["../x.jpg", "/abs.jpg", "a/../../b", "a//b", "", "a/./b", "a\x00b"]
)
def test_unsafe_keys_rejected(key):
    with pytest.raises(StorageError):
        storage.safe_key(key)


def test_backslash_is_part_of_a_name():  # on POSIX file systems and object stores
    assert storage.safe_key("a\\..\\b.jpg") == "a\\..\\b.jpg"


@pytest.mark.parametrize(
    "inner, outer, expected",
    [
        ("/d/src/out", "/d/src", True),
        ("/d/src", "/d/src", True),
        ("/d/srcx", "/d/src", False),
        ("/d/out", "/d/src", False),
    ],
)
def test_is_inside(inner, outer, expected):
    assert storage.is_inside(storage.location(inner), storage.location(outer)) is expected


def test_fingerprint_stable_and_relevant():
    a, b = config.Config(), config.Config()
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16
    b.execution.workers = 7
    b.record.controller = "ACME"
    b.detect.threads = 4
    assert a.fingerprint() == b.fingerprint(), "execution/record settings do not change outputs"
    b.redact.method = "solid"
    assert a.fingerprint() != b.fingerprint()


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("redact:\n  method: pixelate\ndetect:\n  threshold: 0.3\n")
    cfg = config.load(p, {"detect": {"threshold": 0.5}})
    assert cfg.redact.method == "pixelate" and cfg.detect.threshold == 0.5


@pytest.mark.parametrize(
    "data, message",
    [
        ({"redact": {"method": "blur"}}, "unknown redaction method"),
        ({"detect": {"thresh": 0.1}}, "unknown option detect.thresh"),
        ({"bogus": {}}, "unknown config section"),
        ({"detect": {"threshold": "high"}}, "must be a number"),
        ({"detect": {"threshold": 1.5}}, "between 0 and 1"),
    ],
)
def test_bad_config_is_clear(data, message):
    with pytest.raises(ConfigError, match=message):
        config.from_dict(data)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")


def test_secrets_masked_in_record():
    cfg = config.from_dict(
        {
            "input": {
                "storage_options": {
                    "key": "AKIA",
                    "secret": "s3cr3t",
                    "client_kwargs": {"endpoint_url": "http://x"},
                }
            }
        }
    )
    d = json.loads(cfg.to_json())
    assert d["input"]["storage_options"]["key"] == "***"
    assert d["input"]["storage_options"]["secret"] == "***"
    assert d["input"]["storage_options"]["client_kwargs"]["endpoint_url"] == "http://x"


def test_default_yaml_matches_defaults():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    assert config.load(path) == config.Config()


def test_no_src_key_can_take_a_reserved_dst_name() -> None:
    """Every top-level DST name sanitizer writes (audit, staging area, lease) is refused as a
    SRC key, so no source file can be published into it."""
    from sanitizer import storage

    for name in storage.RESERVED:
        assert storage.refused(f"{name}/x.jpg").startswith("refused: reserved name")
        assert storage.refused(f"{name.upper()}/x.jpg").startswith("refused: reserved name")
    assert storage.refused("_staging/lease.json").startswith("refused: reserved name")
