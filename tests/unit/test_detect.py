"""What init reads from a model without running it: a pickle's imports and recorded facts, a
training environment's distributions, the repository's own modules, and the manifest it
writes (every commented option stays valid when uncommented)."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from omibuild.cli import main
from omibuild.detect.environment import find_environment, read_environment
from omibuild.detect.needs import Needs, pickle_needs, repository_module
from omibuild.detect.pickles import PickleScanError, input_width, scan_pickle, scan_skops
from omibuild.manifest.validate import validate_file
from omibuild.runtime.faults import load_failure_line


class Ratio(BaseEstimator, TransformerMixin):  # pickled as tests.unit.test_detect.Ratio
    def fit(self, x: object, y: object = None) -> Ratio:
        return self

    def transform(self, x: object) -> object:
        return x


def _pipeline() -> Pipeline:
    x = pd.DataFrame(np.random.default_rng(0).normal(size=(40, 3)), columns=["a", "b", "c"])
    y = (x["a"] > 0).astype(int)
    return Pipeline([("scale", StandardScaler()), ("r", Ratio()), ("m", LogisticRegression())]).fit(
        x, y
    )


@pytest.mark.parametrize(
    "save",
    [
        lambda m, p: joblib.dump(m, p),
        lambda m, p: joblib.dump(m, p, compress=3),
        lambda m, p: joblib.dump(m, p, compress=("xz", 3)),
        lambda m, p: joblib.dump(m, p, compress=("gzip", 3)),
        lambda m, p: joblib.dump(m, p, compress=("bz2", 3)),
        lambda m, p: p.write_bytes(pickle.dumps(m, protocol=0)),
        lambda m, p: p.write_bytes(pickle.dumps(m, protocol=2)),
        lambda m, p: p.write_bytes(pickle.dumps(m, protocol=5)),
    ],
    ids=["joblib", "joblib-zlib", "joblib-xz", "joblib-gzip", "joblib-bz2", "p0", "p2", "p5"],
)
def test_a_pickle_s_imports_and_facts_are_read_without_running_it(
    tmp_path: Path, save: object
) -> None:
    path = tmp_path / "model.bin"
    save(_pipeline(), path)  # type: ignore[operator]
    before = set(sys.modules)
    scan = scan_pickle(path)
    assert scan.complete
    # nothing imported (protocol 0's text opcodes load a codec of the standard library)
    assert {m for m in set(sys.modules) - before if not m.startswith("encodings.")} == set()
    tops = {m.split(".")[0] for m in scan.modules}
    assert {"sklearn", "numpy", "tests"} <= tops
    import sklearn

    assert scan.sklearn_versions == {sklearn.__version__}
    assert input_width(scan.root) == (3, ["a", "b", "c"])


def test_reading_a_pickle_runs_none_of_its_code(tmp_path: Path) -> None:
    """A pickle that would run a command when loaded: the reader records the name only."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Evil()))
    scan = scan_pickle(path)
    assert not marker.exists()
    assert {str(g) for g in scan.globals} == {"posix.system"}


def test_large_arrays_are_skipped_not_held(tmp_path: Path) -> None:
    path = tmp_path / "big.joblib"
    joblib.dump({"w": np.zeros(4_000_000), "model": LogisticRegression()}, path)  # 32 MB
    import tracemalloc

    tracemalloc.start()
    scan = scan_pickle(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert scan.complete and "sklearn.linear_model._logistic" in scan.modules
    assert peak < 8 << 20, peak


def test_a_file_that_is_no_pickle_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(PickleScanError, match=r"model\.pkl: not a pickle"):
        scan_pickle(path)


def test_a_skops_file_names_its_modules_and_width(tmp_path: Path) -> None:
    import skops.io

    path = tmp_path / "m.skops"
    skops.io.dump(_pipeline(), path)
    scan = scan_skops(path)
    assert {"sklearn", "tests"} <= {m.split(".")[0] for m in scan.modules}
    assert input_width(scan.root)[0] == 3


def test_the_environment_is_read_from_its_dist_info(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    dist = site / "My_Pkg-1.2.3+cpu.dist-info"
    dist.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: My_Pkg\nVersion: 1.2.3+cpu\n")
    (dist / "RECORD").write_text("mypkg/__init__.py,,\nmy_ext.cpython-311-x86_64-linux-gnu.so,,\n")
    env = find_environment(tmp_path, env={})
    assert env.where == "the repository's .venv"
    assert env.version("my-pkg") == "1.2.3"  # the public release: a local label is a build
    assert env.provider("mypkg.sub") == "my-pkg" and env.provider("my_ext") == "my-pkg"
    active = find_environment(tmp_path, env={"VIRTUAL_ENV": sys.prefix})
    assert active.where.startswith("the active virtual environment")
    assert active.version("scikit-learn") is not None


def test_a_module_of_the_repository_ships_as_code_and_is_never_a_requirement(
    tmp_path: Path,
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "features.py").write_text("X = 1\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "features.py").write_text("")  # not the repository's code
    assert repository_module(tmp_path, "features") == ("src", "features.py")
    assert repository_module(tmp_path, "pkg") == (".", "pkg")
    assert repository_module(tmp_path, "nowhere") is None

    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(_pipeline()))
    needs = Needs()
    env = read_environment("nowhere", [], None)
    scan = scan_pickle(path)
    scan.globals |= {type(g)("features", "AddRatio") for g in list(scan.globals)[:1]}
    scan.globals |= {type(g)("mystery_lib.core", "Thing") for g in list(scan.globals)[:1]}
    pickle_needs(scan, "m.pkl", tmp_path, env, needs)
    assert needs.code_path == "src" and needs.code_include == ["features.py"]
    names = [p.requirement.split("==")[0] for p in needs.pins]
    assert "features" not in names and "mystery_lib" not in names and "tests" not in names
    assert "scikit-learn" in names  # a known import name, with the version the file records
    assert any("mystery_lib" in line for line in needs.unpinned)


@pytest.mark.parametrize("module", ["features", "my_helpers", "churn.transforms"])
def test_a_missing_module_hint_never_names_it_as_a_requirement(module: str) -> None:
    line = load_failure_line(ModuleNotFoundError(f"No module named {module!r}", name=module))
    top = module.split(".")[0]
    assert f"add {top} to image.requirements" not in line
    assert "list it under code: in omi.yaml" in line


def test_main_pickled_classes_are_named_as_the_trainer_s_mistake(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        "import pickle\nclass Model:\n    pass\n"
        f"pickle.dump(Model(), open({str(tmp_path / 'm.pkl')!r}, 'wb'))\n"
    )
    subprocess.run([sys.executable, str(script)], check=True)
    needs = Needs()
    pickle_needs(
        scan_pickle(tmp_path / "m.pkl"), "m.pkl", tmp_path, find_environment(tmp_path), needs
    )
    assert any("from __main__" in n and "Move it into a module" in n for n in needs.notes)


_OPTION = re.compile(r"^(\s*)# ([a-z_]+:.*)$")


@pytest.mark.parametrize("kind", ["sklearn", "custom", "pyfunc", "xgboost", "pytorch"])
def test_every_commented_option_in_init_s_manifest_is_valid_uncommented(
    tmp_path: Path, kind: str
) -> None:
    if kind == "sklearn":
        (tmp_path / "model").mkdir()
        joblib.dump(_pipeline(), tmp_path / "model" / "m.joblib")
    elif kind == "custom":
        (tmp_path / "weights").mkdir()
        (tmp_path / "weights" / "w.bin").write_bytes(b"x")
    elif kind == "xgboost":
        import xgboost

        (tmp_path / "model").mkdir()
        x, y = np.random.default_rng(0).normal(size=(30, 3)), np.arange(30) % 2
        xgboost.XGBClassifier(n_estimators=2).fit(x, y).save_model(tmp_path / "model" / "m.json")
    elif kind == "pytorch":
        import torch

        (tmp_path / "model").mkdir()
        with warnings.catch_warnings():  # torch 2.13 calls TorchScript deprecated; it loads
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), tmp_path / "model" / "m.pt")
    else:
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "MLmodel").write_text("flavors: {python_function: {}}\n")
        (tmp_path / "model" / "requirements.txt").write_text("mlflow\n")
    out = tmp_path / "omi.yaml"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["init", "-o", str(out)]) == 0
    finally:
        os.chdir(cwd)
    text = out.read_text()
    assert validate_file(out, env={}).ok, text
    assert f"flavor: {'sklearn' if kind == 'sklearn' else kind}" in text
    if kind == "pytorch":
        assert "# extra_index_urls: [https://download.pytorch.org/whl/cpu]" in text
    lines = text.splitlines(keepends=True)
    options = [i for i, line in enumerate(lines) if _OPTION.match(line)]
    assert len(options) >= 3, text
    for i in options:
        indent, body = _OPTION.match(lines[i]).groups()  # type: ignore[union-attr]
        out.write_text("".join([*lines[:i], f"{indent}{body}\n", *lines[i + 1 :]]))
        result = validate_file(out, env={})
        assert result.ok, (lines[i], [issue.text() for issue in result.issues])


def test_an_xgboost_estimator_pickled_with_joblib_shows_its_width(tmp_path: Path) -> None:
    import xgboost

    x, y = np.random.default_rng(0).normal(size=(40, 6)), np.arange(40) % 2
    joblib.dump(xgboost.XGBClassifier(n_estimators=2).fit(x, y), tmp_path / "m.joblib")
    scan = scan_pickle(tmp_path / "m.joblib")
    assert input_width(scan.root) == (6, None)  # read from the booster's raw model
    needs = Needs()
    pickle_needs(
        scan, "m.joblib", tmp_path, find_environment(tmp_path, {"VIRTUAL_ENV": sys.prefix}), needs
    )
    assert any(p.requirement.startswith("xgboost-cpu==") for p in needs.pins), needs.pins
