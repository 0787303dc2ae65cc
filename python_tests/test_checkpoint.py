"""dhvc_ext.checkpoint: the temporaries SIGKILL leaves and their removal, and what ``load`` refuses: a checksum
that does not match, non-finite weights, a file that is no torch file. (Signals during writes:
test_fault_injection.py; the CLI's use of all this: test_cli.py.)"""
import os

import pytest
import torch

from dhvc_ext import checkpoint


def tiny_checkpoint(weight=1.0):
    trainer = dict(config={"n_clusters": 2}, n_features=3, epoch=4,
                   model={"w": torch.full((2, 3), weight), "steps": torch.tensor(7)}, history=[{"loss": 0.5}])
    return dict(format=checkpoint.FORMAT, format_version=checkpoint.FORMAT_VERSION, trainer=trainer,
                data={"source": "digits", "offset": torch.zeros(3)}, run={"best_epoch": 3})


def test_remove_temporaries_removes_only_those_of_the_named_files(tmp_path):
    names = ["last.pt", "best.pt", "run.json"]
    stale = [tmp_path / ".last.pt.abc123_z.tmp", tmp_path / ".best.pt.q9w8e7r6.tmp", tmp_path / ".run.json.x.tmp"]
    others = [tmp_path / ".notes.tmp", tmp_path / "last.pt", tmp_path / ".last.pt.abc", tmp_path / ".other.pt.ab.tmp"]
    for path in stale + others:
        path.write_bytes(b"x")
    removed = checkpoint.remove_temporaries(tmp_path, names)
    assert sorted(removed) == sorted(p.name for p in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in others)


def test_the_checksum_catches_a_changed_tensor_and_a_changed_number(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save(path, tiny_checkpoint())
    assert checkpoint.load(path)["checksum"].startswith("sha256:")
    for change in (lambda c: c["trainer"]["model"]["w"].__setitem__((1, 2), 1.0000001),
                   lambda c: c["run"].__setitem__("best_epoch", 2),
                   lambda c: c["data"]["offset"].__setitem__(0, -0.0)):  # -0.0 == 0.0, but other bytes
        saved = torch.load(path, weights_only=True)
        change(saved)
        torch.save(saved, tmp_path / "changed.pt")  # as bytes changed on disk: the old checksum kept
        with pytest.raises(checkpoint.CorruptCheckpointError, match="checksum"):
            checkpoint.load(tmp_path / "changed.pt")
    # format 1 (no checksum) still loads; format 2 without one does not
    old = dict(tiny_checkpoint(), format_version=1)
    torch.save(old, tmp_path / "v1.pt")
    assert checkpoint.load(tmp_path / "v1.pt")["trainer"]["epoch"] == 4
    torch.save(tiny_checkpoint(), tmp_path / "v2.pt")
    with pytest.raises(checkpoint.CorruptCheckpointError, match="checksum"):
        checkpoint.load(tmp_path / "v2.pt")


def test_non_finite_weights_are_refused(tmp_path):
    for value in (float("nan"), float("inf")):
        checkpoint.save(tmp_path / "bad.pt", tiny_checkpoint(value))
        with pytest.raises(checkpoint.NonFiniteCheckpointError, match=r"6 of 6 values of w"):
            checkpoint.load(tmp_path / "bad.pt")


def test_a_file_that_is_no_torch_file_is_corrupt_and_a_pickle_of_code_unsafe(tmp_path):
    (tmp_path / "noise.pt").write_bytes(bytes(range(7, 250)) * 10)
    with pytest.raises(checkpoint.CorruptCheckpointError, match="not a torch file") as info:
        checkpoint.load(tmp_path / "noise.pt")
    assert not isinstance(info.value, checkpoint.UnsafeCheckpointError)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(checkpoint.CorruptCheckpointError, match="not a torch file"):
        checkpoint.load(tmp_path / "empty.pt")
    torch.save({"trainer": os.system}, tmp_path / "code.pt")  # a zip archive whose pickle names a function
    with pytest.raises(checkpoint.UnsafeCheckpointError):
        checkpoint.load(tmp_path / "code.pt")
