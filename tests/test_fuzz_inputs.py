"""Property-based: whatever a user's file holds (a sweep spec, a trial YAML, COCO JSON or VOC XML
annotations), every command ends with exit 0 or one `error:` line (exit 2), never a traceback or a hang.
In-process and fast paths only (dry runs, data loading that stops before training); the number of examples
each property ran: `pytest tests/test_fuzz_inputs.py --hypothesis-show-statistics`."""

from __future__ import annotations

import contextlib
import json
import signal
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from ablate.cli import main
from ablate.spec import TrialConfig
from ablate.sweep.spec import SweepSpec

# hypothesis keeps caches in ./.hypothesis by default: the working directory is the user's
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="ablate-hypothesis-"))
EXAMPLES = 100
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# the data properties run `ablate train` up to its data check (the backbone is made first: ~0.5 s each)
DATA_SETTINGS = settings(SETTINGS, max_examples=50)
HANG_S = 60  # one example taking this long counts as a hang

# fields that name places on disk are fixed to the example's temporary folder: a random one would write there
PATH_FIELDS = {"data_root", "cache_dir", "feature_cache_dir", "weights_dir", "storage_path", "tracking_uri", "plugins"}
TRIAL_FIELDS = sorted(set(TrialConfig.model_fields) - PATH_FIELDS)
SPEC_FIELDS = sorted(set(SweepSpec.model_fields) - PATH_FIELDS)

text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 600), text,
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(
                        ["dualcoop", "baseline", "synthetic", "coco2014", "auto", "cpu", "cached", "test", "0.5"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                      max_leaves=6)


@contextlib.contextmanager
def no_hang(seconds: int = HANG_S):
    def alarm(*_):
        raise TimeoutError(f"an example ran for more than {seconds} s")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run(capsys, argv: list[str], allowed: tuple[int, ...] = (0, 2)) -> int:
    """main(argv) ends with an allowed exit code; exit 2 prints exactly one `error:` line; no traceback."""
    capsys.readouterr()
    with no_hang():
        code = main(argv)
    out = capsys.readouterr()
    errors = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert code in allowed, (code, out.err[-2000:])
    assert "Traceback" not in out.err + out.out, out.err[-2000:]
    assert len(errors) == (1 if code == 2 else 0), out.err[-2000:]
    return code


@pytest.fixture(autouse=True)
def _in_a_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written relative to the working directory lands here


def _as_file(folder: Path, content: dict | str) -> Path:
    path = folder / "input.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, allow_unicode=True))
    return path


@SETTINGS
@given(st.one_of(st.dictionaries(st.sampled_from(TRIAL_FIELDS) | text, values, max_size=6),
                 text.map(lambda t: f"lr: {t}\n"), st.text(max_size=40)))
def test_any_trial_yaml_is_a_dry_run_or_one_error_line(capsys, content):
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(content, dict):
            content = {**content, "cache_dir": tmp, "device": "cpu", "image_size": None}
        run(capsys, ["train", "--config", str(_as_file(Path(tmp), content)), "--out", f"{tmp}/out", "--dry-run"])


@SETTINGS
@given(st.one_of(st.fixed_dictionaries({"name": text | st.sampled_from(["ok", "../up", "a/b", ""])},
                                       optional={k: values for k in SPEC_FIELDS if k != "name"}),
                 st.fixed_dictionaries({"name": st.just("g"), "grid": st.dictionaries(
                     st.sampled_from(TRIAL_FIELDS), st.lists(values, max_size=3), max_size=2)}),
                 st.text(max_size=40)))
def test_any_spec_is_a_dry_run_or_one_error_line(capsys, content):
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(content, dict) and isinstance(content.get("base"), dict):
            content["base"] = {**content["base"], "cache_dir": tmp}
        run(capsys, ["sweep", "--spec", str(_as_file(Path(tmp), content)), "--dry-run"])


def _coco_root(folder: Path, train: bytes) -> Path:
    good = {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1}]}
    (folder / "annotations").mkdir()
    for split in ("train2014", "val2014"):
        (folder / split).mkdir()
    (folder / "annotations" / "instances_val2014.json").write_text(json.dumps(good))
    (folder / "annotations" / "instances_train2014.json").write_bytes(train)
    return folder


entry = st.dictionaries(st.sampled_from(["id", "file_name", "name", "image_id", "category_id", "bbox"]) | text,
                        values, max_size=4)
coco_json = st.one_of(
    st.fixed_dictionaries({}, optional={k: st.lists(entry, max_size=3) | values
                                        for k in ("images", "categories", "annotations")}).map(
        lambda d: json.dumps(d).encode()),
    values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=60))


@DATA_SETTINGS
@given(coco_json)
def test_any_coco_annotation_file_is_one_error_line(capsys, train):
    with tempfile.TemporaryDirectory() as tmp:
        root = _coco_root(Path(tmp), train)
        run(capsys, ["train", "--dataset", "coco2014", "--data-root", str(root), "--cache-dir", tmp,
                     "--device", "cpu", "--out", f"{tmp}/out", "--quiet"], allowed=(2,))


xml_text = st.one_of(
    st.builds(lambda name, difficult: f"<annotation><object><name>{name}</name><difficult>{difficult}</difficult>"
                                      "</object></annotation>", text | st.sampled_from(["cat", "dog", " Person "]),
              text | st.sampled_from(["0", "1"])),
    st.text(max_size=60))


@DATA_SETTINGS
@given(xml_text, st.one_of(st.just("000001\n"), text, st.binary(max_size=20).map(lambda b: b.decode("latin-1"))))
def test_any_voc_annotation_is_one_error_line(capsys, xml, listing):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "VOC2007"
        for folder in ("Annotations", "ImageSets/Main", "JPEGImages"):
            (base / folder).mkdir(parents=True)
        (base / "Annotations" / "000001.xml").write_bytes(xml.encode("utf-8", "surrogatepass"))
        for name in ("trainval", "test"):
            (base / "ImageSets" / "Main" / f"{name}.txt").write_bytes(listing.encode("latin-1", "replace"))
        # no image is there: a loadable annotation still ends in the missing-image error, before any training
        run(capsys, ["train", "--dataset", "voc2007", "--data-root", tmp, "--cache-dir", tmp, "--device", "cpu",
                     "--out", f"{tmp}/out", "--quiet"], allowed=(2,))

