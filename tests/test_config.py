"""Experiment config: typed loading, overrides, and errors that name the file and the key."""

import pytest

from fusionrec.typedconfig import ConfigError, apply_overrides
from fusionrec.pipeline.config import load_config

DEMO = "configs/demo.yaml"


def test_demo_config_loads(repo_root):
    cfg = load_config(repo_root / DEMO)
    assert cfg.schema.task_names == ["click", "like", "convert"]
    assert cfg.model.bottom.type == "dtrn" and cfg.model.fusion.type == "adatt"
    assert cfg.features.sequence_tables == ["item"]
    assert [f.name for f in cfg.features.pooled_features] == ["user_id", "item_category", "user_tags"]
    assert cfg.sharding.constraints["user"].sharding_types == ["row_wise"]


def test_overrides_by_path_and_list_name(repo_root):
    cfg = load_config(
        repo_root / DEMO,
        ["train.max_steps=7", "tasks.like.weight=0.5", "model.fusion.expert_dims=[8, 4]", "data.train=/x/*.parquet"],
    )
    assert cfg.train.max_steps == 7
    assert cfg.tasks[1].weight == 0.5
    assert cfg.model.fusion.expert_dims == [8, 4]
    assert cfg.data.train == "/x/*.parquet"


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("train.learning_rate=0.1", "train.learning_rate", "unknown key"),
        ("train.max_steps=ten", "train.max_steps", "expected an integer"),
        ("model.fusion.type=moe", "model.fusion.type", "unknown type 'moe'"),
        ("model.bottom.type=transformer", "model.bottom.type", "unknown type"),
        ("features.tables.0.dim=-1", "features.tables[0]", "must be positive"),
        ("tasks.convert.space=nope", "tasks", "another binary task"),
        ("sharding.constraints.user.sharding_types=[diagonal]", "sharding.constraints.user.sharding_types[0]", "one of"),
    ],
)
def test_bad_overrides_name_the_set_argument_and_key(repo_root, override, key, words):
    with pytest.raises(ConfigError) as err:
        load_config(repo_root / DEMO, ["data.batch_size=64", override])
    message = str(err.value)
    # The value came from --set, not from the file: the message names the argument as given,
    # first when the bad key is the overridden one, after the file when a check of the
    # enclosing section refused it.
    assert message.startswith(f"--set {override}: ") or message.startswith(f"{repo_root / DEMO} with --set {override}: ")
    assert "data.batch_size=64" not in message
    assert key in message and words in message


def test_bad_values_in_the_file_name_the_file(repo_root, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text((repo_root / DEMO).read_text().replace("log_every: 50", "log_every: fifty"))
    with pytest.raises(ConfigError, match=r"bad.yaml: train.log_every: expected an integer"):
        load_config(path, ["train.max_steps=3"])


def test_missing_required_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("features: {tables: [{name: t, num_embeddings: 10, dim: 4}], sparse: [{name: a, table: t}]}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: tasks: required key is missing"):
        load_config(path)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="no list element 'ghost'"):
        apply_overrides({"tasks": [{"name": "a"}]}, ["tasks.ghost.weight=1"])
