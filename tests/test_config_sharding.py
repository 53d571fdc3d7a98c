"""Sharding constraints that TorchRec cannot run are refused when the config loads, naming the table."""

import pytest

from fusionrec.errors import ConfigError
from fusionrec.pipeline.config import load_config


def test_data_parallel_sequence_table_is_refused(repo_root):
    with pytest.raises(ConfigError, match=r"sharding\.constraints\.item\.sharding_types: data_parallel is not supported"):
        load_config(repo_root / "configs/demo.yaml", ["sharding.constraints.item.sharding_types=[data_parallel]"])


def test_data_parallel_bag_table_is_accepted(repo_root):
    cfg = load_config(repo_root / "configs/demo.yaml", ["sharding.constraints.tag.sharding_types=[data_parallel]"])
    assert cfg.sharding.constraints["tag"].sharding_types == ["data_parallel"]
