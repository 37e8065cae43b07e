"""The direct data path: tensors over one TLS stream, gated by a one-time token, checked by the
SHA-256 that came through Flower."""

import hashlib
import io

import pytest
import torch
from safetensors.torch import save_file

from mpu.errors import UpdateRejectedError
from mpu.federated.certs import make_certs
from mpu.federated.direct import DirectPath, DirectServer
from mpu.federated.transport import (
    Packed,
    declared_bytes,
    pack_folders,
    stream_order,
    write_folders,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"), hosts=["127.0.0.1"], clients=1)


@pytest.fixture
def direct(certs):
    server = DirectServer(0, cert=certs.server_cert, key=certs.server_key, host="127.0.0.1")
    yield server, DirectPath("127.0.0.1", server.port, certs.ca_cert)
    server.close()


@pytest.fixture
def copies(tmp_path):
    g = torch.Generator().manual_seed(0)
    folders = []
    for i in (1, 2):
        folder = tmp_path / f"copy-{i}"
        folder.mkdir()
        tensors = {"a": torch.randn(300, 70, generator=g), "b": torch.randn(5, generator=g)}
        save_file(tensors, str(folder / "model.safetensors"), {"format": "pt"})
        folders.append(folder)
    return folders


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_copies_fetched_over_tls_are_the_published_bytes(direct, copies, tmp_path):
    server, path = direct
    packed = pack_folders(copies, views=True)
    token = server.offer(packed, 0, tmp_path / "staging")
    out = path.fetch(token, packed.without_tensors(), tmp_path / "out", "test")
    for src, dst in zip(copies, out, strict=True):
        assert _sha(src / "model.safetensors") == _sha(dst / "model.safetensors")


def test_an_upload_is_written_and_checked_then_the_attempt_closes(direct, copies, tmp_path):
    server, path = direct
    reply = pack_folders(copies, views=True)
    token = server.offer(reply.without_tensors(), declared_bytes(reply, "t"), tmp_path / "in")
    path.send(token, reply, "test")
    folders = server.take(token, reply.without_tensors(), "test")
    assert [f.parent for f in folders] == [tmp_path / "in"] * 2
    for src, dst in zip(copies, folders, strict=True):
        assert _sha(src / "model.safetensors") == _sha(dst / "model.safetensors")
    with pytest.raises(UpdateRejectedError, match="403"):  # one attempt, one use
        path.fetch(token, reply.without_tensors(), tmp_path / "again", "test")


def test_a_reply_that_announces_other_files_than_it_uploaded_is_refused(direct, copies, tmp_path):
    server, path = direct
    reply = pack_folders(copies)
    token = server.offer(reply.without_tensors(), declared_bytes(reply, "t"), tmp_path / "in")
    path.send(token, reply, "test")
    other = pack_folders(copies[:1])
    with pytest.raises(UpdateRejectedError, match="manifest differs from the upload"):
        server.take(token, other.without_tensors(), "test")
    assert not (tmp_path / "in").exists()


def test_a_wrong_or_withdrawn_token_reads_nothing(direct, copies, tmp_path):
    server, path = direct
    packed = pack_folders(copies)
    token = server.offer(packed, 0, tmp_path / "in")
    with pytest.raises(UpdateRejectedError, match="403 unknown or closed token"):
        path.fetch(token[:-2] + "xx", packed.without_tensors(), tmp_path / "a", "test")
    server.withdraw(token)
    with pytest.raises(UpdateRejectedError, match="403"):
        path.fetch(token, packed.without_tensors(), tmp_path / "b", "test")


def test_an_upload_larger_than_the_model_is_refused_before_writing(direct, copies, tmp_path):
    server, path = direct
    reply = pack_folders(copies)
    token = server.offer(reply.without_tensors(), declared_bytes(reply, "t") - 1, tmp_path / "in")
    with pytest.raises(UpdateRejectedError, match=r"refused the upload: .*refused before writing"):
        path.send(token, reply, "test")
    with pytest.raises(UpdateRejectedError, match=r"no update arrived .*refused before writing"):
        server.take(token, reply.without_tensors(), "test")
    assert not (tmp_path / "in").exists()


def test_a_tampered_stream_is_refused_and_its_file_not_kept(direct, copies, tmp_path):
    server, path = direct
    packed = pack_folders(copies)
    tampered = {k: bytearray(v) for k, v in packed.tensors.items()}
    next(iter(tampered.values()))[0] ^= 1
    token = server.offer(packed.with_tensors(tampered), 0, tmp_path / "in")
    with pytest.raises(UpdateRejectedError, match=r"copy-1/model\.safetensors: content differs"):
        path.fetch(token, packed.without_tensors(), tmp_path / "out", "round 1 copies")
    assert not list((tmp_path / "out").rglob("*.safetensors"))


def test_a_stream_cut_short_is_refused(copies, tmp_path):
    packed = pack_folders(copies)
    body = b"".join(packed.tensors[k] for k in stream_order(packed))
    with pytest.raises(UpdateRejectedError, match="the direct stream ended early"):
        write_folders(packed.without_tensors(), tmp_path / "out", "test",
                      stream=io.BytesIO(body[:-10]))  # fmt: skip
    out = write_folders(packed.without_tensors(), tmp_path / "ok", "test", stream=io.BytesIO(body))
    assert _sha(out[1] / "model.safetensors") == _sha(copies[1] / "model.safetensors")


def test_a_client_that_does_not_trust_the_certificate_is_refused(direct, tmp_path):
    server, _ = direct
    other = make_certs(tmp_path / "other", hosts=["127.0.0.1"], clients=1)
    token = server.offer(Packed([], {}, {}), 0, tmp_path / "in")
    with pytest.raises(UpdateRejectedError, match="CERTIFICATE_VERIFY_FAILED"):
        DirectPath("127.0.0.1", server.port, other.ca_cert).fetch(
            token, Packed([], {}, {}), tmp_path / "out", "test")  # fmt: skip


@pytest.mark.slow
def test_a_round_by_the_direct_path_equals_the_file_path(twin_jobs, certs, tmp_path):
    """The Flower messages carry no tensor; the result is the file path's, bit for bit."""
    from federation_kit import LoopbackGrid, assert_bit_identical, file_path_rounds

    from mpu.federated.client_app import ClientSide
    from mpu.federated.deploy import free_port
    from mpu.federated.server_app import FederationConfig, serve

    workdir, twin, data = twin_jobs
    side = ClientSide(name="alice", workdir=tmp_path / "client", data=str(data), split="forget01",
                      method="NPO", ca=str(certs.ca_cert))  # fmt: skip
    grid, carried = LoopbackGrid([side]), []
    push = grid.push_messages

    def spy(messages):
        carried.extend(len(m.content["tensors"]) for m in messages if "tensors" in m.content)
        return push(messages)

    grid.push_messages = spy
    cfg = FederationConfig(workdir, rounds=1, direct_port=free_port(),
                           direct_certs=str(certs.folder))  # fmt: skip
    done = serve(grid, cfg)
    assert done["rounds"] == 1 and carried == [0]
    assert done["bytes_sent"] > 0 and done["bytes_received"] > 0
    file_path_rounds(twin, tmp_path / "files", data=data, split="forget01", method="NPO", rounds=1)
    assert_bit_identical(workdir, twin)
