"""`ablate data fetch | check` against a real HTTP server on 127.0.0.1 serving small archives with the
official names and inner layouts (tests/data_helpers.py): the fetched tree is what the loaders read,
interrupted downloads resume, damaged archives are refused, concurrent fetches download once, and the
check names every broken file."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from data_helpers import COCO_SPLITS, VOC_SPLITS, ArchiveServer, build_coco, build_voc, coco_manifest, md5, voc_manifest

from ablate.cli import main
from ablate.data.check import check_dataset, require_complete
from ablate.data.coco import load_coco
from ablate.data.fetch import LOCK, MARKER, STAGING, fetch_dataset
from ablate.data.manifest import MIRROR_ENV
from ablate.data.voc import load_voc
from ablate.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")

VOC_TRAINVAL = "VOCtrainval_06-Nov-2007.tar"


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archives")
    build_voc(folder)
    build_coco(folder)
    return folder


@pytest.fixture()
def server(archives):
    with ArchiveServer(archives) as s:
        yield s


def _size(archives: Path, *names: str) -> int:
    return sum((archives / n).stat().st_size for n in names)


def _manifest(dataset: str, archives: Path):
    return voc_manifest(archives) if dataset == "voc2007" else coco_manifest()


@pytest.mark.parametrize("dataset", ["voc2007", "coco2014"])
def test_fetch_lays_out_what_the_loaders_read_and_a_trial_trains(dataset, archives, server, tmp_path, tiny_cfg):
    from ablate.trainer import run_trial

    manifest = _manifest(dataset, archives)
    root = tmp_path / "data"
    result = fetch_dataset(manifest, root, server.url)
    names = [a.filename for a in manifest.archives]
    assert not result.already_complete and result.downloaded_bytes == _size(archives, *names)
    assert {n: server.sent[n] for n in names} == {n: _size(archives, n) for n in names}  # each sent once, whole
    assert sorted(p.name for p in root.iterdir()) == sorted([*manifest.entries, LOCK, MARKER])  # no leftovers
    if dataset == "voc2007":
        assert [len(load_voc(root, s)) for s in ("train", "test")] == list(VOC_SPLITS.values())
    else:
        assert [len(load_coco(root, s)) for s in ("train", "test")] == list(COCO_SPLITS.values())
    assert check_dataset(manifest, root, deep=True).complete
    metrics = run_trial(tiny_cfg(dataset=dataset, data_root=root, epochs=1, batch_size=4), progress=False)
    assert math.isfinite(metrics.test_map)


def test_a_second_fetch_downloads_nothing(archives, server, tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, server.url)  # the environment names the mirror
    manifest, root = voc_manifest(archives), tmp_path / "voc"
    fetch_dataset(manifest, root)
    seen = len(server.requests)
    started = time.monotonic()
    again = fetch_dataset(manifest, root)
    assert again.already_complete and again.downloaded_bytes == 0 and len(server.requests) == seen
    assert time.monotonic() - started < 2
    assert again.files == 2 * sum(VOC_SPLITS.values()) + 2  # images + annotations + the two list files


def test_a_dropped_connection_resumes_where_it_stopped(archives, server, tmp_path):
    size = _size(archives, VOC_TRAINVAL)
    server.drop_after[VOC_TRAINVAL] = 20_000
    result = fetch_dataset(voc_manifest(archives), tmp_path / "voc", server.url, retry_wait=0)
    assert server.gets(VOC_TRAINVAL) == [None, "bytes=20000-"]
    assert server.sent[VOC_TRAINVAL] == size  # 20,000 + the rest: nothing sent twice
    assert check_dataset(voc_manifest(archives), tmp_path / "voc").complete and result.downloaded_bytes == \
        _size(archives, VOC_TRAINVAL, "VOCtest_06-Nov-2007.tar")


def test_an_interrupted_fetch_continues_in_the_next_run(archives, server, tmp_path):
    root, size = tmp_path / "voc", _size(archives, VOC_TRAINVAL)
    server.drop_after[VOC_TRAINVAL] = 20_000
    with pytest.raises(DataError, match=f"stopped at 20,000 of {size:,} bytes .*run the same command again"):
        fetch_dataset(voc_manifest(archives), root, server.url, retries=0)
    assert (root / STAGING / f"{VOC_TRAINVAL}.part").stat().st_size == 20_000
    assert not (root / "VOCdevkit").exists()
    result = fetch_dataset(voc_manifest(archives), root, server.url, retries=0)
    assert result.resumed == {VOC_TRAINVAL: 20_000} and server.gets(VOC_TRAINVAL)[-1] == "bytes=20000-"
    assert server.sent[VOC_TRAINVAL] == size


def test_a_corrupted_archive_is_refused_with_both_checksums(archives, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(archives, served)
    damaged = bytearray((served / VOC_TRAINVAL).read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (served / VOC_TRAINVAL).write_bytes(bytes(damaged))
    root = tmp_path / "voc"
    with ArchiveServer(served) as s, pytest.raises(DataError) as err:
        fetch_dataset(voc_manifest(archives), root, s.url)
    got, published = md5(served / VOC_TRAINVAL), md5(archives / VOC_TRAINVAL)
    assert f"has MD5 {got}, the published MD5 is {published}" in str(err.value)
    assert not (root / "VOCdevkit").exists() and not (root / STAGING / VOC_TRAINVAL).exists()  # kept out


def test_a_damaged_zip_is_refused_naming_the_member(archives, tmp_path):
    from data_helpers import jpeg

    served = tmp_path / "served"
    shutil.copytree(archives, served)
    data = bytearray((served / "train2014.zip").read_bytes())
    at = data.find(jpeg(2))  # the second train image's bytes (stored, not compressed)
    data[at + 200] ^= 0xFF
    (served / "train2014.zip").write_bytes(bytes(data))
    root = tmp_path / "coco"
    with ArchiveServer(served) as s, pytest.raises(DataError, match=r"train2014.zip is damaged \(Bad CRC-32 for "
                                                                     r"file 'train2014/COCO_train2014_000000000002"):
        fetch_dataset(coco_manifest(), root, s.url)
    assert sorted(p.name for p in root.iterdir()) == [STAGING, LOCK]  # nothing moved in
    assert not (root / STAGING / "tree").exists()


def test_two_concurrent_fetches_into_one_root_download_once(archives, tmp_path):
    root = tmp_path / "voc"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; from data_helpers import "
            "voc_manifest; from ablate.data.fetch import fetch_dataset; "
            "print(fetch_dataset(voc_manifest(Path(sys.argv[2])), Path(sys.argv[3]), sys.argv[4]).line())")
    with ArchiveServer(archives) as s:
        s.gate = threading.Event()  # the first GET waits until both processes are under way
        procs = [subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent), str(archives), str(root),
                                   s.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        errs: list[list[str]] = [[], []]
        readers = [threading.Thread(target=lambda p=p, e=e: e.extend(p.stderr), daemon=True)
                   for p, e in zip(procs, errs)]
        for r in readers:
            r.start()
        deadline = time.monotonic() + 60
        while not any("another fetch" in line for e in errs for line in e) and time.monotonic() < deadline:
            time.sleep(0.05)
        s.gate.set()
        outs = [p.communicate(timeout=60)[0] for p in procs]
        for r in readers:
            r.join(timeout=5)
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sum("another fetch into" in line for e in errs for line in e) == 1  # one waited for the other
    assert sorted("already complete" in out for out in outs) == [False, True]
    for name in (VOC_TRAINVAL, "VOCtest_06-Nov-2007.tar"):
        assert s.gets(name) == [None] and s.sent[name] == _size(archives, name)


def test_not_enough_space_is_refused_before_downloading(archives, server, tmp_path, monkeypatch):
    monkeypatch.setattr("ablate.data.fetch.shutil.disk_usage", lambda _: shutil._ntuple_diskusage(1, 1, 1000))
    with pytest.raises(DataError, match=r"has 0.0 GiB free; fetching voc2007 needs about .* choose another --root"):
        fetch_dataset(voc_manifest(archives), tmp_path / "voc", server.url)
    assert server.gets(VOC_TRAINVAL) == []


def test_an_incomplete_tree_in_the_root_is_never_overwritten(archives, server, tmp_path):
    (tmp_path / "voc" / "VOCdevkit" / "VOC2007" / "Annotations").mkdir(parents=True)
    with pytest.raises(DataError, match="already holds VOCdevkit but not a complete voc2007"):
        fetch_dataset(voc_manifest(archives), tmp_path / "voc", server.url)
    assert server.requests == []


def test_a_fetched_root_that_lost_files_says_so(archives, server, tmp_path):
    root = tmp_path / "voc"
    fetch_dataset(voc_manifest(archives), root, server.url)
    (root / "VOCdevkit/VOC2007/JPEGImages/000002.jpg").unlink()
    with pytest.raises(DataError, match="changed since it was fetched: VOCdevkit/VOC2007/JPEGImages/ has 13 files, "
                                        "14 when fetched"):
        fetch_dataset(voc_manifest(archives), root, server.url)


def _break(dataset: str, root: Path) -> tuple[str, str, str]:
    """Delete an image, truncate an annotation file, make an image undecodable; their names in the report."""
    if dataset == "voc2007":
        base = "VOCdevkit/VOC2007"
        deleted, annotation, broken = (f"{base}/JPEGImages/000002.jpg", f"{base}/Annotations/000003.xml",
                                       f"{base}/JPEGImages/000004.jpg")
    else:
        train = "train2014/COCO_train2014_00000000000"
        deleted, annotation, broken = f"{train}2.jpg", "annotations/instances_val2014.json", f"{train}4.jpg"
    (root / deleted).unlink()
    text = (root / annotation).read_bytes()
    (root / annotation).write_bytes(text[: len(text) // 2])
    (root / broken).write_bytes((root / broken).read_bytes()[:60])
    return deleted, annotation, broken


@pytest.mark.parametrize("dataset", ["voc2007", "coco2014"])
def test_check_names_a_deleted_image_a_truncated_annotation_and_an_undecodable_image(
        dataset, archives, server, tmp_path, capsys):
    manifest, root = _manifest(dataset, archives), tmp_path / "data"
    fetch_dataset(manifest, root, server.url)
    deleted, annotation, broken = _break(dataset, root)
    report = check_dataset(manifest, root, deep=True)
    problems = "\n".join(report.problems())
    assert not report.complete
    assert f"image missing: {deleted}" in problems
    assert f"bad annotation: {annotation}: " in problems
    assert f"image unreadable: {broken} (" in problems
    # the command: official split sizes, a table naming the files, exit 1; --json lists every problem
    assert main(["data", "check", dataset, "--root", str(root), "--deep"]) == 1
    table = capsys.readouterr().out
    official = "5,011" if dataset == "voc2007" else "82,783"
    assert official in table and deleted in table and annotation in table and broken in table
    assert table.rstrip().splitlines()[-1].startswith("INCOMPLETE")
    assert main(["data", "check", dataset, "--root", str(root), "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert found["complete"] is False and any(deleted in p for p in found["problems"])


def test_check_of_a_complete_root_and_of_a_missing_one(archives, server, tmp_path, capsys):
    manifest, root = voc_manifest(archives), tmp_path / "voc"
    fetch_dataset(manifest, root, server.url)
    report = check_dataset(manifest, root)
    assert report.complete and report.table().splitlines()[-1] == "complete"
    assert [(s.split, s.listed, s.classes - len(s.absent_classes)) for s in report.splits] == \
        [("trainval", 8, 20), ("test", 6, 20)]
    assert main(["data", "check", "voc2007", "--root", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_check_finds_a_class_absent_from_a_split(archives, server, tmp_path):
    manifest, root = voc_manifest(archives), tmp_path / "voc"
    fetch_dataset(manifest, root, server.url)
    xml = root / "VOCdevkit/VOC2007/Annotations/000009.xml"  # the first test image: the only "aeroplane" there
    xml.write_text(xml.read_text().replace("<name>aeroplane</name>", "<name>cat</name>"))
    assert "test: no object of 1 class(es): aeroplane" in check_dataset(manifest, root).problems()


def test_nuswide_check_follows_its_documented_layout(tmp_path):
    import numpy as np
    from PIL import Image

    from ablate.data.manifest import NUSWIDE

    root = tmp_path / "nus"
    (root / "images").mkdir(parents=True)
    for split, n in (("train", 3), ("test", 2)):
        names = [f"{split}{i}.jpg" for i in range(n)]
        for name in names:
            Image.new("RGB", (8, 8)).save(root / "images" / name)
        (root / f"{split}.txt").write_text("\n".join(names))
        labels = np.zeros((n, 81), dtype=np.int8)
        labels[np.arange(81) % n, np.arange(81)] = 1
        np.save(root / f"{split}_labels.npy", labels)
    assert check_dataset(NUSWIDE, root, deep=True).complete
    (root / "test_labels.npy").unlink()
    assert check_dataset(NUSWIDE, root).problems() == ["test: bad annotation: test_labels.npy: missing"]
    with pytest.raises(DataError, match="no official archive to fetch"):
        fetch_dataset(NUSWIDE, root)


# ---- sweeps -------------------------------------------------------------------------------------------

def _spec(tmp_path: Path, root: Path, **extra) -> Path:
    import yaml

    spec = {"name": "fetch_check", "base": {"dataset": "voc2007", "method": "baseline", "epochs": 1},
            "per_dataset": {"voc2007": {"data_root": str(root)}}, "storage_path": str(tmp_path / "ray"),
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", **extra}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_sweep_stops_on_an_incomplete_root_before_recording_anything(archives, server, tmp_path):
    from ablate.sweep import run_sweep

    root = tmp_path / "voc"
    fetch_dataset(voc_manifest(archives), root, server.url)  # complete for the test's counts, not the official ones
    with pytest.raises(DataError, match=rf"voc2007 at {root}: trainval: 8 images listed, 5,011 expected; "
                                        r"test: 6 images listed, 4,952 expected; .*ablate data fetch voc2007"):
        run_sweep(_spec(tmp_path, root))
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()
    require_complete("synthetic", tmp_path)  # datasets without a manifest pass through


def test_a_spec_fetches_its_data_as_a_ray_task(archives, server, tmp_path, capsys):
    import ray

    from ablate.sweep import expand, fetch_data
    from ablate.sweep.spec import load_sweep_spec

    root = tmp_path / "voc"
    spec = load_sweep_spec(_spec(tmp_path, root, data={"voc2007": {"fetch": True, "mirror": server.url}}))
    try:
        fetch_data(spec, expand(spec), manifests={"voc2007": voc_manifest(archives)})
    finally:
        ray.shutdown()
    assert check_dataset(voc_manifest(archives), root).complete
    assert json.loads((root / MARKER).read_text())["dataset"] == "voc2007"
    err = capsys.readouterr().err
    assert f"voc2007: complete at {root}" in err and VOC_TRAINVAL in err  # the task's line and its progress bar


def test_spec_data_section_is_checked():
    from ablate.sweep.spec import SweepSpec

    with pytest.raises(ValueError, match="nuswide: no official archive to fetch; fetchable: voc2007, coco2014"):
        SweepSpec(name="s", data={"nuswide": {"fetch": True}})
    with pytest.raises(ValueError, match="extra"):
        SweepSpec(name="s", data={"voc2007": {"fetch": True, "fecth": 1}})
    with pytest.raises(ConfigError, match="needs a data_root"):
        from ablate.sweep import expand, fetch_data

        spec = SweepSpec(name="s", base={"dataset": "voc2007"}, data={"voc2007": {"fetch": True}})
        fetch_data(spec, expand(spec))
