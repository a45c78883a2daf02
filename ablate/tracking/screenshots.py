"""`make screenshots`: the README's images of a sweep, taken from a real store in headless Chromium: the
prepared runs view, its chart view (an `mlflow server` on 127.0.0.1 serves the store) and the report page.

    python -m ablate.tracking.screenshots --experiment quickstart --report reports/quickstart --out tune_specs
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import ConfigError
from .names import DEFAULT_DB, ROLE_TAG
from .notes import ui_address
from .store import connect_existing, retried

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=60000"]
SHOTS = {"mlflow_runs": (1600, 1000, False), "mlflow_charts": (1600, 2200, True)}  # name: width, height, charts


def newest_sweep(uri: str, experiment: str) -> tuple[str, str]:
    """(experiment id, parent run id) of the experiment's newest sweep."""
    client = connect_existing(uri)
    exp = retried(client.get_experiment_by_name, experiment)
    if exp is None:
        raise ConfigError(f"no experiment '{experiment}' in {uri}; run its sweep first (make quickstart)")
    parents = retried(client.search_runs, [exp.experiment_id], f"tags.`{ROLE_TAG}` = 'sweep'",
                      order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise ConfigError(f"experiment '{experiment}' holds no sweep; run it first (make quickstart)")
    return exp.experiment_id, parents[0].info.run_id


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(uri: str, log: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on the store, on 127.0.0.1; returns it once it answers."""
    from ..server import healthy

    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port",
                             str(port), "--workers", "1"], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    while not healthy(base):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGTERM)
            raise ConfigError(f"mlflow server did not start: {log.read_text()[-500:]}")
        time.sleep(1)
    return proc, base


def shoot(url: str, out: Path, width: int, height: int, profile: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise ConfigError("chromium is not installed; install it (e.g. apt-get install chromium) to take screenshots")
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                    f"--screenshot={out}", url], check=True, capture_output=True, timeout=240)


def take(uri: str, experiment: str, report: Path | None, out_dir: Path, prefix: str) -> list[Path]:
    experiment_id, parent = newest_sweep(uri, experiment)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = _serve(uri, Path(tmp) / "server.log")
        try:
            for name, (width, height, charts) in SHOTS.items():
                url = ui_address(base, experiment_id, parent, charts=charts)
                written.append(out_dir / f"{prefix}_{name}.png")
                shoot(url, written[-1], width, height, Path(tmp) / name)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        if report is not None:
            page = Path(report) / "report.html"
            if not page.is_file():
                raise ConfigError(f"{page} does not exist; write it first (ablate report --experiment {experiment})")
            written.append(out_dir / f"{prefix}_report.png")
            shoot(page.absolute().as_uri(), written[-1], 1400, 1800, Path(tmp) / "report")
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracking-uri", default=f"sqlite:///{DEFAULT_DB}")
    p.add_argument("--experiment", default="quickstart")
    p.add_argument("--report", type=Path, help="a report folder (ablate report) whose page is shot too")
    p.add_argument("--out", type=Path, default=Path("tune_specs"))
    p.add_argument("--prefix", default="quickstart")
    args = p.parse_args(argv)
    try:
        for path in take(args.tracking_uri, args.experiment, args.report, args.out, args.prefix):
            print(f"wrote {path}")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
