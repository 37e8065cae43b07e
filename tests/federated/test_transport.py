"""Folders through Flower records: byte-identical, deduplicated, and refused when wrong."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from mpu.errors import UpdateRejectedError
from mpu.federated.transport import from_records, pack_folders, to_records, write_folders


def _folder(path, shared, own, note="x"):
    path.mkdir(parents=True)
    save_file({"shared": shared, "own": own}, str(path / "model.safetensors"), {"format": "pt"})
    (path / "config.json").write_text(json.dumps({"note": note}))
    return path


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def two_copies(tmp_path):
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(64, 32, generator=g)
    return [
        _folder(tmp_path / f"copy-{i}", shared, torch.randn(8, 8, generator=g).to(torch.bfloat16))
        for i in (1, 2)
    ]


def test_round_trip_is_byte_identical_and_sends_shared_tensors_once(two_copies, tmp_path):
    packed = pack_folders(two_copies)
    # the 64×32 fp32 tensor and config.json are the same in both copies: each travels once
    assert len(packed.tensors) == 3
    assert packed.payload_bytes < packed.listed_bytes - 64 * 32 * 4 + 1
    got = from_records(to_records(packed), "test")  # through real Flower records
    out = write_folders(got, tmp_path / "out", "test")
    assert [p.name for p in out] == ["copy-1", "copy-2"]
    for src, dst in zip(two_copies, out, strict=True):
        for name in ("model.safetensors", "config.json"):
            assert _sha(src / name) == _sha(dst / name)


def test_only_and_names_select_and_rename(two_copies):
    packed = pack_folders(two_copies, ["a", "b"], only=("config.json",))
    assert [f["name"] for f in packed.manifest] == ["a", "b"]
    assert all(list(f["files"]) == ["config.json"] for f in packed.manifest)
    assert not packed.tensors


def test_oversized_reply_is_refused_before_anything_is_written(two_copies, tmp_path):
    packed = pack_folders(two_copies)
    with pytest.raises(UpdateRejectedError, match="more than the 100 bytes"):
        write_folders(packed, tmp_path / "out", "reply of c1", max_bytes=100)
    assert not (tmp_path / "out").exists()


def test_tampered_or_missing_parts_are_refused(two_copies, tmp_path):
    packed = pack_folders(two_copies)
    key = next(iter(packed.tensors))
    flipped = bytearray(packed.tensors[key])
    flipped[0] ^= 1
    packed.tensors[key] = bytes(flipped)
    with pytest.raises(UpdateRejectedError, match="differs from what was sent"):
        write_folders(packed, tmp_path / "a", "reply")
    assert not any(p.name.startswith(".model") or p.name == "model.safetensors"
                   for p in (tmp_path / "a").rglob("*"))  # hashed while written, then removed  # fmt: skip
    packed.tensors[key] = bytes(flipped[:-4])  # a truncated tensor: does not fit its header
    with pytest.raises(UpdateRejectedError, match="do not match the file's header"):
        write_folders(packed, tmp_path / "b", "reply")
    del packed.tensors[key]
    with pytest.raises(UpdateRejectedError, match="a part is missing"):
        write_folders(packed, tmp_path / "c", "reply")


@pytest.mark.parametrize("name", ["../evil", ".hidden", "a/b", ""])
def test_path_escapes_are_refused(two_copies, tmp_path, name):
    packed = pack_folders(two_copies)
    packed.manifest[0]["name"] = name
    with pytest.raises(UpdateRejectedError, match="refused file or folder name"):
        write_folders(packed, tmp_path / "out", "reply")


def test_a_message_without_our_records_is_refused():
    from flwr.app import ConfigRecord, RecordDict

    with pytest.raises(UpdateRejectedError, match="malformed message"):
        from_records(RecordDict({"mpu": ConfigRecord({"x": 1})}), "reply of c1")


def test_a_known_hash_is_used_and_a_wrong_one_is_caught_by_the_receiver(two_copies, tmp_path):
    weights = two_copies[0] / "model.safetensors"
    packed = pack_folders(two_copies, known_sha256={weights: _sha(weights)})
    write_folders(from_records(to_records(packed), "test"), tmp_path / "ok", "test")
    wrong = pack_folders(two_copies, known_sha256={weights: "0" * 64})
    with pytest.raises(UpdateRejectedError, match=r"copy-1/model\.safetensors: content differs"):
        write_folders(wrong, tmp_path / "bad", "test")


def test_views_of_the_files_pack_the_same_bytes_as_copies(two_copies, tmp_path):
    copied, viewed = pack_folders(two_copies), pack_folders(two_copies, views=True)
    assert copied.manifest == viewed.manifest
    assert {k: bytes(v) for k, v in viewed.tensors.items()} == copied.tensors
    assert all(isinstance(v, memoryview) for v in viewed.tensors.values())
    out = write_folders(viewed, tmp_path / "out", "test")
    assert _sha(out[1] / "model.safetensors") == _sha(two_copies[1] / "model.safetensors")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "manifest",
    [
        [{"name": "a", "files": ["model.safetensors"]}],  # files not a mapping
        [
            {
                "name": "a",
                "files": {"m.safetensors": {"header": "h", "tensors": [["t0"]], "size": 1}},
            }
        ],
        [{"name": "a", "files": {"m.safetensors": {"header": 3, "tensors": [], "size": 1}}}],
        ["a"],
    ],
)
def test_a_malformed_manifest_is_refused_before_anything_is_written(manifest, stream, tmp_path):
    import io

    from mpu.federated.transport import Packed

    with pytest.raises(UpdateRejectedError, match="malformed manifest"):
        write_folders(Packed(manifest, {}, {}), tmp_path / "out", "reply",
                      stream=io.BytesIO(b"") if stream else None)  # fmt: skip
    assert not (tmp_path / "out").exists()
