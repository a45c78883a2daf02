"""One base for every mistake a user can fix: the CLI prints an AblateError as one line (exit 2),
never a traceback. Each kind names where the problem is; the message says what is wrong and how to
fix it, and is raised before anything is recorded or run wherever that can be known."""

from __future__ import annotations


class AblateError(Exception):
    """A user error: bad configuration, data, weights, tracking store, report or probe request."""


class ConfigError(AblateError, ValueError):
    """A configuration problem that names the file and field; nothing was run."""


class DataError(AblateError, ValueError):
    """A dataset problem: what is wrong and the expected layout / how to fix it."""


class WeightsError(AblateError, ValueError):
    """The backbone name, weights or tower type cannot be used; the message says how to fix it."""


class TrackingError(AblateError, RuntimeError):
    """The tracking store cannot be reached or used; the message names the URI."""


class ReportError(AblateError, ValueError):
    """The experiment or run cannot be reported on; the message says what exists instead."""


class ProbeError(ConfigError):
    """A probe cannot run as asked (missing class list, no trained prompts...); the message says why."""


class TrialDiverged(AblateError, FloatingPointError):
    """The loss, a trained parameter or the scores became NaN or infinite; the message says when and what
    to change."""


class Interrupted(AblateError):
    """Ctrl-C (or SIGTERM) stopped a command; the message says what was kept and how to go on. Exit 130."""

    exit_code = 130


def worker_message(err: BaseException) -> str:
    """The error's own message: a DataLoader worker re-raises it with the worker's whole traceback as its
    text, ending in `module.Type: message`, which is all a user needs."""
    text = str(err)
    marker = f"{type(err).__module__}.{type(err).__qualname__}: "
    at = text.rfind(marker)
    return text[at + len(marker):].strip() if text.startswith("Caught ") and at >= 0 else text


class MovedSetting(FutureWarning):
    """A setting written where an older release kept it: still honoured for one release, with a one-line
    notice naming its new place (a FutureWarning, so it shows by default)."""
