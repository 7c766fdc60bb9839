"""discover(): every supported layout found from real NIfTI files; channel and label mapping."""

from __future__ import annotations

import nifti_cases as nii
import numpy as np
import pytest

from unet3d import labels
from unet3d.data.discover import MODALITIES, Case, DataError, Dataset, discover, discover_input
from unet3d.data.preprocess import load_case, preprocess_loaded


def _ids(ds) -> list[str]:
    return [c.case_id for c in ds.cases]


def test_brats2019_hgg_lgg(tmp_path):
    root = tmp_path / "MICCAI_BraTS_2019_Data_Training"
    nii.write_brats_case(root / "HGG", "BraTS19_TCIA01_131_1")
    nii.write_brats_case(root / "HGG", "BraTS19_CBICA_AAB_1")
    nii.write_brats_case(root / "LGG", "BraTS19_2013_0_1")
    nii.write_brats_case(root / "LGG", "BraTS19_TMC_09043_1", seg=False)
    (root / "name_mapping.csv").write_text("a,b\n")
    ds = discover(root)
    assert ds.layout == "brats2019"
    assert _ids(ds) == sorted(["BraTS19_TCIA01_131_1", "BraTS19_CBICA_AAB_1", "BraTS19_2013_0_1",
                               "BraTS19_TMC_09043_1"])
    assert [c.case_id for c in ds.labelled] == ["BraTS19_2013_0_1", "BraTS19_CBICA_AAB_1",
                                                "BraTS19_TCIA01_131_1"]
    unl = next(c for c in ds.cases if c.case_id == "BraTS19_TMC_09043_1")
    assert unl.label is None
    c = next(c for c in ds.cases if c.case_id == "BraTS19_2013_0_1")
    assert c.layout == "brats"
    assert c.images == {m: root / "LGG" / c.case_id / f"{c.case_id}_{m}.nii.gz" for m in MODALITIES}
    assert c.label == root / "LGG" / c.case_id / f"{c.case_id}_seg.nii.gz"


def test_brats2020_flat(tmp_path):
    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    for i in (3, 1, 2):
        nii.write_brats_case(root, f"BraTS20_Training_{i:03d}")
    (root / "survival_info.csv").write_text("x\n")
    ds = discover(root)
    assert ds.layout == "brats2021"  # flat case folders: same layout family as 2021
    assert _ids(ds) == ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"]
    assert len(ds.labelled) == 3
    assert all(c.layout == "brats" and c.image4d is None for c in ds.cases)


def test_brats2021_with_unlabelled_case(tmp_path):
    root = tmp_path / "RSNA_ASNR_MICCAI_BraTS2021_TrainingData"
    nii.write_brats_case(root, "BraTS2021_00002")
    nii.write_brats_case(root, "BraTS2021_00000")
    nii.write_brats_case(root, "BraTS2021_01000", seg=False)  # a validation-set case
    (root / ".DS_Store").write_text("junk")
    (root / "notes").mkdir()  # a folder without NIfTI files is not a case
    (root / "notes" / "readme.txt").write_text("hi")
    ds = discover(root)
    assert ds.layout == "brats2021"
    assert _ids(ds) == ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_01000"]
    assert [c.case_id for c in ds.labelled] == ["BraTS2021_00000", "BraTS2021_00002"]
    by_id = {c.case_id: c for c in ds.cases}
    assert by_id["BraTS2021_01000"].label is None
    assert by_id["BraTS2021_01000"].files == [by_id["BraTS2021_01000"].images[m] for m in MODALITIES]
    assert by_id["BraTS2021_00000"].files[-1].name == "BraTS2021_00000_seg.nii.gz"


def test_uncompressed_nii_is_found(tmp_path):
    root = tmp_path / "d"
    imgs = nii.case_images()
    for m in MODALITIES:
        nii.write_nii(root / "c1" / f"c1_{m}.nii", imgs[m])
    nii.write_nii(root / "c1" / "c1_seg.nii", nii.brats_label())
    ds = discover(root)
    assert _ids(ds) == ["c1"] and ds.cases[0].label.name == "c1_seg.nii"
    lc = load_case(ds.cases[0])
    np.testing.assert_array_equal(lc.image[..., 3], imgs["flair"])


def test_msd_layout(tmp_path):
    root = nii.write_msd(tmp_path / "Task01_BrainTumour", ["BRATS_002", "BRATS_001"], ["BRATS_485"])
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (root / "labelsTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    ds = discover(root)
    assert ds.layout == "msd"
    assert _ids(ds) == ["BRATS_001", "BRATS_002", "BRATS_485"]
    assert [c.case_id for c in ds.labelled] == ["BRATS_001", "BRATS_002"]
    test_case = ds.cases[2]
    assert test_case.label is None and test_case.image4d == root / "imagesTs" / "BRATS_485.nii.gz"
    c = ds.cases[0]
    assert c.layout == "msd" and c.images == {}
    assert c.image4d == root / "imagesTr" / "BRATS_001.nii.gz"
    assert c.label == root / "labelsTr" / "BRATS_001.nii.gz"
    assert c.channel_order == nii.MSD_ORDER


def test_msd_channels_come_back_in_our_modality_order(tmp_path):
    root = nii.write_msd(tmp_path / "Task01_BrainTumour", ["BRATS_001"], ["BRATS_485"])
    brain = nii.brain_mask()
    for case in discover(root).cases:
        lc = load_case(case)
        assert lc.image.shape == (*nii.SHAPE, 4)
        for i, m in enumerate(MODALITIES):  # t1, t1ce, t2, flair
            expected = np.where(brain, nii.MSD_CHANNEL_VALUE[m], 0.0)
            np.testing.assert_array_equal(lc.image[..., i], expected, err_msg=f"channel {i} ({m})")


def test_msd_label_mapping(tmp_path):
    root = nii.write_msd(tmp_path / "Task01_BrainTumour", ["BRATS_001"])
    raw = nii.msd_label()
    ds = discover(root)
    _, label, meta = preprocess_loaded(load_case(ds.cases[0]))
    assert meta["layout"] == "msd" and meta["labelled"]
    # No crop on the label's side: every label voxel lies inside the brain (identity affine).
    sl = tuple(slice(a, b) for a, b in zip(meta["bbox_lo"], meta["bbox_hi"], strict=True))
    np.testing.assert_array_equal(label, raw[sl])  # the file's own values reach the cache
    scheme = labels.detect(ds.layout, ds.task, np.unique(raw))
    assert scheme.name == "msd"  # 1 edema, 2 non-enhancing, 3 enhancing
    assert {n: scheme.labels[v] for n, v in (("ed", 1), ("net", 2), ("et", 3))} == {
        "ed": "edema", "net": "non-enhancing", "et": "enhancing"}


def test_brats_label_mapping(tmp_path):
    root = tmp_path / "d"
    nii.write_brats_case(root, "BraTS2021_00000")
    raw = nii.brats_label()
    ds = discover(root)
    _, label, meta = preprocess_loaded(load_case(ds.cases[0]))
    sl = tuple(slice(a, b) for a, b in zip(meta["bbox_lo"], meta["bbox_hi"], strict=True))
    np.testing.assert_array_equal(label, raw[sl])
    assert label.dtype == np.uint8 and set(np.unique(label).tolist()) == {0, 1, 2, 4}
    assert labels.detect(ds.layout, ds.task, np.unique(raw)).name == "brats-legacy"


def test_unlabelled_case_preprocesses_without_label(tmp_path):
    root = tmp_path / "d"
    nii.write_brats_case(root, "BraTS2021_00000", seg=False)
    image, classes, meta = preprocess_loaded(load_case(discover(root).cases[0]))
    assert classes is None and meta["labelled"] is False and image.shape[-1] == 4


def test_duplicate_case_ids_across_grades(tmp_path):
    root = tmp_path / "d"
    nii.write_brats_case(root / "HGG", "BraTS19_X_1")
    nii.write_brats_case(root / "LGG", "BraTS19_X_1")
    with pytest.raises(DataError, match="BraTS19_X_1.*more than once"):
        discover(root)


def test_msd_unknown_modality_in_dataset_json(tmp_path):
    root = nii.write_msd(tmp_path / "Task01_BrainTumour", ["BRATS_001"])
    (root / "dataset.json").write_text('{"modality": {"0": "FLAIR", "1": "T1w", "2": "PD", "3": "T2w"}}')
    with pytest.raises(DataError, match=r"dataset\.json.*'pd'"):
        discover(root)


def test_msd_missing_label_file(tmp_path):
    root = nii.write_msd(tmp_path / "Task01_BrainTumour", ["BRATS_001", "BRATS_002"])
    (root / "labelsTr" / "BRATS_002.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case BRATS_002: .*labelsTr/BRATS_002\.nii\.gz"):
        discover(root)


def test_macos_junk_in_brats_case_folder_is_ignored(tmp_path):
    root = tmp_path / "d"
    nii.write_brats_case(root, "BraTS2021_00000")
    nii.write_brats_case(root, "BraTS2021_01000", seg=False)
    for cid, name in (("BraTS2021_00000", "t1"), ("BraTS2021_01000", "seg")):
        (root / cid / f"._{cid}_{name}.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    ds = discover(root)
    by_id = {c.case_id: c for c in ds.cases}
    assert by_id["BraTS2021_01000"].label is None  # the junk "._..._seg" is not a label
    assert by_id["BraTS2021_00000"].images["t1"].name == "BraTS2021_00000_t1.nii.gz"
    load_case(by_id["BraTS2021_00000"])
    load_case(by_id["BraTS2021_01000"])


def test_brats2020_case_355_misnamed_label_is_found(tmp_path):
    """BraTS 2020 ships BraTS20_Training_355's label as W39_1998.09.19_Segm.nii."""
    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    cid = "BraTS20_Training_355"
    imgs = nii.case_images()
    for m in MODALITIES:
        nii.write_nii(root / cid / f"{cid}_{m}.nii", imgs[m])
    nii.write_nii(root / cid / "W39_1998.09.19_Segm.nii", nii.brats_label())
    (c,) = discover(root).cases
    assert c.label == root / cid / "W39_1998.09.19_Segm.nii"
    assert load_case(c).label is not None


# -- BraTS 2023+ naming -------------------------------------------------------------------------
# our modality -> the BraTS 2023+ file suffix; each modality gets its own constant so a swapped
# mapping (t1n <-> t1c) shows in the loaded channels
B23 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
VALUE = {"t1": 10.0, "t1ce": 20.0, "t2": 30.0, "flair": 40.0}


def write_b23_case(root, cid: str, *, seg: bool = True, mods=MODALITIES, sep: str = "-",
                   label_name: str = "seg"):
    """Writes ``root/<cid>/<cid><sep><suffix>.nii.gz`` for ``mods`` (+ the label)."""
    brain = nii.brain_mask()
    for m in mods:
        nii.write_nii(root / cid / f"{cid}{sep}{B23[m]}.nii.gz",
                      np.where(brain, VALUE[m], 0).astype(np.float32))
    if seg:
        lab = np.where(nii.brats_label() == 4, 3, nii.brats_label()).astype(np.uint8)  # 1, 2, 3
        nii.write_nii(root / cid / f"{cid}{sep}{label_name}.nii.gz", lab)
    return root / cid


def write_men_rt_case(root, cid: str, *, seg: bool = True):
    return write_b23_case(root, cid, seg=seg, mods=("t1ce",), sep="_", label_name="gtv")


def test_brats2023_layout(tmp_path):
    root = tmp_path / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    write_b23_case(root, "BraTS-GLI-00002-000")
    write_b23_case(root, "BraTS-GLI-00000-000")
    write_b23_case(root, "BraTS-GLI-01000-100", seg=False)  # unlabelled; another time point
    (root / "BraTS-GLI-00000-000" / "._BraTS-GLI-00000-000-t1n.nii.gz").write_bytes(b"\x00\x05")
    (root / "BraTS-GLI-01000-100" / "._BraTS-GLI-01000-100-seg.nii.gz").write_bytes(b"\x00\x05")
    ds = discover(root)
    assert (ds.layout, ds.task, ds.modalities) == ("brats2023", "GLI", MODALITIES)
    assert _ids(ds) == ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000", "BraTS-GLI-01000-100"]
    assert [c.case_id for c in ds.labelled] == ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"]
    c = ds.cases[0]
    assert (c.layout, c.task, c.modalities) == ("brats2023", "GLI", MODALITIES)
    assert {m: p.name for m, p in c.images.items()} == {
        m: f"BraTS-GLI-00000-000-{B23[m]}.nii.gz" for m in MODALITIES}
    assert c.label.name == "BraTS-GLI-00000-000-seg.nii.gz"
    assert c.files == [c.images[m] for m in MODALITIES] + [c.label]
    assert ds.cases[2].label is None  # the "._" resource fork is no label
    lc = load_case(c)
    for i, m in enumerate(MODALITIES):  # t1 <- t1n, t1ce <- t1c, t2 <- t2w, flair <- t2f
        assert lc.image[..., i].max() == VALUE[m], m
    assert labels.detect(ds.layout, ds.task, np.unique(lc.label)).name == "brats-2023"


@pytest.mark.parametrize("task", ["SSA", "MEN", "MET", "PED", "GoAT"])
def test_brats2023_other_tasks(tmp_path, task):
    write_b23_case(tmp_path / "d", f"BraTS-{task}-00001-000")
    ds = discover(tmp_path / "d")
    assert (ds.layout, ds.task) == ("brats2023", task)
    assert ds.cases[0].task == task


def test_men_rt_layout_has_one_modality(tmp_path):
    root = tmp_path / "BraTS2024-MEN-RT-TrainingData"
    write_men_rt_case(root, "BraTS-MEN-RT-0001-1")
    write_men_rt_case(root, "BraTS-MEN-RT-0000-1")
    ds = discover(root)
    assert (ds.layout, ds.task, ds.modalities) == ("brats2023", "MEN-RT", ("t1ce",))
    c = ds.cases[0]
    assert c.case_id == "BraTS-MEN-RT-0000-1" and c.modalities == ("t1ce",)
    assert list(c.images) == ["t1ce"]
    assert c.files == [root / c.case_id / "BraTS-MEN-RT-0000-1_t1c.nii.gz",
                       root / c.case_id / "BraTS-MEN-RT-0000-1_gtv.nii.gz"]
    assert labels.detect(ds.layout, ds.task, [0, 1]).name == "brats-men-rt"


@pytest.mark.parametrize("depth", [1, 2])
def test_nested_training_data_folder_is_found(tmp_path, depth):
    top = tmp_path / "download"
    root = top / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    if depth == 2:
        root = top / "training" / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    write_b23_case(root, "BraTS-GLI-00000-000")
    write_b23_case(root, "BraTS-GLI-00001-000")
    # macOS zip debris mirrors the tree with resource forks; it holds no case
    junk = top / "__MACOSX" / root.relative_to(top) / "BraTS-GLI-00000-000"
    junk.mkdir(parents=True)
    (junk / "._BraTS-GLI-00000-000-t1n.nii.gz").write_bytes(b"\x00\x05")
    (top / "readme.txt").write_text("BraTS 2023")
    ds = discover(top)
    assert ds.root == root and ds.layout == "brats2023" and ds.task == "GLI"
    assert _ids(ds) == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert discover_input(top) == ds.cases


def test_cases_three_levels_down_are_not_searched(tmp_path):
    write_b23_case(tmp_path / "a" / "b" / "c", "BraTS-GLI-00000-000")
    with pytest.raises(DataError, match=r"no cases found .*BraTS-GLI-00000-000-t1n\.nii\.gz"):
        discover(tmp_path)


def test_two_folders_with_cases_is_an_error(tmp_path):
    write_b23_case(tmp_path / "TrainingData", "BraTS-GLI-00000-000")
    write_b23_case(tmp_path / "more" / "ValidationData", "BraTS-GLI-01000-000", seg=False)
    with pytest.raises(DataError) as e:
        discover(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "point --data at one of" in msg
    assert str(tmp_path / "TrainingData") in msg and str(tmp_path / "more" / "ValidationData") in msg


@pytest.mark.parametrize("men_rt", [False, True])
def test_missing_modality_names_the_file_in_that_naming(tmp_path, men_rt):
    root = tmp_path / "d"
    if men_rt:
        cid, gone = "BraTS-MEN-RT-0003-1", "BraTS-MEN-RT-0003-1_t1c.nii.gz"
        write_men_rt_case(root, "BraTS-MEN-RT-0000-1")
        write_men_rt_case(root, cid)
    else:
        cid, gone = "BraTS-GLI-00003-000", "BraTS-GLI-00003-000-t2f.nii.gz"
        write_b23_case(root, "BraTS-GLI-00000-000")
        write_b23_case(root, cid)
    (root / cid / gone).unlink()
    with pytest.raises(DataError) as e:
        discover(root)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"case {cid}: missing modality file(s) {gone} in ")
    with pytest.raises(DataError, match=gone):
        discover_input(root / cid)


def test_mixed_tasks_are_an_error(tmp_path):
    root = tmp_path / "d"
    write_b23_case(root, "BraTS-GLI-00000-000")
    write_b23_case(root, "BraTS-GLI-00001-000")
    write_b23_case(root, "BraTS-PED-00000-000")
    with pytest.raises(DataError) as e:
        discover(root)
    msg = str(e.value)
    assert "\n" not in msg and "labels differ" in msg
    assert "BraTS-GLI-00000-000" in msg and "BraTS-PED-00000-000" in msg


def test_brats2021_and_2023_naming_mixed_is_an_error(tmp_path):
    root = tmp_path / "d"
    nii.write_brats_case(root, "BraTS2021_00000")
    write_b23_case(root, "BraTS-GLI-00000-000")
    with pytest.raises(DataError, match=r"BraTS-GLI-00000-000 \(GLI\).*BraTS2021_00000.*labels differ"):
        discover(root)


def test_mixed_modality_sets_are_an_error(tmp_path):
    a = Case("a", {m: tmp_path / m for m in MODALITIES}, None, "brats")
    b = Case("b", {"t1ce": tmp_path / "t1ce"}, None, "brats", modalities=("t1ce",))
    assert Dataset(tmp_path, "brats2021", (b,)).modalities == ("t1ce",)
    assert Dataset(tmp_path, "brats2021", ()).modalities == MODALITIES
    with pytest.raises(DataError, match=r"case folders a \(t1\+t1ce\+t2\+flair\) and b \(t1ce\)"):
        Dataset(tmp_path, "brats2021", (a, b))


def test_brats2020_with_name_mapping_csv(tmp_path):
    """The Kaggle/CBICA BraTS 2020 download: a wrapper folder, case folders and two CSV files."""
    root = tmp_path / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
    for i in (2, 1):
        nii.write_brats_case(root, f"BraTS20_Training_{i:03d}")
    (root / "name_mapping.csv").write_text(
        "Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,"
        "BraTS_2019_subject_ID,BraTS_2020_subject_ID\n"
        "HGG,Brats17_CBICA_AAB_1,Brats18_CBICA_AAB_1,NA,BraTS19_CBICA_AAB_1,BraTS20_Training_001\n")
    (root / "survival_info.csv").write_text("Brats20ID,Age,Survival_days,Extent_of_Resection\n")
    for where in (root, root.parent):  # the case folders themselves, or the wrapper above them
        ds = discover(where)
        assert (ds.root, ds.layout, ds.task, ds.modalities) == (root, "brats2021", None, MODALITIES)
        assert _ids(ds) == ["BraTS20_Training_001", "BraTS20_Training_002"]
        assert all(c.task is None and c.modalities == MODALITIES for c in ds.cases)


@pytest.mark.parametrize("men_rt", [False, True])
def test_discover_input_takes_one_hyphenated_case_folder(tmp_path, men_rt):
    if men_rt:
        folder = write_men_rt_case(tmp_path, "BraTS-MEN-RT-0007-1", seg=False)
    else:
        folder = write_b23_case(tmp_path, "BraTS-GLI-00007-000", seg=False)
    (case,) = discover_input(folder)
    assert case.case_id == folder.name and case.label is None
    assert case.task == ("MEN-RT" if men_rt else "GLI")
    assert case.modalities == (("t1ce",) if men_rt else MODALITIES)


def test_messages_mention_the_2023_naming(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no cases found.*BraTS-GLI-00000-000-t1n\.nii\.gz"):
        discover(tmp_path / "empty")
    f = nii.write_nii(tmp_path / "x.nii.gz", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(DataError, match=r"is a file, not a case folder .*-t1n\.nii\.gz"):
        discover_input(f)
