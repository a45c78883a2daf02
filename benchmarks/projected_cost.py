"""Projected device-hours of a sweep spec (default tune_specs/full_grid.yaml): this code vs the reference recipe.

Measured here, with the spec's backbone at its image size and random weights (timing does not
depend on their values), all in one process:
  img        dense image features, seconds per image (a batch of --image-batch images)
  text(L)    prompt text encoder per sequence of L tokens: forward, and forward + backward to the
             inputs (the prompt contexts); --text-batch sequences at once
  head       per method and dataset at the real shapes (B x (HW+1) x D, N classes): head forward, and
             head + loss + backward + optimizer (the training step without the text encoder)
Extrapolated: text cost is linear in the number of sequences (K = N per prompt side, 2N for DualCoOp),
so K x text(L) from the measured per-sequence cost; on a GPU pass --text-batch 160 to measure the
largest K directly. Assumed: official split sizes (the data is not read) for COCO-2014 / VOC-2007.
Not counted: data loading and augmentation (CPU workers; a pack does them once for all its arms too),
host-device copies, Ray/MLflow overhead, and fractional GPUs (device-hours here are busy time). Zero-shot trials
count their image encoding only (their text is encoded once per pass).

A trial of E epochs, B images a step, S = ceil(train / B) steps, evaluating val every epoch and test
at the end, K prompt sequences, L tokens:
  reference (online features, 77 tokens, text encoder per batch also at evaluation, test twice):
    E * (S * (B*img + K*text_fb(77) + head_fb) + Bv * (B*img + K*text_f(77) + head_f)) + 2 * Bt * (same eval batch)
  ablate, split into the image stream and the arm's own compute (truncated prompts, class embeddings once per
  evaluation pass, one test pass scoring the selected and the last epoch):
    stream = (E * (S + Bv) + Bt) * B*img   (online features, as every augmenting spec runs; 0 when cached)
    own    = E * (S * (K*text_fb(L) + head_fb) + Bv * head_f + K*text_f(L)) + Bt * 2*head_f + 2*K*text_f(L)
  unpacked: every trial pays stream + own; packed: each pack pays its stream once, every arm its own
  (packs as the sweep plans them for --slots concurrent trials); cached specs add one cache build per
  dataset: (train + test images) * img.
with Bv, Bt the val and test batches. Each group's line prints this with its numbers.

    python benchmarks/projected_cost.py [--spec tune_specs/full_grid.yaml] [--device cpu|cuda] [--reps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import torch
from bench_methods import prompt_sides

from ablate.arm import build_optimizer
from ablate.backbone import Backbone, create_backbone
from ablate.data import load_splits
from ablate.data.classnames import class_names
from ablate.loss import AsymmetricLoss
from ablate.methods import Method, create_method
from ablate.prompts import PLACEHOLDER
from ablate.spec import TrialConfig
from ablate.sweep import expand, plan_packs, resolve_spec_path, samples_per_arm
from ablate.sweep.spec import load_sweep_spec

# (train split, test split) images: COCO train2014 / val2014, VOC2007 trainval / test
OFFICIAL_SIZES = {"coco2014": (82_783, 40_504), "voc2007": (5_011, 4_952)}
FULL_TOKENS = 77


class RoundRobin:
    """Times named jobs in turns, one round after another, so a noisy machine slows all of them alike."""

    def __init__(self, device: torch.device, amp: bool) -> None:
        self.cuda, self.amp = device.type == "cuda", amp
        self.jobs: dict[str, tuple[Callable[[], object], bool, int]] = {}

    def add(self, name: str, fn: Callable[[], object], grad: bool = False, per: int = 1) -> None:
        """`fn` is timed with gradients on or off; its time is divided by `per` (images, sequences)."""
        self.jobs[name] = (fn, grad, per)

    def run(self, reps: int) -> dict[str, float]:
        """Median seconds per job (per unit) over `reps` rounds after one warm-up round."""
        times: dict[str, list[float]] = defaultdict(list)
        for rep in range(reps + 1):
            for name, (fn, grad, per) in self.jobs.items():
                self._sync()
                t0 = time.perf_counter()
                with torch.set_grad_enabled(grad), \
                        torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext():
                    fn()
                self._sync()
                if rep:
                    times[name].append((time.perf_counter() - t0) / per)
        return {name: statistics.median(t) for name, t in times.items()}

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def prompt_length(backbone: Backbone, dataset: str, n_ctx: int) -> int:
    """Tokens up to the longest EOT of the class prompts: what the truncated encoder runs."""
    tokens = backbone.tokenize([" ".join([PLACEHOLDER] * n_ctx) + f" {c}." for c in class_names(dataset)])
    return int(tokens.argmax(dim=-1).max()) + 1


def add_text_jobs(jobs: RoundRobin, backbone: Backbone, length: int, k: int) -> None:
    """Per sequence of `length` tokens: forward, and forward + backward to the input embeddings."""
    device = backbone.text.token_embedding.weight.device
    x = torch.randn(k, length, backbone.info.text_width, device=device, requires_grad=True)
    eot = torch.full((k,), length - 1, device=device)
    jobs.add(f"text/{length}/fwd", lambda: backbone.encode_embeddings(x, eot), per=k)
    jobs.add(f"text/{length}/fwd_bwd", lambda: backbone.encode_embeddings(x, eot).float().sum().backward(),
             grad=True, per=k)


def add_head_jobs(jobs: RoundRobin, name: str, method: Method, dense: torch.Tensor) -> None:
    """Per step: the head alone (forward), and head + loss + backward + optimizer."""
    with torch.no_grad():
        fixed = method.class_embeddings()
    # leaves standing in for the text encoder's output, so the backward reaches the class embeddings
    leaves = None if fixed is None else tuple(e.detach().requires_grad_() for e in fixed)
    jobs.add(f"head/{name}/fwd", lambda: method.head(dense, leaves))
    if not method.trainable:
        return
    targets = (torch.rand(dense.shape[0], method.n_classes, device=dense.device) < 0.3).float()
    loss_fn = AsymmetricLoss("asl_softmax", None, 1.0, 0.05, 1e-8, "mean", 1.0)
    optimizer = build_optimizer(method, TrialConfig())

    def step() -> None:
        loss = loss_fn(method.head(dense, leaves).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    jobs.add(f"head/{name}/step", step, grad=True)


def split_sizes(cfg: TrialConfig) -> tuple[int, int, int, str]:
    """(train, val, test) images of a trial and where the numbers come from."""
    if cfg.dataset in OFFICIAL_SIZES:
        n_train, n_test = OFFICIAL_SIZES[cfg.dataset]
        n_val = min(max(1, round(cfg.val_fraction * n_train)), n_train - 1)  # as data.split_val
        return n_train - n_val, n_val, n_test, "assumed (official split sizes)"
    splits = load_splits(cfg)
    return len(splits["train"]), len(splits["val"]), len(splits["test"]), "counted from the data"


def trial_cost(cfg: TrialConfig, sizes: tuple[int, int, int], k: int, length: int, img: float,
               text: dict[int, dict[str, float]], head: dict[str, float]) -> dict:
    """Device-seconds of one trial: the reference's, and ablate's split into the image stream (what a pack
    shares: the frozen encoder on every train, val and test batch; 0 on cached features) and the arm's own
    compute, with the arithmetic as text."""
    n_train, n_val, n_test = sizes
    b, e = cfg.batch_size, cfg.epochs
    steps, val_b, test_b = (math.ceil(n / b) for n in (n_train, n_val, n_test))
    t77, tl = text[FULL_TOKENS], text[length]
    online = cfg.features == "online"
    g = lambda x: f"{x:.4g}"  # noqa: E731 - a short number format for the arithmetic lines
    if cfg.method == "zeroshot":  # one pass over val and test, nothing trained
        ref = (n_val + n_test) * img + (val_b + test_b) * head["fwd"]
        stream = (n_val + n_test) * img if online else 0.0
        own = (val_b + test_b) * head["fwd"]
        return {"reference_s": ref, "stream_s": stream, "own_s": own,
                "reference_arithmetic": f"({n_val} + {n_test}) * {g(img)} + {val_b + test_b} * {g(head['fwd'])}",
                "ablate_arithmetic": f"stream {stream and f'({n_val} + {n_test}) * {g(img)}'} + own "
                                     f"{val_b + test_b} * {g(head['fwd'])}"}
    ref_train = b * img + k * t77["fwd_bwd"] + head["step"]
    ref_eval = b * img + k * t77["fwd"] + head["fwd"]
    ref = e * (steps * ref_train + val_b * ref_eval) + 2 * test_b * ref_eval
    ours_train = k * tl["fwd_bwd"] + head["step"]
    # one test pass scores both the selected and the last epoch's parameters
    own = e * (steps * ours_train + val_b * head["fwd"] + k * tl["fwd"]) + test_b * 2 * head["fwd"] + 2 * k * tl["fwd"]
    stream = (e * (steps + val_b) + test_b) * b * img if online else 0.0
    return {
        "reference_step_s": ref_train, "ablate_step_s": ours_train + (b * img if online else 0.0),
        "reference_s": ref, "stream_s": stream, "own_s": own,
        "reference_arithmetic": (
            f"{e} * ({steps} * ({b}*{g(img)} + {k}*{g(t77['fwd_bwd'])} + {g(head['step'])}) + {val_b} * "
            f"({b}*{g(img)} + {k}*{g(t77['fwd'])} + {g(head['fwd'])})) + 2 * {test_b} * ({g(ref_eval)}) = {g(ref)} s"),
        "ablate_arithmetic": (
            f"stream ({e} * ({steps} + {val_b}) + {test_b}) * {b}*{g(img) if online else 0} = {g(stream)} s; own "
            f"{e} * ({steps} * ({k}*{g(tl['fwd_bwd'])} + {g(head['step'])}) + {val_b} * {g(head['fwd'])} + "
            f"{k}*{g(tl['fwd'])}) + {test_b} * 2*{g(head['fwd'])} + 2*{k}*{g(tl['fwd'])} = {g(own)} s"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="tune_specs/full_grid.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=5, help="measurement rounds")
    parser.add_argument("--image-batch", type=int, default=None, help="default: 2 on CPU, the spec's batch on GPU")
    parser.add_argument("--text-batch", type=int, default=8, help="sequences per text measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    parser.add_argument("--slots", type=int, default=1,
                        help="concurrent trial slots the packs are planned for (1: the fewest, largest packs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_sweep_spec(resolve_spec_path(args.spec))
    arms = expand(spec)
    groups = Counter()
    configs: dict[tuple, TrialConfig] = {}
    for arm in arms:
        c = arm.config
        key = (c.method, c.dataset, c.n_ctx if prompt_sides(c.method) else None)
        groups[key] += samples_per_arm(spec, arm)
        configs.setdefault(key, c)
    base = arms[0].config
    device = torch.device(args.device)
    jobs = RoundRobin(device, amp=device.type == "cuda" and base.amp)
    torch.manual_seed(0)
    backbone = create_backbone(base.backbone, "none", base.image_size, device)
    size, batch = backbone.info.image_size, args.image_batch or (2 if device.type == "cpu" else base.batch_size)
    images = torch.randn(batch, 3, size, size, device=device)
    jobs.add("img", lambda: backbone.dense_features(images), per=batch)
    with torch.no_grad():
        dense_shape = backbone.dense_features(images[:1]).shape
    lengths = sorted({FULL_TOKENS} | {prompt_length(backbone, d, n) for _, d, n in groups if n})
    for length in lengths:
        add_text_jobs(jobs, backbone, length, args.text_batch)
    dense = torch.randn(base.batch_size, dense_shape[1], dense_shape[2], device=device)
    for (method, dataset, _), cfg in configs.items():  # the context length does not change the head
        if f"head/{method}/{dataset}/fwd" not in jobs.jobs:
            model = create_method(cfg, backbone, class_names(dataset)).to(device)
            add_head_jobs(jobs, f"{method}/{dataset}", model, dense)
    measured = jobs.run(args.reps)
    img = measured["img"]
    text = {n: {p: measured[f"text/{n}/{p}"] for p in ("fwd", "fwd_bwd")} for n in lengths}
    heads = {}
    for name, seconds in measured.items():
        if name.startswith("head/"):
            _, method, dataset, part = name.split("/")
            heads.setdefault((method, dataset), {})[part] = seconds
    print(json.dumps({
        "bench": "projected_cost", "line": "measured", "device": str(device), "autocast": jobs.amp,
        "threads": torch.get_num_threads(), "rounds": args.reps, "backbone": base.backbone,
        "weights": "random (timing only)", "image_size": size, "dense_tokens": dense_shape[1],
        "embed_dim": dense_shape[2], "img_s_per_image": round(img, 6), "image_batch": batch,
        "text_s_per_sequence": {str(k): {p: round(v, 6) for p, v in c.items()} for k, c in text.items()},
        "text_measured_on_sequences": args.text_batch,
        "head_s_per_step": {f"{m}/{d}": {p: round(v, 6) for p, v in c.items()} for (m, d), c in heads.items()},
    }), flush=True)

    costs: dict[tuple, dict] = {}
    sizes = {}
    for key, trials in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        method, dataset, n_ctx = key
        cfg = configs[key]
        n_train, n_val, n_test, source = split_sizes(cfg)
        sizes[dataset] = (n_train, n_val, n_test)
        k = prompt_sides(method) * len(class_names(dataset))
        length = prompt_length(backbone, dataset, n_ctx) if n_ctx else FULL_TOKENS
        cost = costs[key] = trial_cost(cfg, sizes[dataset], k, length, img, text, heads[method, dataset])
        print(json.dumps({
            "bench": "projected_cost", "line": "group", "method": method, "dataset": dataset, "n_ctx": n_ctx,
            "trials": trials, "epochs": cfg.epochs if method != "zeroshot" else 0, "batch_size": cfg.batch_size,
            "features": cfg.features, "train_val_test": sizes[dataset], "sizes": source, "sequences": k,
            "tokens": {"reference": FULL_TOKENS, "ablate": length} if k else None,
            **{name: round(v, 4) for name, v in cost.items() if name.endswith("_s")},
            "reference_trial_h": round(cost["reference_s"] / 3600, 3),
            "ablate_trial_h": round((cost["stream_s"] + cost["own_s"]) / 3600, 3),
            "reference_arithmetic": cost["reference_arithmetic"], "ablate_arithmetic": cost["ablate_arithmetic"],
        }), flush=True)
    cached = {a.config.dataset for a in arms if a.config.features == "cached"}
    build = {d: sum(sizes[d]) * img for d in cached}
    for dataset, seconds in build.items():
        n = sum(sizes[dataset])
        print(json.dumps({"bench": "projected_cost", "line": "cache_build", "dataset": dataset, "images": n,
                          "arithmetic": f"{n} * {img:.4g} = {seconds:.4g} s", "hours": round(seconds / 3600, 3)}))
    print_totals(args, spec, arms, costs, sum(build.values()), device)


def arm_cost(spec, arm, costs: dict[tuple, dict]) -> dict:
    c = arm.config
    return costs[(c.method, c.dataset, c.n_ctx if prompt_sides(c.method) else None)]


def print_totals(args, spec, arms, costs: dict[tuple, dict], build_s: float, device: torch.device) -> None:
    """Reference, ablate one arm a trial, and ablate packed (each pack's image stream once, every arm's own
    compute), each summed over the spec's trials."""
    samples = [samples_per_arm(spec, a) for a in arms]
    reference = sum(n * arm_cost(spec, a, costs)["reference_s"] for a, n in zip(arms, samples))
    own = sum(n * arm_cost(spec, a, costs)["own_s"] for a, n in zip(arms, samples))
    streams = sum(n * arm_cost(spec, a, costs)["stream_s"] for a, n in zip(arms, samples))
    plan = plan_packs(spec, arms, args.slots, "--slots")
    packed_streams = sum(arm_cost(spec, arms[p[0]], costs)["stream_s"] for p in plan.packs)
    unpacked, packed = streams + own + build_s, packed_streams + own + build_s
    h = lambda x: round(x / 3600, 1)  # noqa: E731
    print(json.dumps({
        "bench": "projected_cost", "line": "total", "spec": str(args.spec), "trials": sum(samples),
        "device": str(device), "unit": f"{device.type}-hours of busy time on this machine",
        "reference_h": h(reference), "ablate_unpacked_h": h(unpacked), "ablate_packed_h": h(packed),
        "packs": plan.line(len(arms)),
        "reference_over_unpacked": round(reference / unpacked, 2),
        "reference_over_packed": round(reference / packed, 2),
        "unpacked_over_packed": round(unpacked / packed, 2),
        "arithmetic": {
            "reference": f"sum over trials of the reference's trial cost = {reference:.4g} s",
            "ablate_unpacked": f"every trial's image stream {streams:.4g} + own compute {own:.4g} + cache builds "
                               f"{build_s:.4g} = {unpacked:.4g} s",
            "ablate_packed": f"each of {len(plan.packs)} packs' image stream once {packed_streams:.4g} + own "
                             f"compute {own:.4g} + cache builds {build_s:.4g} = {packed:.4g} s"},
    }), flush=True)


if __name__ == "__main__":
    main()
