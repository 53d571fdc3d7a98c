"""Checkpoint publication: atomic rename, newest-complete lookup, pruning, reload."""

import json

import torch

from fusionrec.pipeline import checkpoint as ckpt


def _save(run_dir, step, value, keep_last=2):
    state = {"model": {"w": torch.full((3,), float(value))}}
    return ckpt.save_checkpoint(run_dir, step, state, {"samples_seen": step * 10, "world_size": 1}, [], {"a": 1}, keep_last)


def test_save_publishes_complete_checkpoint_and_reloads(tmp_path):
    path = _save(tmp_path, 5, 1.5)
    assert path.name == "step_00000005"
    assert json.loads((path / "meta.json").read_text()) == {"step": 5, "samples_seen": 50, "world_size": 1}
    assert (path / "config.yaml").is_file() and (path / "plan.json").is_file()
    assert not list(ckpt.checkpoint_dir(tmp_path).glob(".tmp-*"))
    state = {"model": {"w": torch.zeros(3)}}
    ckpt.load_checkpoint(path, state)
    assert torch.equal(state["model"]["w"], torch.full((3,), 1.5))


def test_interrupted_saves_are_never_picked(tmp_path):
    good = _save(tmp_path, 10, 2.0)
    root = ckpt.checkpoint_dir(tmp_path)
    (root / ".tmp-step_00000020").mkdir()  # a save that crashed before publication
    (root / ".tmp-step_00000020" / "__0_0.distcp").write_bytes(b"partial")
    (root / "step_00000030").mkdir()  # a directory without meta.json is not a checkpoint
    assert ckpt.latest_checkpoint(tmp_path) == good


def test_keep_last_prunes_oldest(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, step, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]


def test_read_meta_names_incomplete_dir(tmp_path):
    try:
        ckpt.read_meta(tmp_path)
    except FileNotFoundError as err:
        assert str(tmp_path) in str(err) and "meta.json" in str(err)
    else:
        raise AssertionError("read_meta accepted a directory without meta.json")
