"""What Ray, Ray Tune and MLflow print that does not help an ablate user, kept off the console: Tune's
experiment box ("Number of trials" counts Ray trials, not the arms packed into them) and its TensorBoard
hint (ablate logs no TensorBoard files; MLflow is the UI), its "wrote the result files" line, Ray's
"Started a local Ray instance" and token notice (ablate starts that Ray and prints its own line), and
MLflow's schema creation. Warnings and errors still show."""

from __future__ import annotations

import logging

# logger -> the least level it shows
QUIET_LOGGERS = {"ray.tune.tune": logging.WARNING, "ray._private.worker": logging.WARNING,
                 "mlflow.store.db.utils": logging.WARNING}
TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


class _Drop(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_libraries() -> None:
    for name, level in QUIET_LOGGERS.items():
        logger = logging.getLogger(name)
        logger.setLevel(max(level, logger.getEffectiveLevel()))
    quiet_tune_box()


def quiet_private_ray_token() -> None:
    """The token notice of a Ray that ablate starts on 127.0.0.1 for itself: nothing for the user to do."""
    logger = logging.getLogger(TOKEN_LOGGER)
    if not any(isinstance(f, _Drop) for f in logger.filters):
        logger.addFilter(_Drop("Token authentication is enabled"))


def quiet_tune_box() -> None:
    """Tune's console reporter without the experiment box and TensorBoard hint. Its class is patched in
    this (the driver's) process rather than a reporter of ours passed in: Tune appends its own reporter
    anyway and starts only the first one's clock, so a second reporter fails on a trial's error."""
    try:
        from ray.tune.experimental.output import TuneTerminalReporter
    except ImportError:
        return

    def experiment_started(self, *args, **kwargs) -> None:
        pass

    TuneTerminalReporter.experiment_started = experiment_started  # type: ignore[method-assign]
