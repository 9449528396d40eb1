"""The framework flavors in process: each framework's own model file, as its users save it,
recognised by init's readers (detect/formats.py), loaded, predicted, and its bad-input errors
turned into the runtime's InputError (a 400 on every interface)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_iris

from omibuild.detect.formats import recognise
from omibuild.runtime.faults import InputError
from omibuild.runtime.flavors import FLAVORS
from omibuild.runtime.model import ModelService

X, Y = load_iris(return_X_y=True)


def _xgboost_classifier(d: Path) -> Path:
    import xgboost

    xgboost.XGBClassifier(n_estimators=5).fit(X, Y).save_model(d / "model.json")
    return d / "model.json"


def _xgboost_booster_ubj(d: Path) -> Path:
    import xgboost

    booster = xgboost.train({"objective": "reg:squarederror"}, xgboost.DMatrix(X, label=Y), 3)
    booster.save_model(d / "model.ubj")
    return d / "model.ubj"


def _lightgbm(d: Path) -> Path:
    import lightgbm

    model = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(X, Y)
    model.booster_.save_model(d / "model.txt")
    return d / "model.txt"


def _catboost(d: Path) -> Path:
    import catboost

    model = catboost.CatBoostClassifier(iterations=5, verbose=0, train_dir=str(d / "info"))
    model.fit(X, Y).save_model(str(d / "model.cbm"))
    return d / "model.cbm"


def _torch_module() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1)).eval()


def _torchscript(d: Path) -> Path:
    import torch

    torch.jit.save(torch.jit.trace(_torch_module(), torch.zeros(1, 4)), d / "model.pt")
    return d / "model.pt"


def _exported(d: Path) -> Path:
    import torch

    batch = torch.export.Dim("batch")
    program = torch.export.export(
        _torch_module(), (torch.zeros(2, 4),), dynamic_shapes={"input": {0: batch}}
    )
    torch.export.save(program, d / "model.pt2")
    return d / "model.pt2"


def _keras(d: Path) -> Path:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.save(d / "model.keras")
    return d / "model.keras"


CASES: list[tuple[str, Callable[[Path], Path], str, Any]] = [
    ("xgboost-json", _xgboost_classifier, "xgboost", "labels"),
    ("xgboost-ubj", _xgboost_booster_ubj, "xgboost", "values"),
    ("lightgbm", _lightgbm, "lightgbm", "labels"),
    ("catboost", _catboost, "catboost", "labels"),
    ("torchscript", _torchscript, "pytorch", (2, 3)),
    ("torch-export", _exported, "pytorch", (2, 3)),
    ("keras", _keras, "keras", (2, 3)),
]


@pytest.mark.parametrize(
    ("save", "flavor", "answer"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_framework_s_own_file_is_recognised_served_and_its_bad_input_is_a_400(
    tmp_path: Path, save: Callable[[Path], Path], flavor: str, answer: Any
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the frameworks' own notes while training
        path = save(tmp_path)
    found = recognise(path)
    assert found is not None and found.flavor == flavor
    assert (
        found.width == 4 or found.shape == [-1, 4] or (flavor == "pytorch" and path.suffix == ".pt")
    )

    service = ModelService.__new__(ModelService)
    service.flavor = FLAVORS[flavor]()
    service.preprocess = service.postprocess = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        service.flavor.load(tmp_path, {})
        out = np.asarray(service.predict(np.asarray(X[[0, 100]])))
    if answer == "labels":
        assert out.tolist() == [0, 2]
    elif answer == "values":
        assert out.shape == (2,) and abs(out[0]) < abs(out[1])
    else:
        assert out.shape == answer and np.allclose(out.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(InputError):  # two features where the model takes four
        service.predict(np.asarray([[1.0, 2.0]]))


def test_named_columns_reach_a_booster_in_its_own_order(tmp_path: Path) -> None:
    import pandas as pd
    import xgboost

    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    xgboost.XGBClassifier(n_estimators=5).fit(frame, Y).save_model(tmp_path / "m.json")
    found = recognise(tmp_path / "m.json")
    assert found is not None and found.names == ["a", "b", "c", "d"]
    flavor = FLAVORS["xgboost"]()
    flavor.load(tmp_path, {})
    rows = [dict(zip("dcba", r[::-1], strict=True)) for r in X[[0, 100]].tolist()]
    assert np.asarray(flavor.predict(rows)).tolist() == [0, 2]
