import pytest

from sanitizer import manifest, storage


@pytest.mark.parametrize(
    "head, expected",
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", ("image", "jpeg")),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ("image", "png")),
        (b"GIF89a\x01\x00", ("image", "gif")),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", ("image", "webp")),
        (b"II*\x00\x08\x00\x00\x00", ("image", "tiff")),
        (b"MM\x00*\x00\x00\x00\x08", ("image", "tiff")),
        (b"BM" + b"\x00" * 20, ("image", "bmp")),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", ("image", "heif")),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", ("image", "avif")),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", ("video", "mp4")),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00", ("video", "mov")),
        (b"\x00\x00\x00\x08wide\x00\x00\x00\x00mdat", ("video", "mov")),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", ("video", "webm")),
        (b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska", ("video", "mkv")),
        (b"RIFF\x00\x00\x00\x00AVI LIST", ("video", "avi")),
        (b"hello world, not media", ("other", "")),
        (b"", ("other", "")),
        (b"%PDF-1.7\n", ("other", "")),
    ],
)
def test_sniff(head, expected):
    assert manifest.sniff(head) == expected


def test_build_lists_recursively_by_content(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "photo.txt").write_bytes(
        b"\xff\xd8\xff\xe0" + b"\x00" * 100
    )  # JPEG named .txt
    (tmp_path / "video.jpg").write_bytes(b"\x00\x00\x00\x20ftypisom" + b"\x00" * 100)
    (tmp_path / "readme.md").write_text("# hi")
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / "empty.png").write_bytes(b"")
    items = {i.key: i for i in manifest.build(storage.location(str(tmp_path)))}
    assert set(items) == {"a/b/photo.txt", "video.jpg", "readme.md", "empty.png", ".hidden"}
    assert items["a/b/photo.txt"].kind == "image"
    assert items["video.jpg"].kind == "video"
    assert items["readme.md"].kind == "other" and items["empty.png"].kind == "other"
    assert len(items["readme.md"].sha256) == 64 and items["readme.md"].size == 4
    # hidden and empty files are listed (to be recorded as skipped), never opened
    assert items[".hidden"].skip.startswith("hidden") and items[".hidden"].sha256 == ""
    assert items["empty.png"].skip == "empty file"


def test_build_on_memory_filesystem():
    loc = storage.location("memory://sanitizer-test-manifest")
    storage.put_bytes(loc, "x/y.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    items = manifest.build(loc)
    assert [(i.key, i.kind) for i in items] == [("x/y.png", "image")]
    assert items[0].uri.startswith("memory://")


def test_run_manifest_trusts_media_extensions_without_reading(tmp_path, monkeypatch):
    (tmp_path / "a.jpg").write_bytes(b"not really a jpeg")
    (tmp_path / "b.MP4").write_bytes(b"x" * 10)
    (tmp_path / "c.dat").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 10)
    reads = []
    real = storage.read_head
    monkeypatch.setattr(
        storage, "read_head", lambda loc, key, n: reads.append(key) or real(loc, key, n)
    )
    items = {
        i.key: i
        for i in manifest.build(
            storage.location(str(tmp_path)), with_hash=False, trust_extensions=True
        )
    }
    assert reads == ["c.dat"]  # only the file without a media extension is opened
    assert (items["a.jpg"].kind, items["b.MP4"].kind, items["c.dat"].kind) == (
        "image",
        "video",
        "image",
    )


def test_entries_record_what_is_not_processed(tmp_path):
    import os

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 10)
    os.symlink("d/a.jpg", tmp_path / "link.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / os.fsdecode(b"caf\xe9.jpg")).write_bytes(b"\xff\xd8\xff" + b"\x00" * 10)
    (tmp_path / "back\\slash.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 10)
    (tmp_path / "_audit").mkdir()
    (tmp_path / "_audit" / "x.parquet").write_bytes(b"PAR1")
    items = {i.key: i for i in manifest.build(storage.location(str(tmp_path)), with_hash=False)}
    assert items["link.jpg"].skip.startswith("symbolic link")
    assert items["pipe.jpg"].skip.startswith("named pipe")
    assert items[os.fsdecode(b"caf\xe9.jpg")].kind == "image"
    assert items["back\\slash.jpg"].kind == "image" and not items["back\\slash.jpg"].refuse
    assert items["_audit/x.parquet"].refuse.startswith("refused: reserved name")
    assert items["d/a.jpg"].kind == "image"


@pytest.mark.parametrize(
    "key, refused",
    [
        ("a/b.jpg", False),
        ("_other/x.jpg", False),
        ("x/_audit/y.jpg", False),  # reserved at the top level only
        ("_audit", True),
        ("_Audit/files/x.parquet", True),
        ("_sanitizer-lease", True),
        ("a/../b.jpg", True),
        ("a//b.jpg", True),
        ("n" * 256 + ".jpg", True),
    ],
)
def test_refused_keys(key, refused):
    assert bool(storage.refused(key)) == refused
