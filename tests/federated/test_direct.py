"""The direct data path: tensors over one TLS stream, gated by a one-time token, checked by the
SHA-256 that came through Flower."""

import json

import pytest
import torch
from safetensors.torch import save_file

from mpu.errors import UpdateRejectedError
from mpu.federated.certs import make_certs
from mpu.federated.direct import DirectPath, DirectServer, listing, split_stream
from mpu.federated.transport import pack_folders, write_folders


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


def test_copies_fetched_over_tls_are_the_published_bytes(direct, copies, tmp_path):
    server, path = direct
    packed = pack_folders(copies)
    token = server.offer(packed.tensors, limit=10**6)
    got = path.fetch(token, listing(packed.tensors), "test")
    out = write_folders(packed.without_tensors().with_tensors(got), tmp_path / "out", "test")
    for src, dst in zip(copies, out, strict=True):
        assert (src / "model.safetensors").read_bytes() == (dst / "model.safetensors").read_bytes()


def test_an_upload_reaches_the_attempt_and_closes_it(direct, copies):
    server, path = direct
    packed = pack_folders(copies)
    token = server.offer({}, limit=sum(map(len, packed.tensors.values())))
    listed = path.send(token, packed.tensors, "test")
    got = server.take(token, json.loads(listed), "test")
    assert {k: bytes(v) for k, v in got.items()} == packed.tensors
    with pytest.raises(UpdateRejectedError, match="403"):  # one attempt, one use
        path.fetch(token, [], "test")


def test_a_wrong_or_withdrawn_token_reads_nothing(direct, copies):
    server, path = direct
    token = server.offer(pack_folders(copies).tensors, limit=10)
    with pytest.raises(UpdateRejectedError, match="403 unknown or closed token"):
        path.fetch(token[:-2] + "xx", [], "test")
    server.withdraw(token)
    with pytest.raises(UpdateRejectedError, match="403"):
        path.fetch(token, [], "test")


def test_an_upload_larger_than_the_model_is_refused_unread(direct, copies):
    server, path = direct
    packed = pack_folders(copies)
    token = server.offer({}, limit=sum(map(len, packed.tensors.values())) - 1)
    with pytest.raises(UpdateRejectedError, match="refused the upload: 413"):
        path.send(token, packed.tensors, "test")
    with pytest.raises(UpdateRejectedError, match="without sending its updates"):
        server.take(token, listing(packed.tensors), "test")


def test_a_list_that_does_not_describe_the_stream_is_refused():
    with pytest.raises(UpdateRejectedError, match="holds 10 bytes, its list declares 12"):
        split_stream(bytes(10), [["a", 6], ["b", 6]], "test")
    with pytest.raises(UpdateRejectedError, match="malformed tensor list"):
        split_stream(bytes(10), [["a", -1]], "test")


def test_a_tampered_stream_is_refused_by_the_files_sha256(direct, copies, tmp_path):
    server, path = direct
    packed = pack_folders(copies)
    tampered = {k: bytearray(v) for k, v in packed.tensors.items()}
    next(iter(tampered.values()))[0] ^= 1
    token = server.offer(tampered, limit=0)
    got = path.fetch(token, listing(packed.tensors), "round 1 copies")
    with pytest.raises(UpdateRejectedError, match="content differs from what was sent"):
        write_folders(packed.with_tensors(got), tmp_path / "out", "round 1 copies")


def test_a_client_that_does_not_trust_the_certificate_is_refused(direct, tmp_path):
    server, _ = direct
    other = make_certs(tmp_path / "other", hosts=["127.0.0.1"], clients=1)
    token = server.offer({}, limit=0)
    with pytest.raises(UpdateRejectedError, match="CERTIFICATE_VERIFY_FAILED"):
        DirectPath("127.0.0.1", server.port, other.ca_cert).fetch(token, [], "test")


@pytest.mark.slow
def test_two_rounds_by_the_direct_path_equal_the_file_path(twin_jobs, certs, tmp_path):
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
    cfg = FederationConfig(workdir, rounds=2, direct_port=free_port(),
                           direct_certs=str(certs.folder))  # fmt: skip
    done = serve(grid, cfg)
    assert done["rounds"] == 2 and carried == [0, 0]
    assert done["bytes_sent"] > 0 and done["bytes_received"] > 0
    file_path_rounds(twin, tmp_path / "files", data=data, split="forget01", method="NPO", rounds=2)
    assert_bit_identical(workdir, twin)
