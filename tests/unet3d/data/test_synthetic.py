"""The synthetic generator: real NIfTI in every BraTS / MSD layout, nested tumour regions, distinct
contrasts, label values from the label schemes, second lesions, cavities and cysts."""

from __future__ import annotations

import gzip
import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from unet3d import labels
from unet3d.data.discover import MODALITIES, discover
from unet3d.data.preprocess import load_case, prepare
from unet3d.data.synthetic import (
    LAYOUTS,
    MIN_SIZE,
    modalities_of,
    scheme_of,
    synth_case,
    write_synthetic_dataset,
)
from unet3d.errors import OptionError

SHAPE = (32, 32, 32)
SEEDS = range(16)  # includes low-grade cases (no enhancing tumour) and high-grade ones


@pytest.fixture(scope="module")
def cases() -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    return [synth_case(SHAPE, s) for s in SEEDS]


def _read(folder, cid, name) -> np.ndarray:
    return np.asarray(nib.load(str(folder / cid / f"{cid}_{name}.nii.gz")).dataobj)


def test_writes_the_brats2021_layout_that_discover_finds(tmp_path):
    out = tmp_path / "synth"
    folders = write_synthetic_dataset(out, 3, SHAPE, seed=0, spacing=(1.0, 1.0, 2.0))
    ids = ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    assert folders == [out / i for i in ids]
    ds = discover(out)
    assert ds.layout == "brats2021"
    assert [c.case_id for c in ds.cases] == ids and len(ds.labelled) == 3
    for c in ds.cases:
        assert {m: p.name for m, p in c.images.items()} == {m: f"{c.case_id}_{m}.nii.gz" for m in MODALITIES}
        assert c.label.name == f"{c.case_id}_seg.nii.gz"
        lc = load_case(c)  # passes every validation check
        assert lc.image.shape == (*SHAPE, 4)
        np.testing.assert_allclose(lc.affine, np.diag([1.0, 1.0, 2.0, 1.0]))
    assert not [p for p in out.rglob("*") if p.is_file() and not p.name.endswith(".nii.gz")]
    entries = prepare(ds.cases, tmp_path / "cache")
    assert [e.meta["spacing"] for e in entries] == [[1.0, 1.0, 2.0]] * 3


def test_labels_are_brats_values_with_nested_regions(cases):
    grades = set()
    for seed, (images, label) in zip(SEEDS, cases, strict=True):
        assert label.dtype == np.uint8 and label.shape == SHAPE
        values = set(np.unique(label).tolist())
        assert values <= {0, 1, 2, 4}, seed
        assert {0, 1, 2} <= values, seed  # every case has edema and a core
        grades.add(4 in values)
        brain = np.any(np.stack([images[m] for m in MODALITIES]) != 0, axis=0)
        tumour = label > 0
        assert not np.any(tumour & ~brain), seed  # tumour inside the brain
        assert brain.sum() > 3 * tumour.sum(), seed  # plenty of normal brain around it
        # Core (NCR + ET) lies inside the edema: it never touches tumour-free tissue.
        core = np.isin(label, [1, 4])
        assert not np.any(core & ndimage.binary_dilation(~tumour)), seed
        # Nesting from the inside out: NCR deepest, then ET (the rim), then edema.
        depth = ndimage.distance_transform_edt(tumour)
        d_ed, d_ncr = depth[label == 2].mean(), depth[label == 1].mean()
        if 4 in values:
            d_et = depth[label == 4].mean()
            assert d_ncr > d_et > d_ed, seed
            # NCR is enclosed by ET: most NCR voxels have no edema neighbour.
            ncr_next_to_ed = (label == 1) & ndimage.binary_dilation(label == 2)
            assert ncr_next_to_ed.sum() <= 0.3 * (label == 1).sum(), seed
        else:
            assert d_ncr > d_ed, seed
    assert grades == {True, False}  # both high-grade (with ET) and low-grade (without) cases


def test_modalities_have_distinct_contrasts(cases):
    for seed, (images, label) in zip(SEEDS, cases, strict=True):
        brain = images["t1"] != 0
        for m in MODALITIES:
            assert images[m].dtype == np.int16
            np.testing.assert_array_equal(images[m] != 0, brain, err_msg=m)  # same brain in each
        normal = brain & (label == 0)
        edema, et = label == 2, label == 4

        def ratio(m, region, images=images, normal=normal):
            return images[m][region].mean() / images[m][normal].mean()

        assert ratio("flair", edema) > 1.3, seed
        assert ratio("t2", edema) > 1.3, seed
        assert ratio("t1", edema) < 1.0, seed
        if et.any():
            assert ratio("t1ce", et) > 1.2, seed
            assert ratio("t1", et) < 1.0, seed  # enhancement only shows with contrast agent
        # no two modalities are the same picture up to scale
        flat = np.stack([images[m][brain].astype(np.float64) for m in MODALITIES])
        corr = np.corrcoef(flat)
        assert np.all(corr[~np.eye(4, dtype=bool)] < 0.98), (seed, corr)


def test_deterministic_for_a_seed(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", 2, (16, 16, 16), seed=5)
    b = write_synthetic_dataset(tmp_path / "b", 2, (16, 16, 16), seed=5)
    c = write_synthetic_dataset(tmp_path / "c", 2, (16, 16, 16), seed=6)
    for fa, fb, fc in zip(a, b, c, strict=True):
        differs = False
        for name in (*MODALITIES, "seg"):
            xa, xb, xc = (_read(f.parent, f.name, name) for f in (fa, fb, fc))
            np.testing.assert_array_equal(xa, xb)
            differs |= not np.array_equal(xa, xc)
        assert differs
    # different cases of one dataset differ too
    assert not np.array_equal(_read(tmp_path / "a", "BraTS2021_00000", "seg"),
                              _read(tmp_path / "a", "BraTS2021_00001", "seg"))
    i1, l1 = synth_case((16, 16, 16), 3)
    i2, l2 = synth_case((16, 16, 16), 3)
    np.testing.assert_array_equal(l1, l2)
    for m in MODALITIES:
        np.testing.assert_array_equal(i1[m], i2[m])


def test_existing_complete_cases_are_kept(tmp_path):
    out = tmp_path / "s"
    write_synthetic_dataset(out, 2, (16, 16, 16), seed=0)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    assert len(mtimes) == 10
    write_synthetic_dataset(out, 3, (16, 16, 16), seed=0)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert len(list(out.rglob("*.nii.gz"))) == 15
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("kwargs", [{"n_cases": 0}, {"shape": (8, 32, 32)}, {"shape": (32, 32)}])
def test_bad_arguments_raise(tmp_path, kwargs):
    args = {"n_cases": 1, "shape": (16, 16, 16), **kwargs}
    with pytest.raises(ValueError):
        write_synthetic_dataset(tmp_path / "s", **args)
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


# -- brats2021 stays bit-identical ------------------------------------------------------------------
# sha256 of synth_case((32, 32, 32), seed) (images in MODALITIES order, then the label), recorded
# before the other layouts were added: the default demo's seeded scores depend on these cases.
CASE_SHA256 = {
    0: "d8fa1bcb2a37fb6b5839ad48ae1f9d7fe108a5bfb46c3fdd0493eec26704501f",
    1: "023a363ee8b38eed24a54dd14e9f20edd4e953fe13a5c9d4755c7fc9992be90f",
    2: "2169ffa2e6acd1c833ca25afa512687c2ae57c89a9e128c1c1f19eb614d6f210",
    7: "2252051bf54b63539a12ace58caf8dfaf65f40e740641cc976ff1ebf798d56fa",
    12345: "897f8e985b0f261c759379272bd3b40f284b3915d376b53899b66e7e587c25df",
}
# synth_case((24, 28, 20), 3, brain_size=(16, 20, 14)), recorded likewise
BRAIN_SIZE_SHA256 = "c913f3e9cea2255f7afbc505569303b3d189eef354f2d5ec010a16c2ebd01d30"


def _case_sha256(images: dict[str, np.ndarray], label: np.ndarray) -> str:
    d = hashlib.sha256()
    for m in MODALITIES:
        a = np.ascontiguousarray(images[m])
        d.update(m.encode())
        d.update(str(a.dtype).encode())
        d.update(a.tobytes())
    d.update(str(label.dtype).encode())
    d.update(np.ascontiguousarray(label).tobytes())
    return d.hexdigest()


@pytest.mark.parametrize("seed", sorted(CASE_SHA256))
def test_brats2021_cases_are_bit_identical_to_before(seed):
    assert _case_sha256(*synth_case((32, 32, 32), seed)) == CASE_SHA256[seed]
    assert _case_sha256(*synth_case((32, 32, 32), seed, layout="brats2021")) == CASE_SHA256[seed]


def test_brats2021_brain_size_case_is_bit_identical_to_before():
    assert _case_sha256(*synth_case((24, 28, 20), 3, brain_size=(16, 20, 14))) == BRAIN_SIZE_SHA256


def test_brats2021_files_hold_exactly_synth_case(tmp_path):
    """The default writer's files: the same names, header and (uncompressed) bytes as with an explicit
    layout, and each array is synth_case's for seed * 100003 + i."""
    a = write_synthetic_dataset(tmp_path / "a", 2, (16, 16, 16), seed=3, spacing=(1.0, 1.0, 2.0))
    b = write_synthetic_dataset(tmp_path / "b", 2, (16, 16, 16), seed=3, spacing=(1.0, 1.0, 2.0),
                                layout="brats2021")
    names = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    assert names == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
    for i, (fa, fb) in enumerate(zip(a, b, strict=True)):
        images, label = synth_case((16, 16, 16), 3 * 100003 + i)
        for name, arr in (*images.items(), ("seg", label)):
            pa, pb = (f / f"{f.name}_{name}.nii.gz" for f in (fa, fb))
            assert gzip.decompress(pa.read_bytes()) == gzip.decompress(pb.read_bytes())
            img = nib.load(str(pa))
            assert img.get_data_dtype() == arr.dtype and img.header.get_xyzt_units() == ("mm", "sec")
            np.testing.assert_array_equal(np.asarray(img.dataobj), arr)


# -- every layout -----------------------------------------------------------------------------------
# layout -> (discover's layout, task, modalities, detected scheme, first case's files)
EXPECTED = {
    "brats2021": ("brats2021", None, MODALITIES, "brats-legacy",
                  [f"BraTS2021_00000/BraTS2021_00000_{m}.nii.gz" for m in (*MODALITIES, "seg")]),
    "brats2023": ("brats2023", "GLI", MODALITIES, "brats-2023",
                  [f"BraTS-GLI-00000-000/BraTS-GLI-00000-000-{s}.nii.gz"
                   for s in ("t1n", "t1c", "t2w", "t2f", "seg")]),
    "brats2024": ("brats2023", "GLI", MODALITIES, "brats-2024-gli",
                  [f"BraTS-GLI-00001-100/BraTS-GLI-00001-100-{s}.nii.gz"
                   for s in ("t1n", "t1c", "t2w", "t2f", "seg")]),
    "brats2024-ped": ("brats2023", "PED", MODALITIES, "brats-2024-ped",
                      [f"BraTS-PED-00000-000/BraTS-PED-00000-000-{s}.nii.gz"
                       for s in ("t1n", "t1c", "t2w", "t2f", "seg")]),
    "brats-men-rt": ("brats2023", "MEN-RT", ("t1ce",), "brats-men-rt",
                     ["BraTS-MEN-RT-0000-1/BraTS-MEN-RT-0000-1_t1c.nii.gz",
                      "BraTS-MEN-RT-0000-1/BraTS-MEN-RT-0000-1_gtv.nii.gz"]),
    "msd": ("msd", None, MODALITIES, "msd", ["imagesTr/BRATS_001.nii.gz", "labelsTr/BRATS_001.nii.gz"]),
}
SEED = 1  # its 3 cases: one with a second lesion, one with a cavity (2024), one with a cyst (PED)
ROLE_NAMES = {"cavity": "RC", "cyst": "CC"}
S26 = np.ones((3, 3, 3))  # 26-connectivity, as the lesion-wise scores count lesions


def _lesions(label: np.ndarray, scheme: labels.LabelScheme) -> int:
    """Connected components of the tumour (every label but a resection cavity)."""
    tumour = np.isin(label, [v for v, n in scheme.labels.items() if n != "RC"])
    return ndimage.label(tumour, structure=S26)[1]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    for layout in LAYOUTS:
        write_synthetic_dataset(root / layout, 3, (24, 24, 24), seed=SEED, layout=layout)
    return root


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_is_discovered_with_its_scheme(written, layout):
    ds_layout, task, mods, scheme_name, first_files = EXPECTED[layout]
    ds = discover(written / layout)
    assert (ds.layout, ds.task, ds.modalities) == (ds_layout, task, mods)
    assert len(ds.cases) == 3 and len(ds.labelled) == 3
    i = 1 if layout == "brats2024" else 0
    assert [str(p.relative_to(written / layout)) for p in ds.cases[i].files] == first_files
    scheme = scheme_of(layout)
    assert scheme.name == scheme_name and modalities_of(layout) == mods
    values, lesions = set(), []
    for k, c in enumerate(ds.cases):
        lc = load_case(c)
        cavity = (k % 2 == 1) if layout == "brats2024" else None  # as the writer decides
        images, label = synth_case((24, 24, 24), SEED * 100003 + k, layout=layout, cavity=cavity)
        np.testing.assert_array_equal(lc.label, label)
        for ch, m in enumerate(mods):  # the files hold each modality under its release's name
            np.testing.assert_array_equal(lc.image[..., ch], images[m], err_msg=f"{c.case_id} {m}")
        values |= set(np.unique(label).tolist())
        lesions.append(_lesions(label, scheme))
    assert values <= set(scheme.values)
    assert labels.detect(ds.layout, ds.task, values).name == scheme_name
    assert set(lesions) == ({1} if layout == "brats2021" else {1, 2}), lesions


def test_msd_dataset_json_and_channel_order(written):
    meta = json.loads((written / "msd" / "dataset.json").read_text())
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert meta["labels"] == {"0": "background", "1": "edema", "2": "non-enhancing", "3": "enhancing"}
    assert meta["numTraining"] == 3 and meta["training"][0] == {
        "image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}
    img = nib.load(str(written / "msd" / "imagesTr" / "BRATS_002.nii.gz"))
    images, _ = synth_case((24, 24, 24), SEED * 100003 + 1, layout="msd")
    data = np.asarray(img.dataobj)
    assert data.shape == (24, 24, 24, 4) and data.dtype == np.int16
    for ch, m in enumerate(("flair", "t1", "t1ce", "t2")):
        np.testing.assert_array_equal(data[..., ch], images[m])


@pytest.mark.parametrize("layout", [lay for lay in LAYOUTS if lay != "brats2021"])
def test_label_values_follow_the_scheme_names(layout):
    """Same seed, same lesions: each layout's label is the brats2023 label with every tissue
    renamed through its scheme (edema -> background in MEN-RT: the GTV is the core)."""
    scheme = scheme_of(layout)
    value = {n: v for v, n in scheme.labels.items()}
    rename = {
        "brats2023": {1: "NETC", 2: "SNFH", 3: "ET"}, "brats2024": {1: "NETC", 2: "SNFH", 3: "ET"},
        "brats2024-ped": {1: "NETC", 2: "ED", 3: "ET"}, "brats-men-rt": {1: "GTV", 2: None, 3: "GTV"},
        "msd": {1: "non-enhancing", 2: "edema", 3: "enhancing"}}[layout]
    for seed in range(6):
        _, ref = synth_case((24, 24, 24), seed, layout="brats2023")
        _, label = synth_case((24, 24, 24), seed, layout=layout)
        extra = np.isin(label, [value.get(n, -1) for n in ROLE_NAMES.values()])  # RC / CC
        for v23, name in rename.items():
            assert np.all(label[(ref == v23) & ~extra] == value.get(name, 0)), (seed, v23)
        assert np.all(label[(ref == 0) & ~extra] == 0)


def test_second_lesions_are_separate_and_whole():
    seen = set()
    for layout in ("brats2023", "brats-men-rt"):
        scheme = scheme_of(layout)
        core_values = [v for v, n in scheme.labels.items() if n in ("NETC", "ET", "GTV")]
        for seed in range(8):
            _, label = synth_case((32, 32, 32), seed, layout=layout)
            comp, n = ndimage.label(label > 0, structure=S26)
            seen.add(n)
            assert n in (1, 2), (layout, seed, n)
            for k in range(1, n + 1):  # every lesion has a core of its own
                assert np.isin(label[comp == k], core_values).any(), (layout, seed, k)
    assert seen == {1, 2}


def test_brats2024_resection_cavity():
    rc, found = labels.BUILTIN["brats-2024-gli"], 0
    for seed in range(8):
        images, label = synth_case((32, 32, 32), seed, layout="brats2024")
        cavity = label == 4
        if not cavity.any():
            continue
        found += 1
        assert rc.labels[4] == "RC"
        tumour = np.isin(label, [1, 2, 3])
        assert (ndimage.binary_dilation(cavity, S26, iterations=3) & tumour).any(), seed  # next to it
        normal = (label == 0) & (images["t1"] != 0)
        for m, darker in (("t1", True), ("flair", True), ("t2", False)):  # CSF-like
            ratio = images[m][cavity].mean() / images[m][normal].mean()
            assert (ratio < 0.7) if darker else (ratio > 1.3), (seed, m, ratio)
    assert 2 <= found <= 6  # about half the cases


def test_ped_cyst_is_t2_bright_inside_the_core():
    value = {n: v for v, n in scheme_of("brats2024-ped").labels.items()}
    found = 0
    for seed in (*range(8), 12):  # 12: a low-grade case (no enhancing tumour) with a cyst
        images, label = synth_case((32, 32, 32), seed, layout="brats2024-ped")
        _, ref = synth_case((32, 32, 32), seed, layout="brats2023")  # the same case without a cyst
        cyst, has_et = label == value["CC"], bool((ref == 3).any())
        # inside the core, in place of enhancing tumour (low grade: of the outer non-enhancing core)
        assert np.all(ref[cyst] == (3 if has_et else 1)), seed
        # the rest of the core keeps its labels: every label the core had survives
        np.testing.assert_array_equal(label == value["NETC"], (ref == 1) & ~cyst, err_msg=str(seed))
        assert (label == value["NETC"]).any() == (ref == 1).any(), seed
        assert (label == value["ET"]).any() == has_et, seed
        if not cyst.any():
            continue
        found += 1
        core = np.isin(label, [value["ET"], value["NETC"]])
        assert images["t2"][cyst].mean() > 1.1 * images["t2"][core].mean(), seed  # fluid-bright
        assert images["t1ce"][cyst].mean() < images["t1ce"][core].mean(), seed  # no enhancement
    assert 3 <= found <= 7  # some cases


def test_men_rt_writes_only_t1c_and_the_core_as_gtv():
    images, label = synth_case((24, 24, 24), 4, layout="brats-men-rt")
    _, ref = synth_case((24, 24, 24), 4, layout="brats2023")
    assert list(images) == ["t1ce"] and set(np.unique(label).tolist()) == {0, 1}
    np.testing.assert_array_equal(label == 1, np.isin(ref, [1, 3]))
    assert (ref == 2).any()  # there was edema, and it is not GTV


@pytest.mark.parametrize("layout", LAYOUTS)
def test_min_size_cases_keep_their_tumour(layout):
    """A sample of the measurement behind MIN_SIZE: at most two lesions, each with a core."""
    scheme = scheme_of(layout)
    core = [v for v, n in scheme.labels.items()
            if n in ("NCR", "NETC", "ET", "CC", "GTV", "non-enhancing", "enhancing")]
    rc = [v for v, n in scheme.labels.items() if n == "RC"]
    for seed in range(25):
        _, label = synth_case((MIN_SIZE,) * 3, seed, layout=layout)
        assert set(np.unique(label).tolist()) <= set(scheme.values), seed
        comp, n = ndimage.label((label > 0) & ~np.isin(label, rc), structure=S26)
        assert 1 <= n <= (1 if layout == "brats2021" else 2), seed
        for k in range(1, n + 1):
            assert np.isin(label[comp == k], core).any(), (seed, k)


@pytest.mark.parametrize("layout", ["msd", "brats-men-rt"])
def test_existing_complete_cases_are_kept_in_other_layouts(tmp_path, layout):
    out = tmp_path / "s"
    write_synthetic_dataset(out, 1, (16, 16, 16), layout=layout)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert len(mtimes) == (3 if layout == "msd" else 2)
    write_synthetic_dataset(out, 1, (16, 16, 16), layout=layout)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    write_synthetic_dataset(out, 2, (16, 16, 16), layout=layout)
    assert len(discover(out).cases) == 2
    if layout == "msd":
        assert json.loads((out / "dataset.json").read_text())["numTraining"] == 2
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("kwargs, message", [
    ({"layout": "brats2022"}, r"^--layout brats2022: not one of brats2021, brats2023, "),
    ({"layout": "msd", "prefix": "X"}, r"^prefix 'X': only the brats2021 layout"),
    ({"layout": "msd", "n_cases": 0}, r"^--cases 0"),
])
def test_bad_layout_arguments_raise_before_writing(tmp_path, kwargs, message):
    with pytest.raises(OptionError, match=message):
        write_synthetic_dataset(tmp_path / "s", **{"n_cases": 1, "shape": (16, 16, 16), **kwargs})
    assert not (tmp_path / "s").exists()
    with pytest.raises(OptionError, match="not one of"):
        synth_case((16, 16, 16), 0, layout="BraTS2023")
