"""Search spaces as data: parameter and space validation, space files, sample -> RunConfig."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from space_helpers import assert_config_matches, draw, extremes, make_custom_space

from spaces.presets import SPACES, get_space
from spaces.space import Choice, Float, Int, SearchSpace, SpaceError, load_space, space_from_dict
from unet3d.config import RunConfig, preset


@pytest.fixture
def custom_space() -> SearchSpace:
    return make_custom_space()

# ---------------------------------------------------------------------------------------------------
# Int / Float / Choice


@pytest.mark.parametrize("kwargs, match", [
    (dict(low=3.5, high=5), r"low=3\.5 must be an integer"),
    (dict(low=3, high=5.0), r"high=5\.0 must be an integer"),
    (dict(low="3", high=5), r"low='3' must be an integer"),
    (dict(low=True, high=5), r"low=True must be an integer"),
    (dict(low=1, high=5, step=1.5), r"step=1\.5 must be an integer"),
    (dict(low=6, high=3), r"low=6 must be <= high=3"),
    (dict(low=3, high=6, step=0), r"step=0 must be >= 1"),
    (dict(low=3, high=6, step=-1), r"step=-1 must be >= 1"),
    (dict(low=0, high=10, step=3), r"high - low = 10 must be a multiple of step=3"),
    (dict(low=0, high=8, log=True), r"log scale needs low >= 1"),
    (dict(low=-2, high=8, log=True), r"log scale needs low >= 1"),
    (dict(low=2, high=8, step=2, log=True), r"log scale needs low >= 1 and step 1"),
    (dict(low=2, high=8, log="false"), r"log='false' must be true or false"),
])
def test_int_rejects_bad_definitions(kwargs, match):
    with pytest.raises(SpaceError, match=match) as e:
        Int("model.depth", **kwargs)
    assert str(e.value).startswith("model.depth: ")


@pytest.mark.parametrize("kwargs, match", [
    (dict(low="0.1", high=1.0), r"low='0\.1' must be a finite number"),
    (dict(low=0.1, high=None), r"high=None must be a finite number"),
    (dict(low=False, high=1.0), r"low=False must be a finite number"),
    (dict(low=float("nan"), high=1.0), r"low=nan must be a finite number"),
    (dict(low=0.0, high=float("inf")), r"high=inf must be a finite number"),
    (dict(low=0.5, high=0.1), r"low=0\.5 must be <= high=0\.1"),
    (dict(low=0.0, high=0.1, log=True), r"log scale needs low > 0, got 0\.0"),
    (dict(low=-1e-3, high=0.1, log=True), r"log scale needs low > 0"),
    (dict(low=1e-3, high=0.1, log=1), r"log=1 must be true or false"),
])
def test_float_rejects_bad_definitions(kwargs, match):
    with pytest.raises(SpaceError, match=match) as e:
        Float("train.learning_rate", **kwargs)
    assert str(e.value).startswith("train.learning_rate: ")


@pytest.mark.parametrize("values, match", [
    ((), "values must be a non-empty list"),
    ([], "values must be a non-empty list"),
    ("instance", "values must be a non-empty list"),
    (None, "values must be a non-empty list"),
    (("a", "b", "a"), r"has duplicates"),
    ((1, 1.0), r"has duplicates"),                      # 1 and 1.0 are the same float
    ((None, "a"), r"value None must be a string, number or boolean"),
    ((["a"], "b"), r"value \['a'\] must be a string, number or boolean"),
    (({"a": 1},), r"must be a string, number or boolean"),
    ((3, "3"), r"mix types \(int, str\)"),
    ((True, 1), r"mix types \(bool, int\)"),
    ((False, 0.5), r"mix types \(bool, float\)"),
])
def test_choice_rejects_bad_definitions(values, match):
    with pytest.raises(SpaceError, match=match) as e:
        Choice("model.norm", values)
    assert str(e.value).startswith("model.norm: ")


def test_param_contains():
    i = Int("model.depth", 2, 10, step=2)
    assert [v for v in range(0, 13) if i.contains(v)] == [2, 4, 6, 8, 10]
    assert not i.contains(4.0) and not i.contains(True) and not i.contains("4")
    f = Float("train.learning_rate", 1e-4, 1e-2, log=True)
    assert f.contains(1e-4) and f.contains(1e-2) and f.contains(3e-3)
    assert not f.contains(1e-5) and not f.contains(0.011) and not f.contains(float("nan"))
    assert not f.contains(True) and not f.contains("0.001")
    c = Choice("model.deep_supervision", [False, True])
    assert c.values == (False, True)                                        # list -> tuple
    assert c.contains(True) and c.contains(False) and not c.contains(1) and not c.contains(0)
    n = Choice("model.base_filters", (8, 16))
    assert n.contains(16) and not n.contains(16.0) and not n.contains(True)


def test_choice_mixing_ints_and_floats_gives_floats():
    c = Choice("data.foreground_ratio", [0, 0.5, 1])
    assert c.values == (0.0, 0.5, 1.0) and all(type(v) is float for v in c.values)
    assert c.contains(1.0) and not c.contains(1)


# ---------------------------------------------------------------------------------------------------
# SearchSpace validation


def _space(*params, **kw) -> SearchSpace:
    return SearchSpace(name=kw.pop("name", "t"), params=tuple(params), **kw)


@pytest.mark.parametrize("name", ["model.dept", "model.", "depth", "bogus.depth", "train.depth",
                                  "data.crop_size", "model.depth.x"])
def test_space_rejects_unknown_fields(name):
    with pytest.raises(SpaceError, match=rf"space t: {re.escape(name)}: not a config field"):
        _space(Int(name, 3, 5))


def test_space_rejects_non_string_name_and_non_params():
    with pytest.raises(SpaceError, match="not a config field"):
        _space(Int(3, 3, 5))
    with pytest.raises(SpaceError, match="must be an Int, Float or Choice"):
        _space({"name": "model.depth", "type": "int"})


@pytest.mark.parametrize("param, match", [
    (Float("model.depth", 3.0, 5.0), r"model\.depth: is a int field, not float"),
    (Float("data.crop", 32.0, 64.0), r"data\.crop: is a int field, not float"),
    (Int("train.learning_rate", 1, 2), r"train\.learning_rate: is a float field, not int"),
    (Int("data.augment", 0, 1), r"data\.augment: is a float field, not int"),
    (Int("model.norm", 0, 1), r"model\.norm: is a str field, not int"),
    (Int("model.deep_supervision", 0, 1), r"model\.deep_supervision: is a bool field, not int"),
    (Float("train.loss", 0.0, 1.0), r"train\.loss: is a str field, not float"),
    (Choice("model.depth", ("3", "4")), r"model\.depth: is a int field; value\(s\) \['3', '4'\]"),
    (Choice("model.depth", (3.0, 4.0)), r"model\.depth: is a int field; value\(s\) \[3\.0, 4\.0\]"),
    (Choice("model.deep_supervision", (0, 1)), r"model\.deep_supervision: is a bool field"),
    (Choice("model.depth", (True, False)), r"model\.depth: is a int field"),
    (Choice("train.learning_rate", ("fast",)), r"train\.learning_rate: is a float field"),
    (Choice("model.norm", (1, 2)), r"model\.norm: is a str field"),
])
def test_space_rejects_type_mismatch(param, match):
    with pytest.raises(SpaceError, match=match) as e:
        _space(param)
    assert str(e.value).startswith("space t: ")


def test_space_accepts_ints_for_a_float_field():
    s = _space(Choice("data.foreground_ratio", (0, 1)), Choice("model.dropout", (0, 0.25)))
    assert s.to_run_config({"data.foreground_ratio": 1}).data.foreground_ratio == 1


def test_space_rejects_duplicate_params():
    with pytest.raises(SpaceError, match=r"space t: parameter\(s\) \['model.depth'\] defined twice"):
        _space(Int("model.depth", 3, 4), Float("train.learning_rate", 1e-3, 1e-2),
               Choice("model.depth", (3, 4)))


@pytest.mark.parametrize("param, match", [
    (Choice("model.norm", ("instance", "layer")), r"model\.norm='layer' gives an invalid configuration"),
    (Int("model.depth", 3, 9), r"model\.depth=9 gives an invalid configuration: .*model\.depth=9"),
    (Int("model.depth", 1, 4), r"model\.depth=1 gives an invalid configuration"),
    (Float("train.learning_rate", 1e-3, 2.0), r"train\.learning_rate=2\.0 gives an invalid"),
    (Float("data.augment", 0.0, 3.0), r"data\.augment=3\.0 gives an invalid configuration: .*flip_prob"),
    (Int("data.crop", -8, 32), r"data\.crop=-8 gives an invalid configuration: .*must be >= 1"),
    (Int("data.crop", 0, 32), r"data\.crop=0 gives an invalid configuration"),
    (Choice("train.precision", ("fp32", "fp8")), r"train\.precision='fp8' gives an invalid"),
    (Int("model.base_filters", 4, 128), r"model\.base_filters=128 gives an invalid configuration"),
])
def test_space_rejects_values_giving_invalid_configs(param, match):
    with pytest.raises(SpaceError, match=match) as e:
        _space(param)                      # base cpu-small: max_filters 64 < base_filters 128
    assert str(e.value).startswith("space t: ")


def test_space_refuses_to_search_the_head():
    with pytest.raises(SpaceError, match=r"model\.head: follows train\.loss"):
        _space(Choice("model.head", ("softmax", "regions")))


@pytest.mark.parametrize("base, fixed, match", [
    ("nope", {}, r"space t: unknown preset 'nope'"),
    ("cpu-small", {"train": {"epochs": 0}}, r"space t: .*train\.epochs=0"),
    ("cpu-small", {"train": {"nope": 1}}, r"space t: .*unknown field\(s\) train\.nope"),
    ("cpu-small", {"bogus": {"x": 1}}, r"space t: unknown section 'bogus'"),
    ("cpu-small", {"data": {"crop": [30, 30, 30]}}, r"space t: .*data\.crop=\[30, 30, 30\]"),
    ("cpu-small", {"train": 5}, r"space t: fixed=.* must map model/train/data"),
    ("cpu-small", {"train": [("epochs", 3)]}, r"space t: fixed=.* must map model/train/data"),
    ("cpu-small", [("train", {})], r"space t: fixed=.* must map model/train/data"),
])
def test_space_rejects_bad_base_and_fixed(base, fixed, match):
    with pytest.raises(SpaceError, match=match):
        _space(Int("model.depth", 3, 4), base=base, fixed=fixed)


def test_space_fixed_overrides_apply():
    s = _space(Int("model.depth", 3, 4), base="gpu-mid",
               fixed={"train": {"epochs": 7, "warmup_epochs": 2}, "model": {"dropout": 0.1}})
    cfg = s.to_run_config({"model.depth": 3})
    assert (cfg.train.epochs, cfg.train.warmup_epochs, cfg.model.dropout) == (7, 2, 0.1)
    assert cfg.model.depth == 3 and cfg.model.base_filters == preset("gpu-mid").model.base_filters


# ---------------------------------------------------------------------------------------------------
# Files: space_from_dict / load_space / get_space

GOOD_YAML = """\
# a user space
name: mine
base: cpu-small
fixed: {train: {steps_per_epoch: 20}, data: {max_val_cases: 2}}
params:
  model.depth: {type: int, low: 3, high: 5}
  model.base_filters: {type: int, low: 8, high: 32, step: 8}
  train.epochs: {type: int, low: 2, high: 16, log: true}
  train.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  data.foreground_ratio: {type: float, low: 0.2, high: 0.8}
  model.norm: {type: choice, values: [instance, batch]}
  model.deep_supervision: {type: choice, values: [false, true]}
  data.crop: {type: choice, values: [32, 48]}
"""

GOOD_EXPECTED = SearchSpace(
    name="mine", base="cpu-small",
    fixed={"train": {"steps_per_epoch": 20}, "data": {"max_val_cases": 2}},
    params=(Int("model.depth", 3, 5), Int("model.base_filters", 8, 32, step=8),
            Int("train.epochs", 2, 16, log=True), Float("train.learning_rate", 1e-4, 1e-2, log=True),
            Float("data.foreground_ratio", 0.2, 0.8), Choice("model.norm", ("instance", "batch")),
            Choice("model.deep_supervision", (False, True)), Choice("data.crop", (32, 48))))


def test_load_good_yaml_and_json(tmp_path):
    import yaml

    y = tmp_path / "mine.yaml"
    y.write_text(GOOD_YAML)
    assert load_space(y) == GOOD_EXPECTED
    assert get_space(str(y)) == GOOD_EXPECTED
    j = tmp_path / "mine.json"
    j.write_text(json.dumps(yaml.safe_load(GOOD_YAML)))
    assert load_space(j) == GOOD_EXPECTED
    cfg = load_space(j).to_run_config({"model.depth": 5, "data.crop": 48})
    assert cfg.data.crop == (48, 48, 48) and cfg.train.steps_per_epoch == 20
    # The name defaults to the file's stem; the base to cpu-small.
    y2 = tmp_path / "other.yml"
    y2.write_text("params:\n  model.depth: {type: choice, values: [3]}\n")
    s = load_space(y2)
    assert (s.name, s.base, dict(s.fixed), s.params) == ("other", "cpu-small", {},
                                                          (Choice("model.depth", (3,)),))


@pytest.mark.parametrize("name", sorted(SPACES) + ["custom"])
def test_to_dict_round_trips(name, custom_space, tmp_path):
    space = custom_space if name == "custom" else SPACES[name]
    assert space_from_dict(space.to_dict(), source="x") == space
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(space.to_dict()))
    assert load_space(p) == space


BAD_YAML = [
    ("base: cpu-small\n", r"'params' must be a non-empty mapping"),
    ("params: {}\n", r"'params' must be a non-empty mapping"),
    ("params: [model.depth]\n", r"'params' must be a non-empty mapping"),
    ("- a\n- b\n", r"top level must be a mapping with 'params'"),
    ("", r"top level must be a mapping with 'params'"),
    ("just a string\n", r"top level must be a mapping with 'params'"),
    ("parms: {}\n", r"unknown key\(s\) \['parms'\]"),
    ("params:\n  model.depth: {low: 3, high: 5}\n", r"params\.model\.depth: must be a mapping with 'type'"),
    ("params:\n  model.depth: 5\n", r"params\.model\.depth: must be a mapping with 'type'"),
    ("params:\n  model.depth: {type: integer, low: 3, high: 5}\n",
     r"params\.model\.depth: type='integer' must be int, float or choice"),
    ("params:\n  model.depth: {type: int, low: 3, high: 5, values: [3]}\n",
     r"params\.model\.depth: unknown key\(s\) \['values'\] for type int"),
    ("params:\n  train.learning_rate: {type: float, low: 0.1, high: 0.5, step: 0.1}\n",
     r"params\.train\.learning_rate: unknown key\(s\) \['step'\] for type float"),
    ("params:\n  model.norm: {type: choice, values: [batch], low: 1}\n",
     r"params\.model\.norm: unknown key\(s\) \['low'\] for type choice"),
    ("params:\n  model.depth: {type: int, low: 3}\n", r"params\.model\.depth: missing \['high'\]"),
    ("params:\n  model.depth: {type: int}\n", r"params\.model\.depth: missing \['high', 'low'\]"),
    ("params:\n  model.norm: {type: choice}\n", r"params\.model\.norm: missing \['values'\]"),
    ("params:\n  model.depth: {type: int, low: 3.5, high: 5}\n",
     r"params\.model\.depth: low=3\.5 must be an integer"),
    ("params:\n  model.depth: {type: int, low: 5, high: 3}\n", r"params\.model\.depth: low=5 must be <="),
    # YAML 1.1 reads 1e-4 (no dot) as a string: the message says so.
    ("params:\n  train.learning_rate: {type: float, low: 1e-4, high: 0.1}\n",
     r"params\.train\.learning_rate: low='1e-4' must be a finite number"),
    ("params:\n  model.norm: {type: choice, values: []}\n", r"params\.model\.norm: values must be"),
    ("params:\n  model.norm: {type: choice, values: instance}\n", r"params\.model\.norm: values must be"),
    ("params:\n  model.dept: {type: int, low: 3, high: 5}\n", r"model\.dept: not a config field"),
    ("params:\n  3: {type: int, low: 3, high: 5}\n", r"3: not a config field"),
    ("params:\n  model.depth: {type: float, low: 3, high: 5}\n", r"model\.depth: is a int field"),
    ("params:\n  model.norm: {type: choice, values: [instance, layer]}\n",
     r"model\.norm='layer' gives an invalid configuration"),
    ("base: nope\nparams:\n  model.depth: {type: int, low: 3, high: 5}\n", r"unknown preset 'nope'"),
    ("fixed: 5\nparams:\n  model.depth: {type: int, low: 3, high: 5}\n",
     r"'fixed' must map model/train/data"),
    ("fixed: {train: 5}\nparams:\n  model.depth: {type: int, low: 3, high: 5}\n",
     r"'fixed' must map model/train/data"),
    ("fixed: {train: {epoch: 5}}\nparams:\n  model.depth: {type: int, low: 3, high: 5}\n",
     r"unknown field\(s\) train\.epoch"),
    ("params: {model.depth: [\n", r"not valid YAML"),
    ("params:\n  model.depth: {type: int\n  low: 3}\n", r"not valid YAML"),
    ("params:\n\tmodel.depth: {type: int, low: 3, high: 5}\n", r"not valid YAML"),
]


BAD_JSON = [
    ('{"params": ', r"not valid JSON"),
    ("params:\n  model.depth: {type: int, low: 3, high: 5}\n", r"not valid JSON"),
    ('{"params": {"model.depth": {"type": "int", "low": 3, "high": 5},}}', r"not valid JSON"),
    ('[1, 2]', r"top level must be a mapping"),
    ('{"params": {"model.depth": {"type": "int", "low": 3}}}', r"params\.model\.depth: missing \['high'\]"),
    ('{"params": {"model.depth": {"low": 3, "high": 4}}}', r"params\.model\.depth: must be a mapping"),
    ('{"params": {"train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": "yes"}}}',
     r"params\.train\.learning_rate: log='yes' must be true or false"),
]


@pytest.mark.parametrize("suffix, text, match", [(".yaml", t, m) for t, m in BAD_YAML]
                         + [(".json", t, m) for t, m in BAD_JSON])
def test_bad_space_files_name_the_file_and_field(tmp_path, suffix, text, match):
    p = tmp_path / f"space{suffix}"
    p.write_text(text)
    with pytest.raises(SpaceError, match=match) as e:
        load_space(p)
    assert str(e.value).startswith(f"{p}: "), str(e.value)


def test_missing_file_and_unknown_space_name(tmp_path):
    with pytest.raises(SpaceError, match=r"nothere\.yaml: cannot read"):
        load_space(tmp_path / "nothere.yaml")
    with pytest.raises(SpaceError, match=r"nothere\.json: cannot read"):
        get_space(str(tmp_path / "nothere.json"))
    with pytest.raises(SpaceError, match=r"unknown space 'bratz': give one of demo, brats, nvidia"):
        get_space("bratz")
    assert get_space("brats") is SPACES["brats"]


@pytest.mark.parametrize("template", [
    "{tag} [\"touch {marker}\"]\n",
    "params:\n  model.depth: {tag} [\"touch {marker}\"]\n",
    "params:\n  model.depth: {{type: int, low: 3, high: 5}}\nname: {tag} [\"touch {marker}\"]\n",
])
def test_yaml_python_tags_are_refused_not_executed(tmp_path, template):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.yaml"
    p.write_text(template.format(tag="!!python/object/apply:os.system", marker=marker))
    with pytest.raises(SpaceError, match=r"not valid YAML .*python/object/apply:os\.system") as e:
        load_space(p)
    assert str(e.value).startswith(f"{p}: ")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------
# Sample -> RunConfig


@pytest.mark.parametrize("name", sorted(SPACES) + ["custom"])
def test_random_samples_give_the_sampled_config(name, custom_space):
    space = custom_space if name == "custom" else SPACES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    samples = extremes(space) + [draw(space, rng) for _ in range(400)]
    for s in samples:
        assert space.contains(s), s
        cfg = space.to_run_config(s)
        assert_config_matches(space, s, cfg)
        assert RunConfig.from_json(cfg.to_json()) == cfg
    # The draws did spread over the space (not one point repeated).
    for p in space.params:
        seen = {s[p.name] for s in samples}
        if isinstance(p, Choice):
            assert seen == set(p.values), p.name
        elif isinstance(p, Int):
            n = (p.high - p.low) // p.step + 1
            assert len(seen) == n if n <= 10 else len(seen) > 10, (p.name, seen)
        else:
            assert len(seen) > 100 and min(seen) == p.low and max(seen) == p.high, p.name


def test_a_log_scale_int_draws_both_of_its_bounds_and_nothing_outside():
    """Drawn log-uniformly over [low, high + 1) and floored, every integer of 2..32 comes up,
    the high bound 32 included (about 1 draw in 90), and nothing outside."""
    p = Int("train.epochs", 2, 32, log=True)
    rng = np.random.default_rng(0)
    seen = [p.sample(rng) for _ in range(3000)]
    assert all(type(v) is int for v in seen)
    assert set(seen) == set(range(2, 33))
    # log-uniform: 2 (from [2, 3)) is drawn far more often than 32 (from [32, 33))
    assert seen.count(2) > 5 * seen.count(32) > 0


@pytest.mark.parametrize("name", sorted(SPACES) + ["custom"])
def test_neighbours_move_one_or_two_parameters_one_step_inside_the_space(name, custom_space):
    space = custom_space if name == "custom" else SPACES[name]
    rng = np.random.default_rng(7)
    movable = [p for p in space.params if not (isinstance(p, Choice) and len(p.values) == 1)]
    for _ in range(300):
        point = space.sample(rng)
        near = space.neighbour(point, rng)
        assert space.contains(near), near
        moved = [p for p in space.params if near[p.name] != point[p.name]]
        assert len(moved) <= 2 and (moved or not movable), (point, near)
        for p in moved:
            if isinstance(p, Int):
                assert abs(near[p.name] - point[p.name]) == p.step
            elif isinstance(p, Choice) and all(isinstance(v, (int, float)) and not isinstance(
                    v, bool) for v in p.values):
                order = sorted(p.values)  # numbers: the next value up or down
                assert abs(order.index(near[p.name]) - order.index(point[p.name])) == 1


def test_a_float_neighbour_is_a_small_step_on_its_scale():
    rng = np.random.default_rng(0)
    lr = Float("train.learning_rate", 1e-4, 1e-2, log=True)
    ratios = [lr.neighbour(1e-3, rng) / 1e-3 for _ in range(2000)]
    # 0.25 of the range's log width (a factor 100) as the step's standard deviation: x3.2
    assert 0.9 < float(np.exp(np.std(np.log(ratios)))) < 3.5 and min(ratios) >= 0.1
    assert all(lr.low <= lr.neighbour(1e-2, rng) <= lr.high for _ in range(200))
    assert Int("model.depth", 3, 3).neighbour(3, rng) == 3
    assert Choice("model.norm", ("batch",)).neighbour("batch", rng) == "batch"


@pytest.mark.parametrize("sample, want", [
    ({"model.depth": 6, "data.crop": 33}, dict(crop=64)),
    ({"model.depth": 6, "data.crop": 100}, dict(crop=128)),
    ({"model.depth": 2, "data.crop": 21}, dict(crop=22)),
    ({"model.depth": 5, "data.crop": 20}, dict(crop=32)),
    ({"model.depth": 4, "data.crop": 24}, dict(crop=24)),
    ({"model.depth": 6}, dict(crop=32)),                                      # base crop 32
    ({"model.depth": 4, "model.deep_supervision": True, "model.deep_supervision_heads": 4},
     dict(ds=True, heads=2)),
    ({"model.depth": 3, "model.deep_supervision": True, "model.deep_supervision_heads": 4},
     dict(ds=True, heads=1)),
    ({"model.depth": 2, "model.deep_supervision": True, "model.deep_supervision_heads": 3},
     dict(ds=False, heads=1)),
    ({"model.depth": 6, "model.deep_supervision": True, "model.deep_supervision_heads": 3},
     dict(ds=True, heads=3)),
    ({"model.depth": 6, "model.deep_supervision": False, "model.deep_supervision_heads": 4},
     dict(ds=False, heads=4)),
    ({"train.loss": "region"}, dict(head="regions")),
    ({"train.loss": "dice"}, dict(head="softmax")),
    ({"train.loss": "dice_ce"}, dict(head="softmax")),
    ({"train.epochs": 2}, dict(epochs=2, warmup=2)),
    ({"train.epochs": 3}, dict(epochs=3, warmup=3)),
    ({"train.epochs": 32}, dict(epochs=32, warmup=3)),
    ({"data.augment": 0.0}, dict(aug=(0.0, 0.0, 0.0, 0.0))),
    ({"data.augment": 0.5}, dict(aug=(0.25, 0.1, 0.1, 0.05))),
    ({"data.augment": 1.0}, dict(aug=(0.5, 0.2, 0.2, 0.1))),
])
def test_derived_rules(custom_space, sample, want):
    cfg = custom_space.to_run_config(sample)
    assert_config_matches(custom_space, sample, cfg)
    if "crop" in want:
        assert cfg.data.crop == (want["crop"],) * 3
    if "ds" in want:
        assert (cfg.model.deep_supervision, cfg.model.deep_supervision_heads) == (want["ds"], want["heads"])
    if "head" in want:
        assert cfg.model.head == want["head"]
    if "epochs" in want:
        assert (cfg.train.epochs, cfg.train.warmup_epochs) == (want["epochs"], want["warmup"])
    if "aug" in want:
        d = cfg.data
        assert (d.flip_prob, d.intensity_scale, d.intensity_shift, d.noise_std) == \
            pytest.approx(want["aug"])


def test_region_loss_on_a_base_with_softmax_head_and_back():
    s = SPACES["brats"]
    assert s.base_config().model.head == "softmax"
    cfg = s.to_run_config({"train.loss": "region"})
    assert (cfg.train.loss, cfg.model.head, cfg.model.out_channels) == ("region", "regions", 3)
    cfg = s.to_run_config({"train.loss": "dice"})
    assert (cfg.model.head, cfg.model.out_channels) == ("softmax", 4)


@pytest.mark.parametrize("extra", [{"model.dept": 3}, {"model.dropout": 0.1}, {"depth": 4}])
def test_unknown_sample_keys_raise(extra):
    space = SPACES["demo"]
    sample = {**space.default_sample(), **extra}
    with pytest.raises(SpaceError, match=rf"space demo: sample has unknown parameter\(s\) "
                                         rf"\[{re.escape(repr(next(iter(extra))))}\]"):
        space.to_run_config(sample)


def test_partial_samples_use_the_base():
    space = SPACES["brats"]
    cfg = space.to_run_config({})
    assert cfg == space.base_config()
    cfg = space.to_run_config({"model.depth": 4})
    assert_config_matches(space, {"model.depth": 4}, cfg)
    assert cfg.model.base_filters == 32 and cfg.train.steps_per_epoch == 250


def test_out_of_space_values_are_still_checked_by_the_config():
    with pytest.raises(ValueError, match=r"model\.norm='layer'"):
        SPACES["demo"].to_run_config({"model.norm": "layer"})


# ---------------------------------------------------------------------------------------------------
# default_sample / contains / project


@pytest.mark.parametrize("name", sorted(SPACES) + ["custom"])
def test_default_sample_is_inside_and_valid(name, custom_space):
    space = custom_space if name == "custom" else SPACES[name]
    d = space.default_sample()
    assert list(d) == space.names
    assert space.contains(d)
    assert_config_matches(space, d, space.to_run_config(d))


def test_default_sample_values():
    # demo's base is cpu-small: depth 4, 8 filters, instance, lr 3e-3 (inside [1e-3, 1e-2]).
    assert SPACES["demo"].default_sample() == {
        "model.depth": 4, "model.base_filters": 8, "model.norm": "instance",
        "train.learning_rate": 3e-3, "train.loss": "dice_ce", "model.deep_supervision": False,
        "data.foreground_ratio": 0.5}
    b = SPACES["brats"].default_sample()
    assert b["data.augment"] == pytest.approx(0.5)          # nvidia preset noise_std 0.05 = 0.5 * 0.1
    assert b["train.xla"] == "on"                           # "auto" is not a choice: the first one
    assert b["data.crop"] == 128
    # Clipped into the bounds.
    s = _space(Int("model.depth", 5, 6), Float("train.learning_rate", 1e-4, 1e-3, log=True))
    assert s.default_sample() == {"model.depth": 5, "train.learning_rate": 1e-3}


def test_contains():
    space = SPACES["demo"]
    d = space.default_sample()
    assert space.contains(d)
    assert not space.contains({k: v for k, v in d.items() if k != "model.norm"})     # missing
    assert not space.contains({**d, "model.dropout": 0.1})                           # extra
    for k, bad in [("model.depth", 6), ("model.depth", 2), ("model.depth", 4.0),
                   ("model.base_filters", 32), ("model.norm", "group"),
                   ("train.learning_rate", 4e-3), ("train.learning_rate", 2e-4),
                   ("model.deep_supervision", 0), ("data.foreground_ratio", 0.9),
                   ("data.foreground_ratio", "0.5"), ("train.loss", "region")]:
        assert not space.contains({**d, k: bad}), (k, bad)
    for k, ok in [("model.depth", 3), ("model.depth", 5), ("train.learning_rate", 3e-4),
                  ("train.learning_rate", 3e-3),
                  ("data.foreground_ratio", 0.2), ("data.foreground_ratio", 0.8)]:
        assert space.contains({**d, k: ok}), (k, ok)


@pytest.mark.parametrize("p, v, want", [
    (Int("model.depth", 0, 10, step=2), 1.4, 2),        # nearest, not 0 (no double rounding)
    (Int("model.depth", 0, 10, step=2), 0.9, 0),
    (Int("model.depth", 0, 10, step=2), 6.9, 6),
    (Int("model.depth", 0, 10, step=2), 7.1, 8),
    (Int("model.depth", 0, 10, step=2), -5, 0),
    (Int("model.depth", 0, 10, step=2), 11.5, 10),
    (Int("model.depth", 3, 9, step=3), 100, 9),
    (Int("model.depth", 3, 9, step=3), 4.4, 3),
    (Int("model.depth", 3, 9, step=3), 4.6, 6),
    (Int("model.depth", 3, 6), 5.2, 5),
    (Int("model.depth", 2, 64, log=True), 0, 2),
    (Float("train.learning_rate", 1e-4, 1e-2, log=True), 2e-4, 2e-4),
    (Float("train.learning_rate", 1e-4, 1e-2, log=True), 1.0, 1e-2),
    (Float("train.learning_rate", 1e-4, 1e-2, log=True), 0, 1e-4),
    (Float("data.augment", 0.0, 1.0), 3, 1.0),
    (Choice("model.base_filters", (4, 8, 16)), 32, 16),
    (Choice("model.base_filters", (4, 8, 16)), 7, 8),
    (Choice("model.base_filters", (4, 8, 16)), 8, 8),
    (Choice("model.norm", ("batch", "group")), "instance", "batch"),
    (Choice("model.norm", ("batch", "instance")), "instance", "instance"),
    (Choice("model.deep_supervision", (True,)), False, True),
    (Choice("model.deep_supervision", (False, True)), True, True),
    (Choice("data.foreground_ratio", (0.25, 0.75)), 0.6, 0.75),
])
def test_project_examples(p, v, want):
    got = p.project(v)
    assert got == want and type(got) is type(want)
    assert p.contains(got)


def test_project_is_the_nearest_legal_value():
    rng = np.random.default_rng(7)
    for _ in range(300):
        low = int(rng.integers(-20, 20))
        step = int(rng.integers(1, 6))
        high = low + step * int(rng.integers(0, 8))
        p = Int("model.depth", low, high, step=step)
        v = float(rng.uniform(low - 10, high + 10))
        got = p.project(v)
        assert p.contains(got), (p, v, got)
        grid = range(low, high + 1, step)
        assert abs(got - v) == pytest.approx(min(abs(g - v) for g in grid)), (p, v, got)
        lo, hi = sorted(rng.uniform(-5, 5, size=2))
        f = Float("data.augment", float(lo), float(hi))
        assert f.project(v) == min(max(v, lo), hi)
    # Every legal value projects onto itself.
    for space in list(SPACES.values()):
        for p in space.params:
            for v in p.extremes():
                assert p.project(v) == v


def test_space_error_is_a_value_error():
    # Callers (the CLI) catch ValueError for every user-input problem.
    with pytest.raises(ValueError):
        Int("model.depth", 5, 3)
