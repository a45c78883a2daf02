"""Arm packs: the pack key holds every field that changes the image stream, a packed arm produces what it
produces alone (bit for bit on CPU, augmented, with worker processes), a diverging arm fails alone, a
killed pack resumes every arm exactly, and a packed sweep records what an unpacked one records."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
import typing
from pathlib import Path

import pytest
import torch
from sweep_helpers import runs, write_spec

from ablate.factory import backbone_from_config, seed_everything
from ablate.pack import STREAM_FIELDS, pack_key, stream_config
from ablate.spec import TrialConfig
from ablate.stream import Stream, epoch_seed
from ablate.sweep import expand, plan_packs, run_sweep
from ablate.sweep.spec import SweepSpec
from ablate.trainer import TRAINED, run_pack, run_trial

pytestmark = pytest.mark.usefixtures("one_thread")

# an augmented stream (the reference recipe) read by worker processes: what the paper specs run
STREAM = dict(augment=True, augment_recipe="reference", num_workers=2, epochs=2, warmup_epochs=1, batch_size=16,
              dataset_options={"synthetic_images": 60}, n_ctx=4)
ARMS = [dict(method=m, label_ratio=r, **extra) for r in (0.3, 0.7) for m, extra in
        (("dualcoop", {}), ("positivecoop", {"prompt_offset": "normal"}), ("baseline", {"lr": 2e-2}))]


def record(result) -> dict:
    """Everything an arm's result says, but times."""
    return {"history": [{k: v for k, v in row.items() if k != "time_s"} for row in result.history],
            "best_epoch": result.best_epoch, "best_val_map": result.best_val_map, "test_map": result.test_map,
            "last_test_map": result.last_test_map, "test_metrics": result.test_metrics,
            "per_class_ap": result.per_class_ap, "trainable_params": result.trainable_params,
            "split_digests": result.split_digests}


def trained(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state"]


def test_packed_arms_produce_what_they_produce_alone_bit_for_bit(tiny_cfg, tmp_path):
    cfgs = [tiny_cfg(**STREAM, **arm) for arm in ARMS]
    assert len({str(pack_key(c)) for c in cfgs}) == 1 and len({c.method for c in cfgs}) == 3
    pack, packed = run_pack(cfgs, tmp_path / "pack")
    assert all(r is not None for r in packed) and all(a.error is None for a in pack.arms)
    for i, cfg in enumerate(cfgs):
        alone = run_trial(cfg, tmp_path / f"alone-{i}", progress=False)
        assert record(packed[i]) == record(alone), cfg.method
        mine = trained(tmp_path / "pack" / f"arm-{i}" / "trained" / TRAINED)
        theirs = trained(tmp_path / f"alone-{i}" / TRAINED)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
        # the stream's time counts for each arm, as if it ran alone
        assert 0 < packed[i].shared_time_s < packed[i].train_time_s


# ---- the pack key ----------------------------------------------------------------------------------

def stream_fingerprint(cfg: TrialConfig) -> str:
    """What the stream built from `cfg` (all of it, not just the key) feeds the frozen encoder: every
    split's images, then both epochs' first training batches (pixels, rows) and their dense features."""
    from ablate.data import load_splits

    h = hashlib.sha256()
    images = load_splits(cfg)
    for name in ("train", "val", "test"):
        h.update("\n".join(map(str, images[name].paths)).encode())
    stream = Stream(cfg, images, backbone_from_config(cfg), progress=False)
    for epoch in range(2):
        seed_everything(epoch_seed(cfg.seed, epoch))
        for step, (inputs, rows) in enumerate(stream.loader("train", True, epoch)):
            h.update(inputs.numpy().tobytes() + rows.numpy().tobytes())
            h.update(stream.dense(inputs).numpy().tobytes())
            if step == 1:
                break
    return h.hexdigest()


def other_value(name: str, value: typing.Any) -> typing.Any:
    """A valid value of field `name` other than `value`, found from its type (so a new field is covered
    without editing this test); None when the type gives no candidate."""
    annotation = TrialConfig.model_fields[name].annotation
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    candidates: list[typing.Any] = []
    for arg in typing.get_args(annotation) if union else (annotation,):
        if typing.get_origin(arg) is typing.Literal:
            candidates += list(typing.get_args(arg))
        elif arg is bool:
            candidates.append(not value)
        elif arg is int or typing.get_origin(arg) is typing.Annotated:
            candidates += [value + 1 if isinstance(value, int) else 3, 2, 7]
        elif arg is float:
            candidates += [(value or 0.1) * 0.5, 0.3, 3.0]
        elif arg is str:
            candidates += {"method": ["baseline", "positivecoop", "zeroshot"], "ctx_init": ["a photo of a"]}.get(
                name, ["{} seen here."])
        elif arg is Path:
            candidates.append(Path("/nonexistent/elsewhere"))
    for candidate in candidates:
        if candidate == value:
            continue
        try:
            TrialConfig(**{name: candidate})
        except ValueError:
            continue
        return candidate
    return None


def test_every_field_outside_the_pack_key_leaves_the_stream_unchanged(tiny_cfg):
    base = tiny_cfg(**{**STREAM, "num_workers": 0, "epochs": 2})
    expected = stream_fingerprint(base)
    assert stream_fingerprint(stream_config(base)) == expected  # the shared stream is the arm's own
    untested = []
    for name in TrialConfig.model_fields:
        if name in STREAM_FIELDS or name == "options":  # a method's own options: validated per method, and
            continue  # stream_config sets them to {} like every field outside the key
        value = other_value(name, getattr(base, name))
        if value is None:
            untested.append(name)
            continue
        changed = base.model_copy(update={name: value})
        assert pack_key(changed) == pack_key(base)
        assert stream_fingerprint(changed) == expected, f"{name} changes the stream but is not in the pack key"
    assert not untested, f"no other value found for {untested}: teach other_value() their type"


@pytest.mark.parametrize("name", ["seed", "augment_recipe", "batch_size", "image_size", "val_fraction"])
def test_a_key_field_does_change_the_stream(tiny_cfg, name):
    """The fingerprint sees the differences the key is there for (a fingerprint blind to pixels would
    pass the test above whatever the key held)."""
    base = tiny_cfg(**{**STREAM, "num_workers": 0})
    value = {"seed": 1, "augment_recipe": "torchvision", "batch_size": 8, "image_size": 32, "val_fraction": 0.3}[name]
    assert stream_fingerprint(base.model_copy(update={name: value})) != stream_fingerprint(base)


def test_arms_with_different_streams_are_refused_as_one_pack(tiny_cfg, tmp_path):
    from ablate.errors import ConfigError

    with pytest.raises(ConfigError, match="differ in seed"):
        run_pack([tiny_cfg(seed=0), tiny_cfg(seed=1)], tmp_path)


def test_plan_fills_the_slots_and_respects_the_cap():
    spec = SweepSpec(name="g", base=TrialConfig(dataset="synthetic", epochs=1), max_pack_arms=5,
                     grid={"method": ["dualcoop", "positivecoop", "baseline"], "label_ratio": [0.1, 0.5, 0.9],
                           "seed": [0, 1]})
    arms = expand(spec)  # 18 arms, 2 streams (one per seed)
    few = plan_packs(spec, arms, slots=1, slots_from="test")
    assert sorted(len(p) for p in few.packs) == [4, 4, 5, 5]  # 9 arms a stream, at most 5 a pack
    many = plan_packs(spec, arms, slots=6, slots_from="test")
    assert len(many.packs) == 6 and sorted(len(p) for p in many.packs) == [3] * 6
    for plan in (few, many):
        assert sorted(i for p in plan.packs for i in p) == list(range(len(arms)))
        for members in plan.packs:  # one stream a pack, and a mix of methods
            assert len({str(pack_key(arms[i].config)) for i in members}) == 1
            assert len({arms[i].config.method for i in members}) == min(3, len(members))
    assert plan_packs(spec.model_copy(update={"pack": "off"}), arms, 1, "test").packs == [[i] for i in range(18)]


def test_optuna_or_asha_with_pack_auto_is_one_clear_line():
    space = {"lr": {"type": "float", "low": 1e-3, "high": 1e-1}}
    with pytest.raises(ValueError, match="pack: auto cannot be combined with optuna"):
        SweepSpec(name="s", pack="auto", optuna={"space": space})
    assert not SweepSpec(name="s", optuna={"space": space}).packing  # the default keeps one arm a trial


# ---- faults ------------------------------------------------------------------------------------------

def test_a_diverging_arm_fails_alone_and_the_pack_goes_on(tiny_cfg, tmp_path):
    cfgs = [tiny_cfg(method="baseline", lr=1e30, linear_lr_mult=1e8), tiny_cfg(method="dualembed"),
            tiny_cfg(method="baseline", lr=2e-2)]
    pack, results = run_pack(cfgs, tmp_path)
    assert results[0] is None and "lower lr" in str(pack.arms[0].error)
    assert results[1] is not None and results[2] is not None
    assert record(results[2]) == record(run_trial(cfgs[2], progress=False))


KILL_AFTER_EPOCH = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch, yaml
    from ablate.spec import TrialConfig
    from ablate.trainer import run_pack
    torch.set_num_threads(1)  # as the test process: float sums depend on the thread count
    cfgs = [TrialConfig(**c) for c in yaml.safe_load(open(sys.argv[1]))]
    def report(rows, folder):
        print("epoch", rows[0]["epoch"], flush=True)
        if rows[0]["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # as a lost node would: no clean-up at all
    run_pack(cfgs, Path(sys.argv[2]), report=report)
""")


def test_a_killed_pack_resumes_every_arm_exactly(tiny_cfg, tmp_path):
    import yaml

    cfgs = [tiny_cfg(**{**STREAM, "epochs": 4}, **arm) for arm in ARMS[:3]]
    (tmp_path / "cfgs.yaml").write_text(yaml.safe_dump([c.model_dump(mode="json") for c in cfgs]))
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_EPOCH, str(tmp_path / "cfgs.yaml"), str(tmp_path / "w")],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL and "epoch 2" in killed.stdout, killed.stderr[-2000:]
    epochs_seen = []
    _, resumed = run_pack(cfgs, tmp_path / "w", report=lambda rows, _: epochs_seen.append(rows[0]["epoch"]))
    assert epochs_seen == [3, 4]  # every arm continues at its last completed epoch; none is repeated
    _, uninterrupted = run_pack(cfgs, tmp_path / "u")
    assert [record(r) for r in resumed] == [record(r) for r in uninterrupted]


# ---- the sweep ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def child_record(child) -> tuple:
    """What an arm's run holds that must not depend on packing (times and cost aside)."""
    skip = ("time_s", "hours", "peak_memory", "system/")
    metrics = {k: v for k, v in child.data.metrics.items() if not any(s in k for s in skip)}
    return child.info.status, metrics, child.data.params


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_packed_sweep_records_what_an_unpacked_one_does(tmp_path, cache_dir):
    grid = {"method": ["dualcoop", "positivecoop", "baseline"], "label_ratio": [0.3, 0.7]}
    per_method = {"baseline": {"lr": 2e-2}}
    recorded = {}
    for pack in ("off", "auto"):
        folder = tmp_path / pack
        folder.mkdir()
        spec = write_spec(folder, cache_dir, base={**STREAM, "num_workers": 1}, grid=grid, per_method=per_method,
                          pack=pack)
        summary = run_sweep(spec)
        assert summary["trials"] == 6 and summary["errored"] == 0
        _, children = runs(folder)
        recorded[pack] = {c.info.run_name: child_record(c) for c in children}
        tags = {c.data.tags.get("ablate.pack") for c in children}
        if pack == "auto":  # 2 CPUs, 1 a trial: two packs of three arms keep both slots busy
            assert len(tags) == 2 and all(t and t.endswith("(3 arms)") for t in tags)
            assert all("pack_wall_time_s" in c.data.metrics and "pack_device_hours" in c.data.metrics
                       for c in children)
        else:  # each arm a pack of one: its Ray trial's figures too, so the sweep's bill counts every trial
            assert len(tags) == 6 and all(t and t.endswith("(1 arm)") for t in tags)
            assert all("pack_device_hours" in c.data.metrics for c in children)
    assert recorded["auto"].keys() == recorded["off"].keys() and len(recorded["auto"]) == 6
    for name in recorded["off"]:
        assert recorded["auto"][name] == recorded["off"][name], name


@pytest.mark.usefixtures("local_ray")
def test_a_diverging_arm_in_a_packed_sweep_is_failed_with_its_message(tmp_path, cache_dir):
    spec = write_spec(tmp_path, cache_dir, grid={"method": ["baseline", "dualembed"], "label_ratio": [0.5]},
                      per_method={"baseline": {"lr": 1e30, "linear_lr_mult": 1e8}}, max_concurrent_trials=1)
    summary = run_sweep(spec)
    assert summary["trials"] == 2 and summary["errored"] == 1
    _, children = runs(tmp_path)
    status = {c.data.tags["ablate.method"]: c for c in children}
    assert status["baseline"].info.status == "FAILED" and "lower lr" in status["baseline"].data.tags["ablate.error"]
    assert status["dualembed"].info.status == "FINISHED" and "test_map" in status["dualembed"].data.metrics
    assert status["baseline"].data.tags["ablate.pack"] == status["dualembed"].data.tags["ablate.pack"]


@pytest.mark.slow
def test_sigint_resume_of_a_packed_sweep_reattaches_every_arm(tmp_path, cache_dir):
    spec = write_spec(tmp_path, cache_dir, base={"dataset_options": {"synthetic_images": 120}, "epochs": 6},
                      grid={"method": ["baseline", "dualembed"], "label_ratio": [0.3, 0.7]}, max_concurrent_trials=1)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "ablate.cli", "sweep", "--spec", str(spec)]
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        try:
            _, children = runs(tmp_path)
        except Exception:  # the store is still being created
            continue
        if any(c.data.metrics.get("train_loss") is not None for c in children):
            break
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=180) == 130, (tmp_path / "first.log").read_text()[-3000:]
    _, before = runs(tmp_path)
    assert len(before) == 4 and all(c.info.status != "FINISHED" for c in before)
    resumed = subprocess.run([*command, "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "kept from the launch" in resumed.stderr
    _, after = runs(tmp_path)
    assert {c.info.run_id for c in after} == {c.info.run_id for c in before}  # re-attached, none duplicated
    from ablate.tracking import connect

    client = connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for child in after:
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")]
        assert steps == list(range(1, 7)), (child.info.run_name, steps)  # every epoch once


def test_a_resume_whose_spec_now_expands_into_other_arms_is_refused_before_anything_reopens(tmp_path):
    """Ray restores a packed trial by pack index: a spec this release expands into other arms than at launch
    (a flat dataset field of the last release, now dropped where no dataset owns it, merges arms) would
    restore the wrong arms, so the resume is one error line and the parent run stays as it was."""
    from ablate.errors import ConfigError
    from ablate.sweep.control import SweepState, _sha
    from ablate.sweep.driver import _open_sweep

    path = tmp_path / "spec.yaml"
    path.write_text("name: old\n")
    state_path = tmp_path / "ablate_sweep.json"
    SweepState("sqlite:///nowhere.db", "1", "run", _sha(path), [[0, 2], [1, 3]]).save(state_path)
    with pytest.raises(ConfigError, match=r"launched with 4 arms and its spec now expands into 3 .*anew under"):
        _open_sweep(SweepSpec(name="old"), path, state_path, str(tmp_path), True, None, None, arms=3)
