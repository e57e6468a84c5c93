"""Locations compare by what they resolve to, not by how they are typed: every spelling of one folder is the
same, a folder inside another is contained, and object-store URLs compare by protocol, endpoint and key."""

from __future__ import annotations

import os

import pytest

from isovol.pipeline.errors import InputError
from isovol.pipeline.io.locations import check_distinct, resolve


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """``tmp/a.ome.zarr/0`` and a symlink ``tmp/link`` to ``a.ome.zarr``; the working directory is ``tmp``."""
    (tmp_path / "a.ome.zarr" / "0").mkdir(parents=True)
    os.symlink(tmp_path / "a.ome.zarr", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "a.ome.zarr"


@pytest.mark.parametrize("spelling", ["a.ome.zarr", "./a.ome.zarr/", "a.ome.zarr//", "0/../../a.ome.zarr/.",
                                      "link", "link/", "{abs}", "file://{abs}", "{abs}/0/.."])
def test_every_spelling_of_one_folder_is_the_same(folder, spelling):
    other = spelling.format(abs=folder)
    if other.startswith("0/"):
        other = os.path.join("a.ome.zarr", other)
    assert resolve("a.ome.zarr").same(resolve(other))
    with pytest.raises(InputError, match="must not be the input"):
        check_distinct("a.ome.zarr", other)
    with pytest.raises(InputError, match="must not be the input"):
        check_distinct(other, str(folder))


def test_a_folder_inside_the_other_is_refused_both_ways(folder):
    with pytest.raises(InputError, match="must not contain the input: a.ome.zarr/0 lies inside ./link"):
        check_distinct("a.ome.zarr/0", "./link/")
    with pytest.raises(InputError, match="must not lie inside the input: link/0/new lies inside a.ome.zarr"):
        check_distinct("a.ome.zarr", "link/0/new")  # not there yet: its nearest existing folder decides


def test_a_bind_mount_like_alias_is_seen_through_inodes(folder, tmp_path):
    """Two paths whose strings share nothing but whose folders are one inode (what a bind mount gives; a
    hard-linked file shows the same without root)."""
    (folder / "0" / "chunk").write_bytes(b"x")
    os.link(folder / "0" / "chunk", tmp_path / "alias")
    assert resolve(str(tmp_path / "alias")).same(resolve(str(folder / "0" / "chunk")))


def test_neighbours_and_prefixes_are_distinct(folder, tmp_path):
    (tmp_path / "a.ome.zarr2").mkdir()
    check_distinct("a.ome.zarr", "a.ome.zarr2")
    check_distinct("a.ome.zarr", "b.ome.zarr")  # does not exist yet
    check_distinct("a.ome.zarr/0", "a.ome.zarr/1")
    check_distinct("a.ome.zarr", "s3://bucket/a.ome.zarr")


def test_an_hdf5_input_is_its_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stack.h5").write_bytes(b"")
    assert resolve("stack.h5:/raw").same(resolve("./stack.h5"))
    with pytest.raises(InputError, match="must not contain the input"):
        check_distinct("stack.h5:/raw", str(tmp_path))


S3 = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}, "key": "k", "secret": "s"}


@pytest.mark.parametrize("other, options", [
    ("s3://bucket/a.ome.zarr/", S3),
    ("s3a://bucket/a.ome.zarr", S3),
    ("s3://bucket//x/../a.ome.zarr", S3),
    ("s3://bucket/a.ome.zarr", {"endpoint_url": "HTTP://127.0.0.1:9000/"}),  # top-level, case, trailing slash
    ("s3://user:pw@bucket/a.ome.zarr", S3),
])
def test_object_store_spellings_are_the_same(other, options):
    assert resolve("s3://bucket/a.ome.zarr", S3).same(resolve(other, options))
    with pytest.raises(InputError, match="must not be the input"):
        check_distinct("s3://bucket/a.ome.zarr", other, S3, options)


def test_object_store_nesting_and_other_stores():
    with pytest.raises(InputError, match="must not contain the input"):
        check_distinct("s3://bucket/a.ome.zarr/0", "s3://bucket/a.ome.zarr", S3, S3)
    with pytest.raises(InputError, match="must not lie inside the input"):
        check_distinct("s3://bucket/a.ome.zarr", "s3://bucket/a.ome.zarr/0/", S3, S3)
    check_distinct("s3://bucket/a.ome.zarr", "s3://bucket/a.ome.zarr2", S3, S3)
    check_distinct("s3://bucket/a.ome.zarr", "s3://other/a.ome.zarr", S3, S3)
    other_endpoint = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9001"}}
    check_distinct("s3://bucket/a.ome.zarr", "s3://bucket/a.ome.zarr", S3, other_endpoint)  # two stores
    check_distinct("memory://bucket/a.ome.zarr", "s3://bucket/a.ome.zarr", {}, S3)


def test_an_unset_endpoint_is_the_environment_s(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    with pytest.raises(InputError, match="must not be the input"):
        check_distinct("s3://bucket/a.ome.zarr", "s3://bucket/a.ome.zarr/", S3, {})


def test_the_refusal_names_neither_credentials_nor_endpoint():
    secret = {"client_kwargs": {"endpoint_url": "http://AKIA:wJalrXUtnFEMI@127.0.0.1:9000"}}
    with pytest.raises(InputError) as info:
        check_distinct("s3://u:pw@bucket/a", "s3://bucket/a", secret, secret)
    assert "wJal" not in str(info.value) and "pw" not in str(info.value) and "127.0.0.1" not in str(info.value)
