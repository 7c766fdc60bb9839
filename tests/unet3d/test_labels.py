"""Label schemes: the built-in tables, the class mapping both ways, region decoding, user YAML schemes,
detection and the checks of label values."""

import numpy as np
import pytest

from unet3d import labels as L
from unet3d.config import ConfigError, RunConfig, preset


def test_builtin_schemes_match_the_official_tables():
    b = L.BUILTIN
    # (label values, regions) as the BraTS evaluation's configurations define them
    assert b["brats-legacy"].values == (0, 1, 2, 4)
    assert dict(b["brats-legacy"].regions) == {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
    assert dict(b["brats-2023"].regions) == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    assert dict(b["brats-2024-gli"].regions) == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,), "RC": (4,)}
    assert b["brats-2024-gli"].tumour == ("WT", "TC", "ET")  # RC is scored, not in the mean
    assert dict(b["brats-2024-ped"].regions) == {"WT": (1, 2, 3, 4), "TC": (1, 2, 3), "ET": (1,)}
    assert dict(b["brats-men-rt"].regions) == {"GTV": (1,)}
    assert dict(b["msd"].regions) == {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}
    assert [b[n].enhancing for n in ("brats-legacy", "brats-2023", "brats-2024-ped", "msd")] == [4, 3, 1, 3]


@pytest.mark.parametrize("name", list(L.BUILTIN))
def test_classes_round_trip_to_file_values(name):
    s = L.BUILTIN[name]
    values = np.array(s.values, np.uint8)
    classes = s.to_classes(values)
    assert classes.tolist() == list(range(s.n_classes))
    assert s.to_labels(classes).tolist() == list(s.values)
    assert s.lut()[max(s.values) + 1] == 255  # a value outside the scheme is not silently a class


@pytest.mark.parametrize("name", [n for n, s in L.BUILTIN.items() if s.region_head])
def test_region_head_decodes_every_class(name):
    """Each class's own region signature decodes back to that class (the region head's inverse)."""
    s = L.BUILTIN[name]
    classes = np.arange(s.n_classes, dtype=np.uint8)
    assert s.regions_to_classes(s.classes_to_regions(classes)).tolist() == classes.tolist()


def test_region_head_only_where_regions_nest():
    assert L.BUILTIN["brats-2024-gli"].region_head  # WT > TC > ET, RC apart
    assert not L.BUILTIN["brats-2024-ped"].region_head  # TC minus ET holds NETC and CC
    with pytest.raises(L.LabelError, match="do not nest"):
        L.BUILTIN["brats-2024-ped"].regions_to_classes(np.zeros((2, 3), bool))


def test_2024_rc_is_its_own_region():
    s = L.BUILTIN["brats-2024-gli"]
    r = s.labels_to_regions(np.array([4, 3]))
    assert r.tolist() == [[False, False, False, True], [True, True, True, False]]
    assert s.tumour_classes == (1, 2, 3)


def test_user_scheme_from_yaml(tmp_path):
    p = tmp_path / "lesions.yaml"
    p.write_text("name: stroke\nlabels: {1: core, 2: penumbra}\n"
                 "regions: {lesion: [1, 2], core: [1]}\n")
    s = L.resolve(str(p))
    assert s.values == (0, 1, 2) and s.tumour == ("lesion", "core") and s.region_head
    assert not s.builtin
    # recorded whole in a config, so the config stays readable without the file
    cfg = preset("cpu-small").with_labels(s)
    p.unlink()
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg  # (a resumed run compares the saved config with its own)
    assert again.scheme == s and again.model.n_classes == 3 and again.model.n_regions == 2


@pytest.mark.parametrize("text, field", [
    ("name: x\nlabels: {0: bg}\n", "labels"),
    ("name: x\nlabels: {1: a}\nregions: {A: [2]}\n", "regions"),
    ("name: x\nlabels: {1: a}\ntumour: [B]\n", "tumour"),
    ("name: x\nlabels: {1: a}\nenhancing: 1\n", "enhancing and core"),
    ("name: x\nlabels: {1: a, 2: b}\nregions: {A: [1, 2], B: [1, 2]}\nregion_head: true\n",
     "region_head"),
    ("name: x\nlabels: {1: a}\ncolour: red\n", "unknown field"),
    ("labels: [1, 2\n", "not valid YAML"),
    ("name: x\nlabels: {1: a}\nregions: {mean: [1]}\n", "regions"),
])
def test_bad_user_scheme_is_one_line_naming_file_and_field(tmp_path, text, field):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(L.LabelError) as e:
        L.load(p)
    msg = str(e.value)
    assert str(p) in msg and field in msg and "\n" not in msg


def test_unknown_name_is_an_error():
    with pytest.raises(L.LabelError, match="neither a built-in scheme"):
        L.resolve("brats-1999")


@pytest.mark.parametrize("layout, task, values, name", [
    ("brats2021", None, {0, 1, 2, 4}, "brats-legacy"),
    ("brats2019", None, {0, 1, 2, 4}, "brats-legacy"),
    ("msd", None, {0, 1, 2, 3}, "msd"),
    ("brats2023", "GLI", {0, 1, 2, 3}, "brats-2023"),
    ("brats2023", "GLI", {0, 1, 2, 3, 4}, "brats-2024-gli"),
    ("brats2023", "MET", {0, 1, 2, 3}, "brats-2023"),
    ("brats2023", "SSA", {0, 1, 2, 3}, "brats-2023"),
    ("brats2023", "PED", {0, 1, 2, 3, 4}, "brats-2024-ped"),
    ("brats2023", "PED", {0, 1, 2, 3}, "brats-2023"),  # PED 2023 used the adult values
    ("brats2023", "MEN-RT", {0, 1}, "brats-men-rt"),
])
def test_detect(layout, task, values, name):
    assert L.detect(layout, task, values).name == name


def test_check_values_names_the_file():
    with pytest.raises(L.LabelError) as e:
        L.check_values(L.BUILTIN["brats-legacy"], {0, 1, 3}, "case A: /d/A_seg.nii.gz")
    assert "/d/A_seg.nii.gz" in str(e.value) and "[3]" in str(e.value) and "--labels" in str(e.value)


def test_config_follows_the_scheme():
    cfg = preset("cpu-small").with_labels(L.BUILTIN["brats-2024-gli"])
    assert (cfg.model.n_classes, cfg.model.n_regions, cfg.data.labels) == (5, 4, "brats-2024-gli")
    d = cfg.to_dict()
    d["train"]["loss"] = "region"
    region = RunConfig.repaired_from_dict(d)
    assert region.model.out_channels == 4
    # PED's regions do not nest: a region loss is repaired to dice_ce, and refused when given as is
    ped = region.with_labels(L.BUILTIN["brats-2024-ped"])
    assert (ped.train.loss, ped.model.head, ped.model.n_classes) == ("dice_ce", "softmax", 5)
    d = ped.to_dict()
    d["train"]["loss"], d["model"]["head"] = "region", "regions"
    d["model"]["n_regions"] = 3
    with pytest.raises(ConfigError, match="regions that nest"):
        RunConfig.from_dict(d)
    with pytest.raises(ConfigError, match="n_classes"):
        RunConfig.from_dict({"data": {"labels": "brats-2024-gli"}})


def test_default_regions_are_named_after_labels():
    s = L.from_dict({"name": "x", "labels": {1: "edema", 2: "non-enhancing"}})
    assert dict(s.regions) == {"edema": (1,), "L2": (2,)}


def test_layout_values_cover_every_release_of_a_layout():
    assert L.layout_values("brats2021", None) == (0, 1, 2, 4)
    assert L.layout_values("brats2023", "GLI") == (0, 1, 2, 3, 4)
    assert L.layout_values("brats2023", "MET") == (0, 1, 2, 3)
    assert L.layout_values("brats2023", "MEN-RT") == (0, 1)


def test_user_labels_out_of_order_train_in_sorted_value_order(tmp_path):
    """A scheme listing its labels out of order ({2: b, 1: a}) still maps class i to the i-th
    smallest value, as the saved config (labels sorted) reads it back: class 1 is value 1."""
    p = tmp_path / "backwards.yaml"
    p.write_text("name: backwards\nlabels: {2: b, 1: a}\n")
    s = L.load(p)
    assert s.values == (0, 1, 2)
    assert s.to_classes(np.array([0, 2, 1], np.uint8)).tolist() == [0, 2, 1]
    assert s.to_labels(np.array([0, 1, 2])).tolist() == [0, 1, 2]
    saved = L.to_config(s)
    assert list(saved["labels"]) == [1, 2]
    again = L.resolve(saved)  # what predict reads from config.json
    assert again.values == (0, 1, 2)
    assert again.to_labels(s.to_classes(np.array([2, 1, 0], np.uint8))).tolist() == [2, 1, 0]


def test_region_head_needs_every_pair_of_regions_nested_or_disjoint():
    """The built-ins' region heads by hand (PED: TC minus ET holds two labels; MEN-RT: one region),
    and a user scheme whose A {1,2} and B {2,3} overlap without nesting, though each nests C {2} and
    adds one label to it: no region head."""
    heads = {n: s.region_head for n, s in L.BUILTIN.items()}
    assert heads == {"brats-legacy": True, "brats-2023": True, "brats-2024-gli": True,
                     "brats-2024-ped": False, "brats-men-rt": True, "msd": True}
    d = {"name": "x", "labels": {1: "a", 2: "b", 3: "c"}, "regions": {"A": [1, 2], "B": [2, 3], "C": [2]}}
    assert not L.from_dict(d).region_head
    with pytest.raises(L.LabelError, match="region_head=true"):
        L.from_dict({**d, "region_head": True})
