"""The model directory signed with OpenSSF's model-signing library (``pip install
'omibuild[signing]'``), with an elliptic-curve key of the user's own: `apply --sign-model
KEY.pem` signs the staged model files (exactly those the model layers hold, under the same
relative paths) and ships the bundle at ``/opt/omi/model.sig`` (the model is at ``/models``),
in a layer of its own (the model layers stay a function of the files alone); `check --verify-model
PUB.pem IMAGE` copies the model and the bundle out of the image and verifies one against the
other. The library is imported only when asked for: it brings sigstore."""

from __future__ import annotations

import tempfile
from pathlib import Path

from omibuild.planning.plan import OMI
from omibuild.store.layers import MODEL_ROOT

SIGNATURE = f"{OMI}/model.sig"
MODEL_DIR = f"/{MODEL_ROOT}"
HINT = "pip install 'omibuild[signing]' (OpenSSF's model-signing)"


class ModelSigningError(Exception):
    """model-signing is missing, or refused the key or the files."""


def _library() -> tuple[object, object]:
    try:
        from model_signing import signing, verifying
    except ImportError as err:
        raise ModelSigningError(f"the model-signing package is not installed ({err})") from None
    return signing, verifying


def sign_model(key: Path, model_dir: Path) -> bytes:
    """The signature bundle of every file under ``model_dir``."""
    signing, _ = _library()
    with tempfile.TemporaryDirectory(prefix="omibuild-model-sig-") as tmp:
        bundle = Path(tmp) / "model.sig"
        try:
            config = signing.Config().use_elliptic_key_signer(private_key=key)  # type: ignore[attr-defined]
            config.sign(model_dir, bundle)
        except Exception as err:  # the library raises what its parts raise
            raise ModelSigningError(f"cannot sign {model_dir}: {err}") from None
        return bundle.read_bytes()


def verify_model(pub: Path, model_dir: Path, bundle: Path) -> str:
    """'' when the files are what the bundle signed with the key paired with ``pub``, else
    the library's reason, on one line."""
    _, verifying = _library()
    try:
        config = verifying.Config().use_elliptic_key_verifier(public_key=pub)  # type: ignore[attr-defined]
        config.verify(model_dir, bundle)
    except Exception as err:
        return " ".join(str(err).split())[:300] or type(err).__name__
    return ""
