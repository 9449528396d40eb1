"""Generate the example models (nothing binary is committed): run before using the examples.

python examples/generate.py        # idempotent; rewrites only what is missing
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "manifests"


def iris() -> tuple[object, object]:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(x, y), x


def sklearn_model(target: Path) -> None:
    import joblib
    import sklearn

    model, _ = iris()
    target.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, target / "model.joblib")
    (target / "requirements.txt").write_text(f"scikit-learn=={sklearn.__version__}\n")


def onnx_model(target: Path) -> None:
    from skl2onnx import to_onnx

    model, x = iris()
    target.mkdir(parents=True, exist_ok=True)
    onx = to_onnx(model, x[:1].astype("float32"), options={id(model): {"zipmap": False}})
    (target / "model.onnx").write_bytes(onx.SerializeToString())


def main() -> int:
    import fcntl

    # parallel test workers (and users) may run this at once: one generates, the others wait
    lock = open(__file__, "rb")  # noqa: SIM115 - held until exit
    fcntl.flock(lock, fcntl.LOCK_EX)
    jobs = {
        HERE / "sklearn-iris" / "model": sklearn_model,
        HERE / "multi-runtime" / "model": sklearn_model,
        HERE / "custom-hooks" / "model": sklearn_model,
        HERE / "onnx-linear" / "model": onnx_model,
    }
    for target, make in jobs.items():
        if target.is_dir() and any(target.iterdir()):
            continue
        make(target)
        print(f"generated {target.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
