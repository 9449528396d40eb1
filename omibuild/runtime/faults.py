"""How the runtime says what went wrong: the client's error (InputError, a 400), the model's
(PredictError), a module the image lacks, and a failure nobody expected (a request id and
one JSON log line). A library's message is bounded and never echoes the request's data."""

from __future__ import annotations

import uuid
from typing import Any

from omibuild.runtime import log

MAX_MESSAGE = 200  # characters of a library's error message that reach a reply or a log


def brief(exc: BaseException) -> str:
    """A library's message, first line, bounded: some (numpy's "could not convert string to
    float: '...'", a KeyError) carry the request's own data, which a reply must not echo."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def shown(value: object, limit: int = 60) -> str:
    """A value the client sent (a tensor name, a datatype, a version), as an error message
    quotes it: its repr, cut to ``limit`` characters. A reply carries a glimpse of the request
    at most, however long what it was sent."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def detach(exc: BaseException) -> BaseException:
    """The error without its traceback or chained errors. Their frames hold the request's data,
    and a traceback that reaches the frame holding the error is a cycle: freed only by a full
    collection, which hardly ever runs once the loaded heap is frozen (gc.freeze)."""
    exc.__traceback__ = None
    exc.__context__ = exc.__cause__ = None
    return exc


def fault(kind: type[Exception], prefix: str, exc: BaseException, **more: Any) -> Exception:
    """``kind`` with a bounded message about ``exc`` (and ``more`` of its own arguments);
    ``exc`` is detached from its frames. Raise it ``from None``."""
    message = f"{prefix}: {type(exc).__name__}: {brief(exc)}"
    detach(exc)
    return kind(message, **more)


def unexpected(exc: BaseException, **fields: Any) -> str:
    """Log an error no handler expected as one JSON line, detached from its frames, under a
    new request id; the id goes back to the client, so one line of the log answers for it."""
    rid = uuid.uuid4().hex[:16]
    log.error(
        "request failed", request_id=rid, error=f"{type(exc).__name__}: {brief(exc)}", **fields
    )
    detach(exc)
    return rid


class InputError(Exception):
    """The request's data does not fit the model (400). ``signature``: it does not fit the
    signature the model was saved with (MLflow's scoring server says INVALID_PARAMETER_VALUE
    for that, and BAD_REQUEST for what the model itself refuses)."""

    def __init__(self, message: str, *, signature: bool = False) -> None:
        super().__init__(message)
        self.signature = signature


class SignatureMismatch(ValueError):
    """A flavor's word that the input does not fit the model's saved signature."""


class PredictError(Exception):
    """The model or a hook failed (500); the server stays up."""


class MissingModule(PredictError):
    """The model needs a module the image does not have (500, and the build says which)."""


class NotInImage(Exception):
    """The image was built without what the request asks for: an explainer, a drift
    detector (501)."""


# Import names of well-known distributions, spelled as PyPI spells them (init reads this too,
# for when no environment at hand has the module). Only these are ever named as a
# requirement: any other missing module may as well be the repository's own code.
KNOWN_DISTRIBUTIONS = {
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "cv2": "opencv-python-headless",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "bs4": "beautifulsoup4",
    "mlflow": "mlflow-skinny",
    "attr": "attrs",
    "dateutil": "python-dateutil",
    "tensorflow": "tensorflow-cpu",
    "category_encoders": "category-encoders",
    "imblearn": "imbalanced-learn",
    **{n: n for n in ("numpy", "scipy", "pandas", "joblib", "skops", "xgboost", "lightgbm",
                      "catboost", "torch", "transformers", "keras", "onnxruntime",
                      "statsmodels")},
}  # fmt: skip


def load_failure_line(exc: BaseException) -> str:
    """``model failed to load: <reason>`` with a hint where the fix is known."""
    if isinstance(exc, ModuleNotFoundError) and getattr(exc, "name", None):
        return f"model failed to load: {missing_module_line(exc)}"
    return f"model failed to load: {brief(exc) or repr(exc)}"


def missing_module_line(exc: ModuleNotFoundError) -> str:
    """``No module named 'x'`` and what to do: add the distribution where the import name is a
    well-known one, else list the repository's own module under code, or add the
    distribution that provides it."""
    line = brief(exc) or repr(exc)
    missing = getattr(exc, "name", None)
    if missing:
        top = missing.split(".")[0]
        if top in KNOWN_DISTRIBUTIONS:
            dist = KNOWN_DISTRIBUTIONS[top]
            return f"{line} (hint: add {dist} to image.requirements in omi.yaml and apply again)"
        return (
            f"{line} (hint: if {top} is your repository's own code, list it under code: in "
            "omi.yaml (omibuild init does); else add the distribution that provides it to "
            "image.requirements)"
        )
    return line
