"""A sweep's state between launches and its signals: what `--resume` re-attaches to, and how SIGINT /
SIGTERM stop it with that state kept."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import AblateError
from ..files import write_private
from ..secret_uri import mask

STATE_FILE = "ablate_sweep.json"


@dataclass
class SweepState:
    """Persisted beside the Tune results so `--resume` re-attaches to the same MLflow parent run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    spec_sha256: str
    packs: list[list[int]] | None = None  # arm indices per Ray trial of a packed grid (None: one arm a trial)

    @classmethod
    def load(cls, path: Path) -> SweepState:
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        """The tracking URI is kept masked (a SecretURI's text): --resume gets its password from where the
        launch did (--tracking-uri, the spec, MLFLOW_TRACKING_URI). Owner-only all the same."""
        write_private(path, json.dumps({**self.__dict__, "tracking_uri": mask(self.tracking_uri)}, indent=2))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SweepInterrupted(AblateError):
    """SIGINT or SIGTERM stopped the sweep; its state is kept and the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 after Ctrl-C, 143 after SIGTERM


class Signals:
    """SIGINT and SIGTERM while the sweep runs: the first stops Tune gracefully (it keeps the experiment
    state for --resume; SIGUSR1 is Tune's own stop signal), a second one, or one outside Tune, stops at once."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.in_tune = False

    def handle(self, signum: int, frame) -> None:
        self.received.append(signum)
        if not self.in_tune or len(self.received) > 1:
            raise KeyboardInterrupt
        threading.Thread(target=self._stop_tune, daemon=True).start()

    def _stop_tune(self) -> None:
        """Tune's stop signal, once Tune listens for it (it installs its handler as `fit` starts; before
        that SIGUSR1 would end the process)."""
        while self.in_tune and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
            time.sleep(0.1)
        if self.in_tune:
            os.kill(os.getpid(), signal.SIGUSR1)

    @property
    def signum(self) -> int:
        return self.received[0] if self.received else signal.SIGINT

    def _install(self) -> dict:
        return {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    @contextlib.contextmanager
    def installed(self) -> Iterator[Signals]:
        if threading.current_thread() is not threading.main_thread():  # handlers only work there
            yield self
            return
        before = self._install()
        tune_handler = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours decides; Tune must not replace it
        try:
            yield self
        finally:
            for sig, handler in before.items():
                if signal.getsignal(sig) == self.handle:  # not one Ray installed since (its SIGTERM cleanup)
                    signal.signal(sig, handler)
            if tune_handler is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_handler

    @contextlib.contextmanager
    def tune(self) -> Iterator[None]:
        """Ours again while Tune runs: starting local Ray installs Ray's own SIGTERM handler."""
        main = threading.current_thread() is threading.main_thread()
        before = {**self._install(), signal.SIGUSR1: signal.getsignal(signal.SIGUSR1)} if main else {}
        self.in_tune = True
        try:
            yield
        finally:
            self.in_tune = False
            for sig, handler in before.items():  # SIGUSR1 too: the next `fit` installs a fresh one
                signal.signal(sig, handler)


def resume_command(spec_path: Path, storage_path: str | None, address: str | None) -> str:
    words = ["ablate", "sweep", "--spec", str(spec_path)]
    if storage_path:
        words += ["--storage-path", storage_path]
    if address:
        words += ["--ray-address", address]
    return shlex.join([*words, "--resume"])
