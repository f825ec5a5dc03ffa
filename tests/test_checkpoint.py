"""Checkpoints: atomic writes, and loading that refuses anything that is not plainly ours."""

import os
import pickle

import pytest
import torch

from mt.checkpoint import VERSION, load_checkpoint, save_checkpoint
from mt.files import InputError


def test_round_trip_keeps_tensors_numbers_and_bytes(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(4.0)}, "step": 7, "spm_model": b"\x00\x01"})
    content = load_checkpoint(path)
    assert content["step"] == 7 and content["spm_model"] == b"\x00\x01"
    assert torch.equal(content["model"]["w"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a lambda cannot be pickled
        save_checkpoint(path, {"step": 2, "unsaveable": lambda: None})
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


@pytest.mark.parametrize("kind", ["truncated", "garbage", "foreign", "old_version", "missing"])
def test_unreadable_or_foreign_checkpoints_are_refused_in_one_line(tmp_path, kind):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(100)}, "step": 3})
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    elif kind == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    elif kind == "old_version":
        torch.save({"format": "mt-checkpoint", "version": VERSION + 1}, path)
    elif kind == "missing":
        path.unlink()
    with pytest.raises(InputError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    expected = {"truncated": "not a readable checkpoint", "garbage": "not a readable checkpoint",
                "foreign": "not a checkpoint of this toolkit", "old_version": "format version",
                "missing": "no such checkpoint"}[kind]
    assert expected in message


class Payload:
    """Pickles as a call to os.system: loading it with plain pickle would run the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_carrying_a_pickled_payload_is_refused_and_the_payload_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "mt-checkpoint", "version": VERSION, "model": {}, "extra": Payload(marker)}, path)
    with pytest.raises(InputError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


def flip_a_weight_byte(path) -> None:
    """Change one byte in the middle of the largest tensor stored in a checkpoint file (torch.save's zip stores
    each tensor's bytes uncompressed)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        largest = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    with open(path, "rb") as f:  # the local header's extra field may differ from the central directory's
        f.seek(largest.header_offset + 26)
        name_length, extra_length = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    header_length = 30 + name_length + extra_length
    data[largest.header_offset + header_length + largest.file_size // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_checkpoint_with_one_changed_weight_byte_is_refused_and_an_old_one_without_checksum_loads(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(1000), "b": torch.zeros(3, dtype=torch.bfloat16)},
                           "step": 3, "spm_model": b"\x00\x01", "betas": (0.9, 0.98)})
    assert load_checkpoint(path)["step"] == 3
    flip_a_weight_byte(path)
    torch.load(path, weights_only=True)  # torch itself reads it without a word
    with pytest.raises(InputError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and "damaged" in str(error.value) and "\n" not in str(error.value)
    # A checkpoint of this toolkit from before checksums: loaded as it is.
    torch.save({"format": "mt-checkpoint", "version": VERSION, "model": {"w": torch.ones(2)}, "step": 5}, path)
    assert load_checkpoint(path)["step"] == 5


def test_the_checksum_sees_every_kind_of_content():
    from mt.checkpoint import payload_checksum

    base = {"model": {"w": torch.ones(3)}, "step": 1, "spm": b"ab", "betas": [0.9, 0.98], "head": None}
    changed = [{**base, "model": {"w": torch.tensor([1.0, 1.0, 1.0 + 2**-20])}}, {**base, "step": 2},
               {**base, "spm": b"ac"}, {**base, "betas": [0.9, 0.99]}, {**base, "head": {"layer": 1}},
               {**base, "model": {"w": torch.ones(3, dtype=torch.float64)}}, {**base, "model": {"w": torch.ones(1, 3)}}]
    checksums = {payload_checksum(content) for content in changed}
    assert len(checksums) == len(changed) and payload_checksum(base) not in checksums
    assert payload_checksum(base) == payload_checksum({key: base[key] for key in reversed(list(base))})
