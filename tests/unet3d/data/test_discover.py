"""discover(): every supported layout found from real NIfTI files; channel and label mapping."""

from __future__ import annotations

import nifti_cases as nii
import numpy as np
import pytest

from unet3d.data.discover import MODALITIES, DataError, discover
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
    _, classes, meta = preprocess_loaded(load_case(discover(root).cases[0]))
    assert meta["layout"] == "msd" and meta["labelled"]
    # No crop on the label's side: every label voxel lies inside the brain; compare per class count
    # and via the position of the nested boxes (identity affine: no reorientation).
    sl = tuple(slice(a, b) for a, b in zip(meta["bbox_lo"], meta["bbox_hi"], strict=True))
    raw = raw[sl]
    assert classes.shape == raw.shape
    assert np.all(classes[raw == 0] == 0)
    assert np.all(classes[raw == 1] == 2)  # MSD edema -> class 2 (ED)
    assert np.all(classes[raw == 2] == 1)  # MSD non-enhancing -> class 1 (NCR/NET)
    assert np.all(classes[raw == 3] == 3)  # MSD enhancing -> class 3 (ET)
    assert set(np.unique(classes).tolist()) == {0, 1, 2, 3}


def test_brats_label_mapping(tmp_path):
    root = tmp_path / "d"
    nii.write_brats_case(root, "BraTS2021_00000")
    raw = nii.brats_label()
    _, classes, meta = preprocess_loaded(load_case(discover(root).cases[0]))
    sl = tuple(slice(a, b) for a, b in zip(meta["bbox_lo"], meta["bbox_hi"], strict=True))
    raw = raw[sl]
    for value, cls in ((0, 0), (1, 1), (2, 2), (4, 3)):
        assert np.any(raw == value)
        assert np.all(classes[raw == value] == cls), (value, cls)
    assert classes.dtype == np.uint8


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
