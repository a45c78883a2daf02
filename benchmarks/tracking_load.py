"""Many trials logging to one MLflow server at once: requests, retries and latency of a log call.

Each simulated trial is its own process doing what a sweep trial does through ablate's tracking
(`TrialRun.attach`, then per epoch one `log_epoch` with the epoch's row and its per-step training
losses); training is replaced by a short sleep so the server, not the trials, is what is measured.
Afterwards every run is read back: each epoch's row and each step's loss must be there exactly once.

    python benchmarks/tracking_load.py                       # starts a throw-away `ablate server`
    python benchmarks/tracking_load.py --tracking-uri http://head:5000 --trials 16 --steps 2500
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def trial(uri: str, experiment_id: str, parent: str, index: int, epochs: int, steps: int, step_s: float) -> dict:
    """One simulated trial (in its own process): its log calls' latencies and the HTTP requests they took."""
    import mlflow.utils.rest_utils as rest

    from ablate import tracking
    from ablate.spec import TrialConfig

    requests = 0
    send = rest.http_request

    def counted(*args, **kwargs):
        nonlocal requests
        requests += 1
        return send(*args, **kwargs)

    rest.http_request = counted  # every REST call of the MLflow client goes through it
    run = tracking.TrialRun.attach(tracking.TrackingContext(uri, experiment_id, parent), TrialConfig(),
                                   f"load_{index}", {"trial": index})
    latencies = []
    for epoch in range(1, epochs + 1):
        time.sleep(step_s * steps)  # the epoch's training
        losses = [1.0 / (epoch * steps + s) for s in range(steps)]
        t0 = time.perf_counter()
        run.log_epoch({"epoch": epoch, "loss": losses[-1], "lr": 0.01}, losses)
        latencies.append(time.perf_counter() - t0)
    run.finish()
    return {"run_id": run.run_id, "latencies": latencies, "requests": requests,
            "retries": sum(tracking.retries_done.values())}


def check(uri: str, results: list[dict], epochs: int, steps: int) -> list[str]:
    """Runs whose epoch rows or step losses are missing or doubled."""
    from ablate.tracking import EPOCH_METRICS, STEP_LOSS, connect

    client = connect(uri)
    wrong = []
    for r in results:
        rows = sorted(m.step for m in client.get_metric_history(r["run_id"], EPOCH_METRICS["loss"]))
        points = sorted(m.step for m in client.get_metric_history(r["run_id"], STEP_LOSS))
        if rows != list(range(1, epochs + 1)) or points != list(range(1, epochs * steps + 1)):
            wrong.append(f"{r['run_id']}: {len(rows)} epoch rows, {len(points)} step points")
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", help="an MLflow server (default: start a temporary `ablate server`)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="training steps per epoch (one loss each)")
    parser.add_argument("--step-s", type=float, default=0.002, help="simulated seconds per training step")
    args = parser.parse_args()

    from ablate.server import ServerSettings, start, stop
    from ablate.tracking import connect, ensure_experiment, start_parent_run

    root = None
    uri = args.tracking_uri
    if uri is None:
        root = Path(tempfile.mkdtemp(prefix="ablate-load-"))
        root.chmod(0o755)  # the postgres system user enters it when this runs as root
        uri = start(root / "server", ServerSettings(port=5099, db_port=5499, workers=4,
                                                     artifacts=str(root / "artifacts")))["tracking_uri"]
    try:
        client = connect(uri)
        experiment = ensure_experiment(client, f"tracking_load_{int(time.time())}")
        note = Path(tempfile.mkdtemp()) / "load.yaml"
        note.write_text("name: tracking_load\n")
        parent = start_parent_run(client, experiment, "tracking_load", note, note.read_text())
        t0 = time.perf_counter()
        with mp.get_context("spawn").Pool(args.trials) as pool:
            results = pool.starmap(trial, [(uri, experiment, parent, i, args.epochs, args.steps, args.step_s)
                                           for i in range(args.trials)])
        wall = time.perf_counter() - t0
        latencies = sorted(x for r in results for x in r["latencies"])
        wrong = check(uri, results, args.epochs, args.steps)
        print(f"{args.trials} trials x {args.epochs} epochs x {args.steps} steps at once against {uri}: "
              f"{sum(r['requests'] for r in results)} requests, {sum(r['retries'] for r in results)} retries, "
              f"{len(latencies)} log_epoch calls ({args.steps + 2} metrics each): "
              f"p50 {statistics.median(latencies) * 1000:.0f} ms, "
              f"p95 {latencies[int(0.95 * (len(latencies) - 1))] * 1000:.0f} ms, "
              f"max {latencies[-1] * 1000:.0f} ms; wall {wall:.1f} s; "
              f"points lost or doubled: {'none' if not wrong else wrong}")
    finally:
        if root is not None:
            stop(root / "server")
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
