"""What a done marker vouches for: the size and CRC-32C of the bytes each shard write stored, taken as zarr writes
them (no second read), and the check of stored bytes against it."""

import os
import zlib

import numpy as np

from isovol.pipeline.io.integrity import checksum, damage, vouch
from isovol.pipeline.io.omezarr import create_image, open_level0, vouch_shards


def test_checksum_is_crc32c():
    # the CRC-32C check value of RFC 3720 (iSCSI): "123456789" -> e3069283; zlib's CRC-32 differs
    assert checksum(b"123456789") == "e3069283"
    assert checksum(b"123456789") != f"{zlib.crc32(b'123456789'):08x}"


def test_damage_names_every_kind_of_harm():
    data = bytes(range(256)) * 40
    rec = vouch(data)
    assert rec == {"size": len(data), "crc32c": checksum(data)}
    assert damage(data, rec) is None
    assert "missing" in damage(None, rec)
    assert damage(data[: len(data) // 2], rec).startswith(f"{len(data) // 2} bytes, {len(data)} were written")
    assert "content differs" in damage(bytes(len(data)), rec)  # zeroed: same size, other bytes
    flipped = bytearray(data)
    flipped[1234] ^= 1
    assert "content differs" in damage(bytes(flipped), rec)
    assert damage(None, None) is None  # a shard of fill value only: zarr stores none
    assert "where the block wrote none" in damage(b"x", None)


def test_a_recording_array_vouches_for_the_bytes_on_disk(tmp_path):
    url = str(tmp_path / "out.ome.zarr")
    create_image(url, None, shape=(32, 20, 30), dtype=np.dtype("uint8"), chunks=(8, 10, 10), shards=(16, 20, 30),
                 voxel_size=(1.0, 1.0, 1.0), translation=(0.0, 0.0, 0.0), provenance={})
    arr = open_level0(url, recording=True)
    rng = np.random.default_rng(0)
    arr[:16] = rng.integers(0, 255, (16, 20, 30), dtype=np.uint8)
    arr[16:] = 0  # the fill value: zarr stores no shard
    vouched = vouch_shards(arr, (0, 0, 0), (32, 20, 30))
    assert set(vouched) == {"0/c/0/0/0", "0/c/1/0/0"}
    with open(os.path.join(url, "0", "c", "0", "0", "0"), "rb") as f:
        assert vouched["0/c/0/0/0"] == vouch(f.read())
    assert vouched["0/c/1/0/0"] is None and not os.path.exists(os.path.join(url, "0", "c", "1", "0", "0"))
    # once taken, a write is forgotten; a shard whose write was not seen (here: a plain array) is read back
    assert arr.store.take("0/c/0/0/0") == (False, None)
    assert vouch_shards(open_level0(url), (0, 0, 0), (16, 20, 30)) == {"0/c/0/0/0": vouched["0/c/0/0/0"]}
