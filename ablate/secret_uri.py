"""A URI that may hold a password (a database or tracking server's `user:password@`), masked by construction.

`SecretURI` is a str whose text is the masked URI (`postgresql+psycopg2://ablate:***@host/db`): printing,
logging, f-strings, repr, JSON and pickling all see only that. The real URI is read with `reveal()`, which
only the code that opens a connection calls (the MLflow client, the database probes, Optuna's storage);
code that forgets to reveal fails to log in, it never shows the password.

Pickles (Ray's tuner.pkl, a trial's parameters in the object store, Tune's searcher state) hold the masked
text; unpickling finds the real URI again in this process's registry, which every SecretURI made here
joins, and which processes started from here inherit through the environment (ABLATE_SECRET_URIS, readable
by its user and root only), as `ablate server` hands its store to `mlflow server`.
"""

from __future__ import annotations

import json
import os
import re
from urllib.parse import urlsplit, urlunsplit

from .errors import AblateError

SECRETS_ENV = "ABLATE_SECRET_URIS"
MASK = "***"
# `scheme://user:password@` anywhere in a text (a spec's YAML, a message): the password is what lies between
# the first `:` after the user and the last `@` before the host's end, as urlsplit reads a URI
_IN_TEXT = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@'\"]*:)([^\s/'\"]*)@")
_known: dict[str, str] = {}  # masked -> real, for every SecretURI made or inherited in this process


def mask(text: str) -> str:
    """`text` with the password of every URI in it replaced by ***."""
    return _IN_TEXT.sub(lambda m: f"{m.group(1)}{MASK}@", str(text))


def _mask_uri(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{MASK}@{host}"))


class SecretURI(str):
    """A URI whose text is masked; `reveal()` (or the module's `reveal`) gives the real one."""

    _real: str | None

    def __new__(cls, uri: str) -> SecretURI:
        real = reveal(uri)
        masked = _mask_uri(real)
        obj = super().__new__(cls, masked)
        obj._real = real
        if masked != real:
            _remember(masked, real)
        return obj

    def reveal(self) -> str:
        if self._real is None:
            raise AblateError(f"the password of {self} did not reach this process (it is never written to a file "
                              f"or a pickle; {SECRETS_ENV} passes it to the processes a sweep starts): start the "
                              "workers from the driver's environment, or give the URI where this process reads it")
        return self._real

    def __repr__(self) -> str:
        return f"SecretURI({str.__repr__(self)})"

    def __reduce__(self):  # pickles, copies: the masked text only, found again on the other side
        return _restore, (str(self),)


def reveal(uri: str) -> str:
    """The real URI of a SecretURI (a plain str is its own)."""
    return uri.reveal() if isinstance(uri, SecretURI) else str(uri)


def _remember(masked: str, real: str) -> None:
    _known[masked] = real
    os.environ[SECRETS_ENV] = json.dumps(sorted(set(_known.values())))


def _inherited() -> dict[str, str]:
    try:
        reals = json.loads(os.environ.get(SECRETS_ENV, "[]"))
    except ValueError:
        return {}
    return {_mask_uri(r): r for r in reals if isinstance(r, str)}


def _restore(masked: str) -> SecretURI:
    real = _known.get(masked) or _inherited().get(masked)
    if real is not None:
        return SecretURI(real)
    obj = str.__new__(SecretURI, masked)
    obj._real = None if MASK in masked else masked  # a URI without a password is complete as it is
    return obj
