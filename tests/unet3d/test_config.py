from __future__ import annotations

import json

import pytest

from unet3d.config import PRESETS, ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name, tmp_path):
    cfg = preset(name)
    assert RunConfig.from_json(cfg.to_json()) == cfg
    path = tmp_path / "c.json"
    cfg.save(path)
    assert RunConfig.load(path) == cfg
    assert not list(tmp_path.glob(".*tmp*")), "atomic save left a temp file"


def test_yaml_config_loads(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  depth: 3\n  base_filters: 4\ndata:\n  crop: [16, 16, 16]\n")
    cfg = RunConfig.load(p)
    assert cfg.model.depth == 3 and cfg.data.crop == (16, 16, 16)


def test_nvidia_preset_is_the_reference_architecture():
    m = preset("nvidia").model
    assert m.filters == (32, 64, 128, 256, 320, 320)
    assert (m.norm, m.activation, m.upsampling, m.output_kernel) == ("instance", "leaky_relu",
                                                                      "transpose", 3)
    assert preset("nvidia").data.crop == (128, 128, 128)


@pytest.mark.parametrize("kwargs, field", [
    ({"depth": 1}, "model.depth"),
    ({"depth": 8}, "model.depth"),
    ({"norm": "layer"}, "model.norm"),
    ({"activation": "tanhh"}, "model.activation"),
    ({"base_filters": 0}, "model.base_filters"),
    ({"dropout": 1.5}, "model.dropout"),
    ({"deep_supervision": "yes"}, "model.deep_supervision"),
    ({"deep_supervision": True, "deep_supervision_heads": 5, "depth": 4}, "model.deep_supervision_heads"),
    ({"norm": "group", "group_norm_groups": 3}, "model.group_norm_groups"),
    ({"output_kernel": 2}, "model.output_kernel"),
    ({"depth": 2.5}, "model.depth"),
])
def test_model_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    ({"epochs": 0}, "train.epochs"),
    ({"learning_rate": 0.0}, "train.learning_rate"),
    ({"learning_rate": float("nan")}, "train.learning_rate"),
    ({"loss": "focal"}, "train.loss"),
    ({"precision": "fp16"}, "train.precision"),
    ({"xla": "maybe"}, "train.xla"),
    ({"warmup_epochs": 5, "epochs": 3}, "train.warmup_epochs"),
    ({"batch_size": True}, "train.batch_size"),
])
def test_train_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    ({"crop": (64, 64)}, "data.crop"),
    ({"crop": (64, -1, 64)}, "data.crop"),
    ({"fold": 5, "folds": 5}, "data.fold"),
    ({"foreground_ratio": 1.2}, "data.foreground_ratio"),
])
def test_data_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        DataConfig(**kwargs)


def test_cross_field_rules_state_the_rule_and_values():
    with pytest.raises(ConfigError, match=r"data.crop=\[80, 80, 80\] must be divisible by "
                                          r"2\*\*\(model.depth-1\)=32"):
        RunConfig(model=ModelConfig(depth=6), data=DataConfig(crop=(80, 80, 80)))
    with pytest.raises(ConfigError, match="train.loss='region' needs model.head='regions'"):
        RunConfig(train=TrainConfig(loss="region"))
    RunConfig(model=ModelConfig(head="regions"), train=TrainConfig(loss="region"))


def test_from_dict_names_unknown_fields_and_the_source():
    d = preset("cpu-small").to_dict()
    d["model"]["dept"] = 3
    with pytest.raises(ConfigError, match=r"my.json: unknown field\(s\) model.dept"):
        RunConfig.from_dict(d, source="my.json")
    with pytest.raises(ConfigError, match="my.json: not valid JSON"):
        RunConfig.from_json("{model: ", source="my.json")
    bad = preset("cpu-small").to_dict()
    bad["train"]["epochs"] = -3
    with pytest.raises(ConfigError, match=r"c.json: train.epochs=-3 must be >= 1"):
        RunConfig.from_json(json.dumps(bad), source="c.json")


def test_configs_are_frozen():
    cfg = preset("cpu-small")
    with pytest.raises(AttributeError):
        cfg.model.depth = 3  # type: ignore[misc]


def test_replace_overrides_and_revalidates():
    cfg = preset("cpu-small").replace(train={"epochs": 3})
    assert cfg.train.epochs == 3 and cfg.model == preset("cpu-small").model
    with pytest.raises(ConfigError):
        preset("cpu-small").replace(model={"depth": 9})


def test_with_epochs_clamps_the_warm_up():
    cfg = preset("cpu-small").replace(train={"warmup_epochs": 3})
    assert (cfg.with_epochs(2).train.epochs, cfg.with_epochs(2).train.warmup_epochs) == (2, 2)
    assert cfg.with_epochs(10).train.warmup_epochs == 3
    with pytest.raises(ConfigError, match="train.epochs=0 must be >= 1"):
        cfg.with_epochs(0)


@pytest.mark.parametrize("model, train, crop, want", [
    ({"depth": 4}, {}, [20, 33, 8], {"crop": (24, 40, 8)}),
    ({"depth": 6}, {}, [20, 33, 8], {"crop": (32, 64, 32)}),
    ({"depth": 3, "deep_supervision": True, "deep_supervision_heads": 3}, {}, [16] * 3,
     {"deep_supervision": True, "heads": 1}),
    ({"depth": 2, "deep_supervision": True}, {}, [16] * 3, {"deep_supervision": False}),
    ({"head": "softmax"}, {"loss": "region"}, [16] * 3, {"head": "regions"}),
    ({"head": "regions"}, {"loss": "dice"}, [16] * 3, {"head": "softmax"}),
    ({}, {"epochs": 2, "warmup_epochs": 5}, [16] * 3, {"warmup": 2}),
])
def test_repaired_from_dict_applies_each_rule(model, train, crop, want):
    d = {"model": model, "train": train, "data": {"crop": crop}}
    before = json.dumps(d)
    cfg = RunConfig.repaired_from_dict(d, source="s")
    assert json.dumps(d) == before  # the input is not changed
    got = {"crop": cfg.data.crop, "deep_supervision": cfg.model.deep_supervision,
           "heads": cfg.model.deep_supervision_heads, "head": cfg.model.head,
           "warmup": cfg.train.warmup_epochs}
    assert {k: got[k] for k in want} == want


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_valid_config_is_its_own_repair(name):
    assert RunConfig.repaired_from_dict(preset(name).to_dict()) == preset(name)


def test_repair_leaves_mistyped_values_to_validation():
    with pytest.raises(ConfigError, match=r"s: model.depth='4' must be a number"):
        RunConfig.repaired_from_dict({"model": {"depth": "4"}}, source="s")
    with pytest.raises(ConfigError, match="s: top level must be an object"):
        RunConfig.repaired_from_dict([], source="s")  # type: ignore[arg-type]
