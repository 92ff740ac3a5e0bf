"""sidreasoner.storage on file:// URIs and plain paths, and URI parsing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidreasoner import storage
from sidreasoner.storage.api import symlinks


def test_parse_uri_and_unknown_scheme(tmp_path):
    assert str(storage.parse_uri("s3://bkt/a/b/")) == "s3://bkt/a/b"
    assert storage.parse_uri("gs://bkt").key == ""
    assert storage.parse_uri(f"file://{tmp_path}/x").key == str(tmp_path / "x")
    assert storage.parse_uri("rel/x").key == str(Path("rel/x").absolute())
    with pytest.raises(
        storage.UnsupportedSchemeError, match=r"ftp://h/x: unsupported scheme ftp://.*s3://, minio://, gs://"
    ):
        storage.download_file("ftp://h/x", tmp_path / "o")
    with pytest.raises(storage.UnsupportedSchemeError, match=r"s3:///x: no bucket name"):
        storage.exists("s3:///x")
    assert storage.is_remote("minio://b/k") and not storage.is_remote(tmp_path)


@pytest.mark.parametrize("as_uri", [True, False])
def test_local_file_and_folder_round_trip(tmp_path, as_uri):
    def u(p: Path) -> str:
        return f"file://{p}" if as_uri else str(p)

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.bin").write_bytes(os.urandom(3 * (1 << 20) + 1))
    assert storage.upload_file(src / "a.txt", u(tmp_path / "store" / "one.txt"))["size"] == 1
    assert storage.download_file(u(tmp_path / "store" / "one.txt"), tmp_path / "got.txt").read_text() == "a"
    manifest = storage.upload_dir(src, u(tmp_path / "store" / "folder"))
    assert (tmp_path / "store/folder/_SUCCESS").is_file() and sorted(manifest["files"]) == ["a.txt", "sub/b.bin"]
    assert storage.list_files(u(tmp_path / "store" / "folder")) == ["a.txt", "sub/b.bin"]
    assert storage.exists(u(tmp_path / "store" / "folder")) and not storage.exists(u(tmp_path / "nope"))
    assert storage.download_dir(u(tmp_path / "store" / "folder"), tmp_path / "out") == ["a.txt", "sub/b.bin"]
    assert (tmp_path / "out/sub/b.bin").read_bytes() == (src / "sub/b.bin").read_bytes()
    assert not (tmp_path / "out/_SUCCESS").exists()


def test_local_folder_without_marker(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "r.json").write_text("{}")
    with pytest.raises(storage.IncompleteUploadError, match=r"raw: incomplete upload"):
        storage.download_dir(tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert storage.download_dir(tmp_path / "raw", tmp_path / "out", require_marker=False) == ["r.json"]
    with pytest.raises(storage.NotFoundError, match=r"nope: no such object"):
        storage.download_file(tmp_path / "nope", tmp_path / "o")
    with pytest.raises(storage.NotFoundError, match=r"no such file to upload"):
        storage.upload_file(tmp_path / "nope", tmp_path / "o")
    with pytest.raises(storage.NotFoundError, match=r"nope: no such folder"):
        storage.list_files(tmp_path / "nope")


def test_local_listing_shows_links_as_themselves_and_never_follows_them(tmp_path):
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "secret.txt").write_text("not yours")
    (outside / "deep" / "x.bin").write_bytes(b"x")
    folder = tmp_path / "folder"
    (folder / "real").mkdir(parents=True)
    (folder / "real" / "a.txt").write_text("a")
    (folder / "to_outside_dir").symlink_to(outside)
    (folder / "real" / "loop").symlink_to(folder)
    assert storage.list_files(folder) == ["real/a.txt", "real/loop", "to_outside_dir"]
    assert symlinks(folder) == {"real/loop": str(folder), "to_outside_dir": str(outside)}
    storage.delete_files(folder, ["to_outside_dir", "real/loop"])  # removes the links, not what they point to
    assert storage.list_files(folder) == ["real/a.txt"] and (outside / "deep" / "x.bin").read_bytes() == b"x"


def test_download_dir_refuses_a_link_out_of_a_local_folder_and_copies_one_inside(tmp_path):
    (tmp_path / "secret.txt").write_text("not yours")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    (src / "b.txt").symlink_to("a.txt")
    assert storage.download_dir(src, tmp_path / "out", require_marker=False) == ["a.txt", "b.txt"]
    assert (tmp_path / "out" / "b.txt").read_text() == "a" and not (tmp_path / "out" / "b.txt").is_symlink()
    (src / "c.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(
        storage.StorageError,
        match=r"src/c\.txt: refusing a symbolic link to .*secret\.txt "
        r"\(outside the folder\)",
    ):
        storage.download_dir(src, tmp_path / "out2", require_marker=False)
    assert not (tmp_path / "out2").exists()
