"""Every file a user hands ablate is read one way (ablate.userfiles): a spec, a trial config or a published
table that is not UTF-8, nested thousands of levels deep or far too large is one `error:` line naming the
file (and the line, where known), exit 2; YAML 1.1's booleans where a string choice is expected (`pack:
off`) are read as the word or refused with the fix; a plugin that fails, exits or is not a module name is
one line naming it; a report that does not fit on its file system is one line naming its folder."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from sweep_helpers import sweep_store, tmpfs

from ablate.cli import main
from ablate.errors import ConfigError
from ablate.spec import TrialConfig
from ablate.sweep.spec import SweepSpec, load_sweep_spec
from ablate.tracking import TrialRun
from ablate.userfiles import MAX_BYTES, MAX_DEPTH, read_json, read_text, read_yaml

set_hypothesis_home_dir(tempfile.mkdtemp(prefix="ablate-hypothesis-"))  # not ./.hypothesis: the user's folder
SETTINGS = settings(max_examples=100, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def one_error(code: int, err: str, *says: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err and "unexpectedly" not in err, err
    assert all(s in err for s in says), err


def sweep_dry_run(spec: Path, capsys) -> tuple[int, str, str]:
    code = main(["sweep", "--spec", str(spec), "--dry-run"])
    out, err = capsys.readouterr()
    return code, out, err


# ---- YAML 1.1 booleans where a string choice is expected -------------------------------------------------

def test_pack_off_in_a_yaml_spec_is_the_word_off(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: p\npack: off\nbase: {dataset: synthetic}\ngrid: {method: [dualcoop, baseline]}\n")
    code, out, err = sweep_dry_run(spec, capsys)
    assert code == 0 and json.loads(out)["trials"] == 2, err
    loaded = load_sweep_spec(spec)
    assert loaded.pack == "off" and not loaded.packing


@pytest.mark.parametrize("where, text, says", [
    ("spec", "name: p\npack: on\n", "pack: got true"),
    ("spec", "name: p\nbase: {features: yes}\n", 'features: "online"'),
    ("trial", "dataset: synthetic\nselect_on: no\n", 'select_on: "val"'),
    ("trial", "dataset: voc2007\ndataset_options: {voc_difficult: off}\n", 'voc_difficult: "negative"'),
])
def test_a_yaml_boolean_that_is_no_choice_is_refused_with_the_fix(where, text, says, tmp_path, capsys):
    path = tmp_path / f"{where}.yaml"
    path.write_text(text)
    if where == "spec":
        code, _, err = sweep_dry_run(path, capsys)
    else:
        code = main(["train", "--config", str(path), "--out", str(tmp_path / "out"), "--dry-run"])
        err = capsys.readouterr().err
    one_error(code, err, str(path), says, "in quotes")


def test_the_optuna_refusal_of_pack_auto_gives_a_fix_that_is_accepted(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    search = "optuna: {num_samples: 2, space: {lr: {type: float, low: 0.001, high: 0.1}}}\n"
    spec.write_text(f"name: p\npack: auto\n{search}")
    code, _, err = sweep_dry_run(spec, capsys)
    one_error(code, err, "pack: auto cannot be combined with optuna", "write pack: off")
    spec.write_text(f"name: p\npack: off\n{search}")  # as the refusal says
    assert sweep_dry_run(spec, capsys)[0] == 0


def test_every_string_choice_of_the_configs_goes_through_the_one_hook():
    """Each config field whose choices hold `off` takes YAML's false as it; others refuse a boolean."""
    assert SweepSpec(name="p", pack=False).pack == "off"
    with pytest.raises(ValueError, match='cf1: got false .* e.g. cf1: "f1_of_means"'):
        TrialConfig(cf1=False)
    assert TrialConfig(augment=False).augment is False  # a real boolean field is left alone


# ---- what cannot be read: encoding, depth, size ---------------------------------------------------------

NOT_UTF8 = b"name: caf\xe9\n"
DEEP = "[" * 5000 + "]" * 5000 + "\n"


def published_table(folder: Path, body: bytes | str) -> Path:
    path = folder / "published.yaml"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return path


@pytest.mark.parametrize("content, says", [(NOT_UTF8, "not UTF-8 text (byte 0xe9 at line 1)"),
                                           (b"name: p\nbase: " + DEEP.encode(), f"nested more than {MAX_DEPTH}"),
                                           (b"\xff\xfe" + "name: p\n".encode("utf-16-le"), "not UTF-8")])
def test_an_unreadable_spec_is_one_line_naming_it(content, says, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(content)
    code, _, err = sweep_dry_run(spec, capsys)
    one_error(code, err, f"spec file {spec}", says)


@pytest.mark.parametrize("content, says", [(b"dataset: synthetic\nmethod: dualcoop\xff\n", "byte 0xff at line 2"),
                                           (("dataset_options: " + DEEP).encode(), f"nested more than {MAX_DEPTH}")])
def test_an_unreadable_trial_config_is_one_line_naming_it(content, says, tmp_path, capsys):
    config = tmp_path / "trial.yaml"
    config.write_bytes(content)
    code = main(["train", "--config", str(config), "--out", str(tmp_path / "out"), "--dry-run"])
    one_error(code, capsys.readouterr().err, f"config file {config}", says)


def test_a_spec_over_the_size_limit_is_one_line(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    with spec.open("wb") as f:
        f.write(b"name: p\ndescription: '")
        f.truncate(MAX_BYTES + 10)
    code, _, err = sweep_dry_run(spec, capsys)
    one_error(code, err, f"spec file {spec}", "larger than 16 MiB")


@pytest.fixture()
def experiment(tmp_path) -> str:
    """An experiment `rep` of two finished trials."""
    uri, _, ctx = sweep_store(tmp_path, {"name": "rep", "base": {"dataset": "synthetic"}})
    for i, method in enumerate(["dualcoop", "baseline"]):
        run = TrialRun.attach(ctx, TrialConfig(method=method, dataset="synthetic"), f"trial{i}", {"method": method})
        run.log_metrics({"test_map": 70.0 + i, "trainable_params": 10, "train_time_s": 1.0, "gpu_hours": 0.0})
        run.finish()
    return uri


def report(uri: str, out: Path, *extra: str) -> int:
    return main(["report", "--experiment", "rep", "--tracking-uri", uri, "--out", str(out), "--no-log", *extra])


@pytest.mark.parametrize("content, says", [(NOT_UTF8, "not UTF-8 text (byte 0xe9 at line 1)"),
                                           (DEEP.encode(), f"nested more than {MAX_DEPTH}")])
def test_an_unreadable_published_table_is_one_line_naming_it(content, says, experiment, tmp_path, capsys):
    table = published_table(tmp_path, content)
    code = report(experiment, tmp_path / "report", "--published", str(table))
    one_error(code, capsys.readouterr().err, f"published table {table}", says)


# ---- a report that does not fit ----------------------------------------------------------------------

def test_a_report_on_a_full_file_system_is_one_line_naming_its_folder(experiment, tmp_path, capsys):
    with tmpfs(tmp_path / "small", "64k") as small:
        code = report(experiment, small / "report")
        one_error(code, capsys.readouterr().err, f"cannot write the report into {small / 'report'}",
                  "No space left on device")
        assert list(small.iterdir()) == []  # nothing half-written left behind


# ---- plugins -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, code, says", [
    ("plug_raises", "raise RuntimeError('no licence server')\n",
     "'plug_raises' failed while it was imported (RuntimeError: no licence server)"),
    ("plug_syntax", "def broken(:\n    pass\n", "'plug_syntax' is not valid Python (invalid syntax"),
    ("plug_exits", "import sys\nsys.exit(0)\n", "'plug_exits' called sys.exit(0) while it was imported"),
])
def test_a_plugin_failing_at_import_is_one_line_naming_it(name, code, says, tmp_path, monkeypatch, capsys):
    (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "p", "plugins": [name]}))
    exit_code, _, err = sweep_dry_run(spec, capsys)
    one_error(exit_code, err, str(spec), f"plugins: {says}")


def test_a_plugin_path_is_refused_for_its_module_name(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "p", "plugins": ["../x/plug"]}))
    code, _, err = sweep_dry_run(spec, capsys)
    one_error(code, err, "plugins: '../x/plug' is not a module name", "PYTHONPATH")


# ---- the reader itself, over random input ------------------------------------------------------------

@SETTINGS
@given(content=st.binary(max_size=3000))
def test_any_bytes_as_a_spec_are_a_spec_or_one_line_naming_the_file(content, capsys):
    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "spec.yaml"
        spec.write_bytes(content)
        code, _, err = sweep_dry_run(spec, capsys)
        if code != 0:
            one_error(code, err, str(spec))


def nested(depth: int, flow: bool) -> str:
    """A list nested `depth` levels: `[[...]]`, or block style (`- - ... 1`)."""
    return "[" * depth + "1" + "]" * depth if flow else "- " * depth + "1"


@SETTINGS
@given(depth=st.one_of(st.integers(1, MAX_DEPTH + 5), st.integers(MAX_DEPTH + 5, 6000)), flow=st.booleans())
def test_nesting_up_to_the_limit_is_read_and_deeper_is_refused(depth, flow):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "deep.yaml"
        path.write_text(nested(depth, flow))
        as_json = Path(folder) / "deep.json"
        as_json.write_text("[" * depth + "1" + "]" * depth)
        for read in (lambda: read_yaml(path, "spec file"), lambda: read_json(as_json, "state file")):
            if depth <= MAX_DEPTH:
                data = read()
                for _ in range(depth):
                    assert isinstance(data, list) and len(data) == 1
                    data = data[0]
                assert data == 1
            else:
                with pytest.raises(ConfigError, match=f"{folder}.*nested more than {MAX_DEPTH} levels"):
                    read()


@SETTINGS
@given(size=st.integers(0, 4096), limit=st.integers(1, 4096))
def test_a_file_over_the_size_limit_is_refused_and_one_within_is_read(size, limit):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.yaml"
        path.write_bytes(b"a" * size)
        if size <= limit:
            assert read_text(path, "spec file", limit) == "a" * size
        else:
            with pytest.raises(ConfigError, match=f"spec file {path}: larger than"):
                read_text(path, "spec file", limit)
