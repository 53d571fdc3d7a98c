"""A checkpoint's saved config is read as today's loader reads it before it is compared."""

import pytest
import yaml

from fusionrec.errors import CheckpointMismatchError
from fusionrec.pipeline import binding
from fusionrec.pipeline.config import load_config


def _checkpoint_with(tmp_path, config: dict):
    (tmp_path / binding.CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp_path


def test_a_key_added_since_the_checkpoint_takes_its_default(repo_root, tmp_path):
    cfg = load_config(repo_root / "configs/demo.yaml")
    older = cfg.to_dict()
    for table in older["features"]["tables"]:
        table.pop("data_type")  # written before tables had a data_type
    binding.check_config(_checkpoint_with(tmp_path, older), cfg.to_dict(), "evaluate")


def test_a_real_difference_is_still_named(repo_root, tmp_path):
    cfg = load_config(repo_root / "configs/demo.yaml")
    older = cfg.to_dict()
    for table in older["features"]["tables"]:
        table.pop("data_type")
    older["tasks"][0], older["tasks"][1] = older["tasks"][1], older["tasks"][0]
    named = r"tasks: checkpoint \[like, click, convert\], config \[click, like, convert\]"
    with pytest.raises(CheckpointMismatchError, match=named):
        binding.check_config(_checkpoint_with(tmp_path, older), cfg.to_dict(), "evaluate")
