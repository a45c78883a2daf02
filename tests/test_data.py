"""Data layer tests, all on tiny generated files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ablate.data import (
    DataError,
    LabelledImages,
    MultiLabelDataset,
    apply_partial,
    build_transform,
    check_root,
    class_names,
    generate_synthetic,
    load_splits,
    partial_mask,
    split_val,
)
from ablate.data.coco import load_coco
from ablate.data.nuswide import load_nuswide
from ablate.data.synthetic import CATEGORY_IDS
from ablate.data.transforms import Cutout
from ablate.data.voc import load_voc
from ablate.spec import TrialConfig

MEAN, STD = (0.5, 0.25, 0.75), (0.2, 0.2, 0.2)


def _jpg(path: Path, colour=(128, 128, 128)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path)


# ---------------------------------------------------------------- class names


def test_builtin_class_names():
    assert len(class_names("coco2014")) == 80
    assert class_names("coco2014")[:3] == ["person", "bicycle", "car"]
    assert class_names("coco2014")[-1] == "toothbrush"
    voc = class_names("voc2007")
    assert len(voc) == 20 and voc == sorted(voc) and voc[0] == "aeroplane"
    nus = class_names("nuswide")
    assert len(nus) == len(set(nus)) == 81 and nus == sorted(nus)
    assert len(class_names("synthetic")) == 10
    with pytest.raises(ValueError, match="unknown dataset"):
        class_names("imagenet")


# ---------------------------------------------------------------- COCO


def _tiny_coco(root: Path) -> None:
    """Categories 90, 5, 17 (listed unsorted); image 30 has no annotation."""
    cats = [{"id": 90, "name": "ninety"}, {"id": 5, "name": "five"}, {"id": 17, "name": "seventeen"}]
    for _split, folder in (("train", "train2014"), ("test", "val2014")):
        images = [{"id": i, "file_name": f"{folder}_{i}.jpg", "width": 8, "height": 6} for i in (20, 10, 30)]
        anns = [
            {"id": 1, "image_id": 10, "category_id": 90, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 5, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0},
            {"id": 3, "image_id": 20, "category_id": 17, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 1},
            {"id": 4, "image_id": 20, "category_id": 17, "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 0},
        ]
        for img in images:
            _jpg(root / folder / img["file_name"])
        (root / "annotations").mkdir(exist_ok=True)
        data = {"images": images, "annotations": anns, "categories": cats}
        (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(data))


def test_coco_noncontiguous_ids_map_by_sorted_id(tmp_path):
    _tiny_coco(tmp_path)
    data = load_coco(tmp_path, "train", dataset=None)
    assert data.classnames == ["five", "seventeen", "ninety"]  # ids 5 < 17 < 90
    assert [p.name for p in data.paths] == ["train2014_10.jpg", "train2014_20.jpg", "train2014_30.jpg"]
    assert all(p.is_absolute() for p in data.paths)
    assert data.labels.dtype == np.int8
    np.testing.assert_array_equal(data.labels, [[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    test = load_coco(tmp_path, "test", dataset=None)
    assert test.paths[0].parent.name == "val2014"


def test_coco_class_count_checked(tmp_path):
    _tiny_coco(tmp_path)
    with pytest.raises(DataError, match="3 categories, expected 80"):
        load_coco(tmp_path, "train", dataset="coco2014")


def test_coco_layout_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist; expected layout"):
        load_coco(tmp_path / "nowhere", "train")
    _tiny_coco(tmp_path)
    (tmp_path / "annotations" / "instances_val2014.json").unlink()
    with pytest.raises(DataError, match=r"missing annotations/instances_val2014\.json; expected layout"):
        check_root(TrialConfig(dataset="coco2014", data_root=tmp_path))
    (tmp_path / "annotations" / "instances_val2014.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read .* as JSON"):
        load_coco(tmp_path, "test", dataset=None)
    (tmp_path / "train2014" / "train2014_20.jpg").unlink()
    with pytest.raises(DataError, match="1 of 3 listed images are missing"):
        load_coco(tmp_path, "train", dataset=None)
    with pytest.raises(DataError, match="needs data_root; expected layout"):
        check_root(TrialConfig(dataset="coco2014"))


# ---------------------------------------------------------------- VOC


def _voc_xml(objects: list[tuple[str, int]]) -> str:
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objects)
    return f"<annotation><filename>x.jpg</filename>{objs}</annotation>"


def _tiny_voc(parent: Path) -> Path:
    base = parent / "VOCdevkit" / "VOC2007"
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "Annotations").mkdir()
    ann = {
        "000001": [("dog", 0), ("cat", 1)],  # cat only difficult
        "000002": [("person", 1), ("person", 0), ("cat", 1), ("cat", 1)],  # person also clear
        "000003": [("tvmonitor", 0)],
    }
    for i, objects in ann.items():
        (base / "Annotations" / f"{i}.xml").write_text(_voc_xml(objects))
        _jpg(base / "JPEGImages" / f"{i}.jpg")
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n")
    (base / "ImageSets" / "Main" / "test.txt").write_text("000003\n")
    return base


@pytest.mark.parametrize("mode, cat", [("negative", 0), ("positive", 1), ("ignore", -1)])
@pytest.mark.parametrize("use_voc2007_folder", [False, True])
def test_voc_difficult_modes_and_roots(tmp_path, mode, cat, use_voc2007_folder):
    base = _tiny_voc(tmp_path)
    data = load_voc(base if use_voc2007_folder else tmp_path, "train", difficult=mode)
    names = class_names("voc2007")
    c, dog, person = names.index("cat"), names.index("dog"), names.index("person")
    assert data.labels.shape == (2, 20) and data.labels.dtype == np.int8
    assert data.labels[0, dog] == 1 and data.labels[0, c] == cat
    assert data.labels[1, person] == 1 and data.labels[1, c] == cat
    assert data.labels[0].tolist().count(0) == 18 + (cat == 0)
    test = load_voc(tmp_path, "test", difficult=mode)
    assert test.labels[0, names.index("tvmonitor")] == 1 and test.paths[0].name == "000003.jpg"


def test_voc_layout_errors(tmp_path):
    with pytest.raises(DataError, match="no VOCdevkit/VOC2007/Annotations folder; expected layout"):
        load_voc(tmp_path, "train")
    base = _tiny_voc(tmp_path)
    (base / "ImageSets" / "Main" / "test.txt").unlink()
    with pytest.raises(DataError, match="missing ImageSets/Main/test.txt"):
        check_root(TrialConfig(dataset="voc2007", data_root=tmp_path))
    (base / "ImageSets" / "Main" / "test.txt").write_text("000003\n")
    (base / "Annotations" / "000002.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match="cannot read annotation"):
        load_voc(tmp_path, "train")


# ---------------------------------------------------------------- NUS-WIDE


def _tiny_nuswide(root: Path) -> np.ndarray:
    rel = ["a/1.jpg", "a/2.jpg", "b/3.jpg"]
    for r in rel:
        _jpg(root / "images" / r)
    labels = np.zeros((3, 81), dtype=np.int8)
    labels[0, 0] = 1
    labels[1, 80] = -1
    for split in ("train", "test"):
        (root / f"{split}.txt").write_text("\n".join(rel) + "\n")
        np.save(root / f"{split}_labels.npy", labels)
    return labels


def test_nuswide_layout(tmp_path):
    labels = _tiny_nuswide(tmp_path)
    data = load_nuswide(tmp_path, "train")
    np.testing.assert_array_equal(data.labels, labels)
    assert data.paths[2] == tmp_path / "images" / "b" / "3.jpg"
    assert data.classnames == class_names("nuswide")
    assert check_root(TrialConfig(dataset="nuswide", data_root=tmp_path)) == tmp_path


def test_nuswide_errors(tmp_path):
    _tiny_nuswide(tmp_path)
    np.save(tmp_path / "test_labels.npy", np.zeros((3, 80), dtype=np.int8))
    with pytest.raises(DataError, match=r"expected an integer matrix of shape \(3, 81\)"):
        load_nuswide(tmp_path, "test")
    np.save(tmp_path / "test_labels.npy", np.full((3, 81), 2, dtype=np.int8))
    with pytest.raises(DataError, match="values other than 1, 0, -1"):
        load_nuswide(tmp_path, "test")
    (tmp_path / "train_labels.npy").unlink()
    with pytest.raises(DataError, match="missing train_labels.npy; expected layout"):
        load_nuswide(tmp_path, "train")


# ---------------------------------------------------------------- partial labels


def test_partial_mask_ratio_and_determinism():
    labels = np.zeros((2000, 50), dtype=np.int8)
    m3 = partial_mask(labels, 0.3, "coco2014/train", seed=0)
    assert m3.dtype == bool and m3.shape == labels.shape
    assert abs(m3.mean() - 0.3) < 0.01
    np.testing.assert_array_equal(m3, partial_mask(np.ones_like(labels), 0.3, "coco2014/train", seed=0))
    assert (m3 != partial_mask(labels, 0.3, "coco2014/train", seed=1)).mean() > 0.3
    assert (m3 != partial_mask(labels, 0.3, "voc2007/train", seed=0)).mean() > 0.3
    m7 = partial_mask(labels, 0.7, "coco2014/train", seed=0)
    assert np.all(m7[m3]), "masks must be nested across ratios"
    assert partial_mask(labels, 1.0, "coco2014/train", seed=0).all()
    with pytest.raises(ValueError):
        partial_mask(labels, 0.0, "k", 0)


def test_partial_mask_cache(tmp_path):
    labels = np.random.default_rng(0).integers(0, 2, (100, 7)).astype(np.int8)
    fresh = partial_mask(labels, 0.5, "k", 3)
    cached = partial_mask(labels, 0.5, "k", 3, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"
    np.testing.assert_array_equal(fresh, cached)
    np.testing.assert_array_equal(fresh, partial_mask(labels, 0.5, "k", 3, cache_dir=tmp_path))
    partial_mask(labels, 0.6, "k", 3, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2


def test_apply_partial():
    labels = np.array([[1, 0, -1], [0, 1, 1]], dtype=np.int8)
    mask = np.array([[True, False, True], [True, True, False]])
    out = apply_partial(labels, mask)
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out, [[1, -1, -1], [0, 1, -1]])


# ---------------------------------------------------------------- synthetic + splits


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_deterministic_and_loads(tmp_path):
    a = generate_synthetic(tmp_path / "a", n_train=24, n_test=12, image_size=48, seed=5)
    b = generate_synthetic(tmp_path / "b", n_train=24, n_test=12, image_size=48, seed=5)
    assert _files(a) == _files(b)
    c = generate_synthetic(tmp_path / "c", n_train=24, n_test=12, image_size=48, seed=6)
    assert (a / "annotations/instances_train2014.json").read_bytes() != (
        c / "annotations/instances_train2014.json"
    ).read_bytes()

    ann = json.loads((a / "annotations/instances_train2014.json").read_text())
    assert [cat["id"] for cat in ann["categories"]] == CATEGORY_IDS
    assert CATEGORY_IDS != list(range(len(CATEGORY_IDS)))
    assert all({"bbox", "area", "iscrowd"} <= a_.keys() for a_ in ann["annotations"])
    for split, n in (("train", 24), ("test", 12)):
        data = load_coco(a, split, dataset="synthetic")
        assert data.labels.shape == (n, 10) and data.classnames == class_names("synthetic")
        assert (data.labels.sum(0) > 0).all(), "every class has a positive in every split"
        assert data.labels.sum(1).min() >= 1 and data.labels.sum(1).max() <= 4
        assert Image.open(data.paths[0]).size == (48, 48)


def test_synthetic_skips_existing_and_refuses_foreign(tmp_path):
    root = generate_synthetic(tmp_path / "s", n_train=20, n_test=10, image_size=32)
    ann = root / "annotations/instances_train2014.json"
    stamp = ann.stat().st_mtime_ns
    assert generate_synthetic(root, n_train=20, n_test=10, image_size=32) == root
    assert ann.stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="holds no synthetic set with parameters"):
        generate_synthetic(root, n_train=21, n_test=10, image_size=32)
    assert [p.name for p in tmp_path.iterdir()] == ["s"], "no temp folders left behind"


def _cfg(tmp_path: Path, **kw) -> TrialConfig:
    return TrialConfig(dataset="synthetic", dataset_options={"synthetic_images": 40},
                       cache_dir=tmp_path / "cache", **kw)


def test_check_root_generates_default_synthetic(tmp_path):
    root = check_root(_cfg(tmp_path))
    assert root.parent == (tmp_path / "cache").absolute() and root.name.startswith("synthetic-n40")
    explicit = check_root(_cfg(tmp_path, data_root=tmp_path / "mine"))
    assert explicit == (tmp_path / "mine").absolute()
    assert _files(root) == _files(explicit), "data seed is fixed, not the trial seed"


def test_load_splits_val_deterministic_disjoint(tmp_path):
    cfg = _cfg(tmp_path, label_ratio=0.5, val_fraction=0.2, seed=1)
    s = load_splits(cfg)
    assert len(s["val"]) == 8 and len(s["train"]) == 32 and len(s["test"]) == 20
    assert not set(s["train"].paths) & set(s["val"].paths)
    assert (s["test"].labels >= 0).all()
    assert (s["val"].labels == -1).any() and (s["train"].labels == -1).any()

    again = load_splits(cfg.model_copy(update={"method": "baseline"}))  # method plays no part
    for k in s:
        assert s[k].paths == again[k].paths
        np.testing.assert_array_equal(s[k].labels, again[k].labels)

    other_seed = load_splits(cfg.model_copy(update={"seed": 2}))
    assert other_seed["val"].paths != s["val"].paths

    # the mask is drawn on the whole train split, so val_fraction does not change it
    other_frac = load_splits(cfg.model_copy(update={"val_fraction": 0.5}))
    def by_path(d):
        return {p: tuple(r) for part in ("train", "val") for p, r in zip(d[part].paths, d[part].labels)}
    assert by_path(s) == by_path(other_frac)


def test_split_val_sizes():
    train, val = split_val(10, 0.01, "k", 0)
    assert len(val) == 1 and len(train) == 9
    train, val = split_val(2, 0.9, "k", 0)
    assert len(val) == 1 and len(train) == 1
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(2))
    with pytest.raises(DataError, match="at least 2"):
        split_val(1, 0.1, "k", 0)


# ---------------------------------------------------------------- dataset + transforms


def test_dataset_and_transforms(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    Image.new("L", (30, 20), 200).save(paths[0])  # grayscale: must come out RGB
    Image.new("RGB", (10, 40), (0, 255, 0)).save(paths[1])
    labels = np.array([[1, -1], [0, 1]], dtype=np.int8)
    images = LabelledImages(paths, labels, ["x", "y"])
    ds = MultiLabelDataset(images, build_transform(16, MEAN, STD, train=False, augment=True))
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert y.dtype == torch.float32 and y.tolist() == [1.0, -1.0]
    assert len(ds) == 2 and len(images.subset(np.array([1]))) == 1
    x2, _ = MultiLabelDataset(images, build_transform(16, MEAN, STD, train=True, augment=True))[1]
    assert x2.shape == (3, 16, 16)


def test_cutout_fills_a_half_side_square_with_mean():
    torch.manual_seed(0)
    fill = tuple(round(255 * m) for m in MEAN)
    img = Image.new("RGB", (40, 40), (0, 0, 0))
    sizes = []
    for _ in range(50):
        out = np.asarray(Cutout(fill=fill)(img))
        hole = (out == fill).all(-1)
        rows, cols = np.nonzero(hole)
        assert hole.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1), "one rectangle"
        sizes.append(int(hole.sum()))
    assert 0 < min(sizes) and max(sizes) == 20 * 20  # clipped at borders, else half the side
    assert np.asarray(img).max() == 0, "input image is left untouched"
