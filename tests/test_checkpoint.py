"""Checkpoints: atomic, checksummed, keep-last-K, corrupted files skipped."""

import logging

import numpy as np
import pytest

from optim.checkpoint import CheckpointError, CheckpointManager, load


def _state(step):
    rng = np.random.default_rng(step)
    arrays = {"params": rng.standard_normal(100).astype(np.float32),
              "momentum": rng.standard_normal(100)}
    meta = {"epoch": step // 10, "position": step % 10,
            "rng": rng.bit_generator.state}
    return arrays, meta


def test_round_trip_bitwise(tmp_path):
    manager = CheckpointManager(tmp_path)
    arrays, meta = _state(7)
    manager.save(7, arrays, meta)
    loaded, loaded_meta = manager.load_latest()
    assert loaded.keys() == arrays.keys()
    for name in arrays:
        assert loaded[name].dtype == arrays[name].dtype
        assert loaded[name].tobytes() == arrays[name].tobytes()
    assert loaded_meta == dict(meta, step=7)
    restored = np.random.default_rng()
    restored.bit_generator.state = loaded_meta["rng"]
    again = np.random.default_rng(7)
    again.standard_normal(200)
    assert restored.random() == again.random()


def test_keeps_last_k_and_leaves_no_temporaries(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (10, 20, 30, 40):
        manager.save(step, *_state(step))
    assert [p.name for p in manager.paths()] == ["ckpt-0000000030.ckpt",
                                                 "ckpt-0000000040.ckpt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in manager.paths()]


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_newest_falls_back_to_previous(tmp_path, damage, caplog):
    manager = CheckpointManager(tmp_path)
    manager.save(1, *_state(1))
    newest = manager.save(2, *_state(2))
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        newest.write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    else:
        newest.write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        arrays, meta = manager.load_latest()
    assert meta["step"] == 1
    assert "skipping checkpoint" in caplog.text
    with pytest.raises(CheckpointError):
        load(newest)


def test_no_checkpoint_and_bad_arguments(tmp_path):
    assert CheckpointManager(tmp_path).load_latest() is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CheckpointManager(tmp_path / "missing")
    with pytest.raises(ValueError, match="keep must be an int >= 1, got 0"):
        CheckpointManager(tmp_path, keep=0)
    with pytest.raises(ValueError, match="reserved"):
        CheckpointManager(tmp_path).save(1, {"__meta__": np.zeros(1)}, {})
