"""Runtime pieces in-process: flavors, hooks, the codec, config and batching."""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omibuild.runtime.codec import decode_input, encode_output, split_request
from omibuild.runtime.config import ConfigError, load_config
from omibuild.runtime.faults import InputError
from omibuild.runtime.flavors import FLAVORS, CustomFlavor
from omibuild.runtime.lane import PredictLane
from tests.conftest import EXAMPLES, ROOT
from tests.unit.runtime_config import omi_json as _omi_json

pytestmark = pytest.mark.usefixtures("example_models")  # reads examples/

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def test_sklearn_and_onnx_flavors_agree() -> None:
    sk = FLAVORS["sklearn"]()
    sk.load(EXAMPLES / "sklearn-iris" / "model", {})
    onnx = FLAVORS["onnx"]()
    onnx.load(EXAMPLES / "onnx-linear" / "model", {})
    expected = sk.predict(np.array(ROWS)).tolist()
    out = onnx.predict(ROWS)
    labels = out[next(k for k in out if "label" in k)] if isinstance(out, dict) else out
    assert expected == [0, 2] and list(labels) == expected


def test_pyfunc_flavor_serves_an_mlflow_model(tmp_path: Path) -> None:
    import joblib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.sklearn
        import sklearn

        mlflow.sklearn.save_model(
            joblib.load(EXAMPLES / "sklearn-iris/model/model.joblib"),
            str(tmp_path / "m"),
            # stated, not inferred: inference loads the model in a subprocess (seconds)
            pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
        )
        flavor = FLAVORS["pyfunc"]()
        flavor.load(tmp_path / "m", {})
        assert list(flavor.predict(np.array(ROWS))) == [0, 2]


def test_custom_flavor_loads_the_users_class() -> None:
    flavor = CustomFlavor(EXAMPLES / "custom-hooks" / "src")
    flavor.load(EXAMPLES / "custom-hooks" / "model", {"predictor": "predictor:IrisPredictor"})
    assert np.asarray(flavor.predict(ROWS)).shape == (2, 3)


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("FP32", [1.5, 2.5]),
        ("INT64", [1, 2]),
        ("BOOL", [True, False]),
        ("UINT8", [1, 255]),
        ("FP16", [0.5, 1.0]),
        ("BYTES", ["a", "b"]),
        ("INT8", [-1, 1]),
        ("FP64", [1e300, -1.0]),
    ],
)
def test_codec_round_trips_every_datatype(datatype: str, data: list[object]) -> None:
    for binary in (False, True):
        array = decode_input({"name": "x", "datatype": datatype, "shape": [2], "data": data})
        spec, blob = encode_output("y", array, binary)
        assert spec["datatype"] == datatype and spec["shape"] == [2]
        back = (
            decode_input({**spec, "name": "y"}, blob)
            if binary
            else decode_input({**spec, "name": "y"})
        )
        assert back.tolist() == array.tolist()


def test_codec_rejects_bad_shapes_and_types() -> None:
    with pytest.raises(InputError, match="do not fit shape"):
        decode_input({"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]})
    with pytest.raises(InputError, match="datatype must be one of"):
        decode_input({"name": "x", "datatype": "FLOAT", "shape": [1], "data": [1]})
    with pytest.raises(InputError, match="expected"):
        decode_input({"name": "x", "datatype": "FP32", "shape": [2]}, b"\x00" * 3)
    with pytest.raises(InputError, match="outside the body"):
        split_request(b'{"inputs": []}', "999")


def test_config_port_precedence(tmp_path: Path) -> None:
    interfaces = {
        "kfserving": {"protocols": ["v1", "v2"], "port": 8080, "grpc_port": 8081},
        "modzy": {"protocols": ["v2"], "port": 45000},
        "vertex": {"protocols": ["v1"], "port": 8080},
    }
    path = _omi_json(tmp_path, interfaces)
    base = {"OMI_CONFIG": str(path), "HTTP_PORT": "8080", "PROTOCOL": "v2"}
    assert load_config(base).port == 8080
    assert load_config({**base, "HTTP_PORT": "9000"}).port == 9000
    assert load_config({**base, "INTERFACE": "modzy"}).port == 45000  # baked HTTP_PORT ignored
    assert load_config({**base, "INTERFACE": "modzy", "PSC_MODEL_PORT": "50051"}).port == 50051
    assert load_config({**base, "INTERFACE": "vertex", "AIP_HTTP_PORT": "7000"}).port == 7000
    with pytest.raises(ConfigError, match="it has: kfserving, modzy, vertex"):
        load_config({**base, "INTERFACE": "sagemaker"})
    with pytest.raises(ConfigError, match="not a port"):
        load_config({**base, "HTTP_PORT": "eighty"})
    assert load_config({**base, "OMI_PREDICT_THREADS": "4"}).predict_threads == 4
    assert load_config({**base, "OMI_COALESCE_ROWS": "0"}).coalesce_rows == 0
    with pytest.raises(ConfigError, match="OMI_PREDICT_THREADS='0' must be a whole number"):
        load_config({**base, "OMI_PREDICT_THREADS": "0"})
    for name, bad in [
        ("OMI_WORKERS", "two"),
        ("OMI_MAX_BODY_BYTES", "64M"),
        ("OMI_MAX_BATCH_SIZE", "-1"),
        ("OMI_MAX_LATENCY_MS", "nan"),
        ("OMI_MAX_LATENCY_MS", "5ms"),
    ]:
        with pytest.raises(ConfigError, match=f"{name}={bad!r} must be"):
            load_config({**base, name: bad})
    tuned = load_config({**base, "OMI_MAX_BATCH_SIZE": "32", "OMI_MAX_LATENCY_MS": "2.5"})
    assert (tuned.max_batch_size, tuned.max_latency_ms) == (32, 2.5)


def test_a_loaded_model_is_frozen_out_of_the_cyclic_gc(tmp_path: Path) -> None:
    """After load, a full collection no longer re-scans the libraries and the model."""
    import gc

    from omibuild.runtime.model import ModelService

    interfaces = {"kfserving": {"protocols": ["v2"], "port": 8080}}
    path = _omi_json(tmp_path, interfaces, model_file="model.joblib")
    (tmp_path / "model").symlink_to(EXAMPLES / "sklearn-iris" / "model")
    env = {"OMI_CONFIG": str(path), "OMI_VERIFY_MODEL": "0"}
    service = ModelService(load_config(env))
    try:
        service.load()
        model = service.flavor.model
        assert gc.is_tracked(model) and gc.get_freeze_count() > 10_000
        assert not any(o is model for o in gc.get_objects())  # not in any collected generation
        assert service.stats["gc_frozen_objects"] > 10_000
        assert service.predict(np.array(ROWS)).tolist() == [0, 2]
    finally:
        gc.unfreeze()


def _row_sums(calls: list[int]) -> Callable[[object], object]:
    def predict(x: object) -> object:
        array = np.asarray(x, dtype=float)
        calls.append(len(array))
        if (array < 0).any():
            raise ValueError("negative input")
        return array.sum(axis=1)

    return predict


def test_adaptive_batching_waits_for_requests_that_arrive_within_the_latency() -> None:
    calls: list[int] = []
    lane = PredictLane(_row_sums(calls), threads=1, coalesce_rows=64, max_wait_ms=300)

    async def main() -> list[object]:
        first = lane.submit(np.array([[0.0, 1.0]]))
        await asyncio.sleep(0.03)  # the lane's thread holds the first request, waiting for more
        rest = [lane.submit(np.array([[float(i), 1.0]])) for i in range(1, 10)]
        return list(await asyncio.gather(first, *rest))

    results = asyncio.run(main())
    assert [np.asarray(r).tolist() for r in results] == [[i + 1.0] for i in range(10)]
    assert calls == [10] and lane.coalesced == 1  # one predict call for ten requests


def test_adaptive_batching_from_grpc_threads_keeps_errors_per_request() -> None:
    from concurrent.futures import ThreadPoolExecutor

    calls: list[int] = []
    lane = PredictLane(_row_sums(calls), threads=1, coalesce_rows=64, max_wait_ms=300)
    inputs = [np.array([[float(i), 1.0]]) for i in range(7)] + [np.array([[-1.0, 0.0]])]
    with ThreadPoolExecutor(len(inputs)) as pool:
        futures = [pool.submit(lane.call, x) for x in inputs]
        outcomes = [f.exception() or f.result().tolist() for f in futures]
    assert outcomes[:7] == [[i + 1.0] for i in range(7)]
    assert isinstance(outcomes[7], ValueError)  # only the request that caused it fails
    assert calls[0] > 1  # the first call was merged (then each request reran on its own)


class GatedModel:
    """A row-wise model whose first call waits for the test, so later requests queue up."""

    def __init__(self, result: str = "rows") -> None:
        import threading

        self.gate = threading.Event()
        self.calls: list[int] = []
        self.result = result

    def predict(self, x: object) -> object:
        import numpy as np

        if not self.calls:
            self.gate.wait(10)
        array = np.asarray(x, dtype=float)
        self.calls.append(len(array))
        if (array < 0).any():
            raise ValueError("negative input")
        return array.sum(axis=1) if self.result == "rows" else float(array.sum())


async def _submit_all(lane: PredictLane, model: GatedModel, inputs: list[object]) -> list[object]:
    first = lane.submit(inputs[0])
    await asyncio.sleep(0.05)  # the lane's thread is now inside the first (gated) predict
    rest = [lane.submit(x) for x in inputs[1:]]
    model.gate.set()
    return list(await asyncio.gather(first, *rest, return_exceptions=True))


def test_predict_lane_coalesces_waiting_requests_and_returns_each_its_rows() -> None:
    import numpy as np

    model = GatedModel()
    lane = PredictLane(model.predict, threads=1, coalesce_rows=256)
    inputs = [np.full((i % 3 + 1, 4), float(i)) for i in range(8)]
    results = asyncio.run(_submit_all(lane, model, inputs))
    for x, got in zip(inputs, results, strict=True):
        assert np.array_equal(got, x.sum(axis=1))  # type: ignore[arg-type]
    assert model.calls == [1, sum(len(x) for x in inputs[1:])]  # the 7 waiting ran as one
    assert lane.coalesced == 1


def test_predict_lane_keeps_errors_with_the_request_that_caused_them() -> None:
    import numpy as np

    model = GatedModel()
    lane = PredictLane(model.predict, threads=1, coalesce_rows=256)
    inputs = [np.ones((1, 4)), np.ones((2, 4)), -np.ones((1, 4)), np.ones((1, 4))]
    results = asyncio.run(_submit_all(lane, model, inputs))
    assert isinstance(results[2], ValueError)
    assert [list(r) for i, r in enumerate(results) if i != 2] == [[4.0], [4.0, 4.0], [4.0]]  # type: ignore[call-overload]
    assert lane.coalesced == 0  # the merged call failed: each ran alone


def test_predict_lane_does_not_merge_what_does_not_fit() -> None:
    import numpy as np

    model = GatedModel()
    lane = PredictLane(model.predict, threads=1, coalesce_rows=256)
    inputs = [np.ones((1, 4)), np.ones((1, 3)), np.ones((1, 4)).astype(np.float32)]
    asyncio.run(_submit_all(lane, model, inputs))
    assert model.calls == [1, 1, 1] and lane.coalesced == 0
    scalar = GatedModel(result="scalar")  # not one result per row: each request alone
    lane = PredictLane(scalar.predict, threads=1, coalesce_rows=256)
    results = asyncio.run(_submit_all(lane, scalar, [np.ones((1, 4))] * 3))
    assert results == [4.0, 4.0, 4.0] and lane.coalesced == 0
    off = GatedModel()  # coalescing off
    lane = PredictLane(off.predict, threads=1, coalesce_rows=0)
    asyncio.run(_submit_all(lane, off, [np.ones((1, 4))] * 3))
    assert off.calls == [1, 1, 1]


def test_transformers_flavor_runs_a_pipeline_built_here(tmp_path: Path) -> None:
    """A tiny BERT classifier made locally (the Hub is unreachable), served as a pipeline."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "build", "failed"]
        (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
        BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "m")
        config = BertConfig(
            vocab_size=len(words),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            id2label={0: "NEGATIVE", 1: "POSITIVE"},
            label2id={"NEGATIVE": 0, "POSITIVE": 1},
        )
        BertForSequenceClassification(config).save_pretrained(tmp_path / "m")
        flavor = FLAVORS["transformers"]()
        flavor.load(tmp_path / "m", {"task": "text-classification"})
        out = flavor.predict(np.array(["good build", "build failed"], dtype=object))
    assert [sorted(o) for o in out] == [["label", "score"], ["label", "score"]]
    assert {o["label"] for o in out} <= {"NEGATIVE", "POSITIVE"}


def _runs_on(path: Path, script: str) -> None:
    """``script`` runs in a fresh interpreter that imports from ``path`` first."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": str(path)},
        capture_output=True,
        text=True,
        cwd=path,
    )
    assert proc.returncode == 0, proc.stderr


def test_slim_strips_debug_sections_and_the_extension_still_loads(tmp_path: Path) -> None:
    """uvloop's wheel ships its extension with debug sections (13.6 MB); stripped, it is a
    fraction of that and still runs a loop. A second pass finds nothing left to strip."""
    import shutil

    import httptools
    import uvloop

    from omibuild.runtime.slim import strip_tree, strip_unneeded

    for package in (uvloop, httptools):
        shutil.copytree(Path(str(package.__file__)).parent, tmp_path / package.__name__)
    loop_so = next((tmp_path / "uvloop").glob("loop.*.so"))
    before = loop_so.stat().st_size
    assert list((tmp_path / "uvloop").glob("*.pyx"))  # uvloop ships its Cython sources
    (tmp_path / "notes.so.txt").write_text("not an ELF file")
    files, saved = strip_tree(tmp_path)
    assert files >= 2 and saved >= before - loop_so.stat().st_size
    assert loop_so.stat().st_size < before / 4
    assert strip_unneeded(loop_so) == 0  # nothing left to strip
    assert (tmp_path / "notes.so.txt").read_text() == "not an ELF file"
    assert not list(tmp_path.rglob("*.pyx")) and not list(tmp_path.rglob("*.pxd"))
    script = (
        "import asyncio, uvloop, httptools\n"
        f"assert uvloop.__file__.startswith({str(tmp_path)!r})\n"
        "async def main():\n    await asyncio.sleep(0.01)\n    return 42\n"
        "assert uvloop.run(main()) == 42\n"
        "class P:\n    url = None\n    def on_url(self, url):\n        P.url = url\n"
        "httptools.HttpRequestParser(P()).feed_data(b'GET /x HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n')\n"
        "assert P.url == b'/x'\n"
    )
    _runs_on(tmp_path, script)


def _section_names(path: Path) -> set[str]:
    """The section names of a 64-bit little-endian ELF file, read here (no binutils)."""
    import struct

    data = path.read_bytes()
    shoff, shentsize, shnum, shstrndx = (
        struct.unpack_from("<Q", data, 0x28)[0],
        *struct.unpack_from("<HHH", data, 0x3A),
    )
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = headers[shstrndx][4]
    return {data[names + h[0] : data.index(b"\0", names + h[0])].decode() for h in headers}


def test_slim_strips_symbol_tables_of_patchelf_repaired_libraries_and_numpy_still_works(
    tmp_path: Path,
) -> None:
    """numpy's wheel is repaired by auditwheel, whose patchelf appends loaded segments after
    the symbol table: stripping must move those back (page-aligned), not give up or cut them.
    The stripped numpy still imports, multiplies through its OpenBLAS and inverts a matrix."""
    import shutil

    import numpy

    from omibuild.runtime.slim import strip_tree, strip_unneeded

    site = Path(str(numpy.__file__)).parent.parent
    shutil.copytree(site / "numpy", tmp_path / "numpy")
    shutil.copytree(site / "numpy.libs", tmp_path / "numpy.libs")
    core = next((tmp_path / "numpy" / "_core").glob("_multiarray_umath.*.so"))
    assert ".symtab" in _section_names(core)
    before = core.stat().st_size
    strip_tree(tmp_path)
    objects = [p for p in tmp_path.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    assert objects and not [p.name for p in objects if ".symtab" in _section_names(p)]
    assert {".dynsym", ".dynstr", ".text"} <= _section_names(core)
    assert core.stat().st_size < before
    assert [strip_unneeded(p) for p in objects] == [0] * len(objects)  # nothing left
    script = (
        "import numpy as np\n"
        f"assert np.__file__.startswith({str(tmp_path)!r})\n"
        "a = np.arange(1, 10.0).reshape(3, 3) + np.eye(3)\n"
        "assert np.allclose(a @ np.linalg.inv(a), np.eye(3))\n"
        "assert float(np.fft.fft(np.ones(4))[0].real) == 4.0\n"
    )
    _runs_on(tmp_path, script)


def test_slim_links_identical_files_where_their_permissions_agree(tmp_path: Path) -> None:
    import os

    from omibuild.runtime.slim import link_duplicates

    body = os.urandom(100_000)
    for rel, data, mode in (
        ("numpy.libs/libg.so", body, 0o755),
        ("scipy.libs/libg.so", body, 0o755),
        ("other.libs/libg.so", body, 0o644),  # same bytes, other permissions: left alone
        ("x.libs/libh.so", body[:-1] + b"!", 0o755),  # same size, other bytes
        ("small/a", b"tiny", 0o755),
        ("small/b", b"tiny", 0o755),  # under the size worth linking
    ):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(data)
        (tmp_path / rel).chmod(mode)
    assert link_duplicates(tmp_path) == (1, 100_000)
    assert (tmp_path / "numpy.libs/libg.so").samefile(tmp_path / "scipy.libs/libg.so")
    assert (tmp_path / "scipy.libs/libg.so").read_bytes() == body
    assert (tmp_path / "other.libs/libg.so").stat().st_nlink == 1
    assert (tmp_path / "x.libs/libh.so").stat().st_nlink == 1
    assert (tmp_path / "small/b").stat().st_nlink == 1
    assert link_duplicates(tmp_path) == (0, 0)
    assert not [p for p in tmp_path.rglob(".*omi-link")]


def test_slim_removes_the_test_suites_packages_ship_inside_themselves(tmp_path: Path) -> None:
    from omibuild.runtime.slim import strip_tree

    site = tmp_path / "lib" / "python3.11" / "site-packages"
    for rel in ("pkg/tests/test_a.py", "pkg/sub/tests/data.bin", "tests/test_top.py", "pkg/x.pyx"):
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(b"x" * 1000)
    (site / "jinja" / "tests.py").parent.mkdir()
    (site / "jinja" / "tests.py").write_text("TESTS = {}\n")  # a module, not a test suite
    (tmp_path / "share" / "tests").mkdir(parents=True)  # outside site-packages
    changed, saved = strip_tree(tmp_path)
    assert (changed, saved) == (3, 3000)
    assert not (site / "pkg" / "tests").exists() and not (site / "pkg" / "sub" / "tests").exists()
    assert (site / "tests" / "test_top.py").exists() and (site / "jinja" / "tests.py").exists()
    assert (tmp_path / "share" / "tests").is_dir() and not (site / "pkg" / "x.pyx").exists()


def test_slim_keeps_setuptools_and_wheel_when_something_needs_them(tmp_path: Path) -> None:
    """In an interpreter that sees only a fabricated site-packages holding pip, as the image's
    venv is when slim runs: no packaging of its own, so it reads with pip's vendored copy."""
    import shutil
    import subprocess
    import sys

    import pip

    site = tmp_path / "site"
    shutil.copytree(Path(str(pip.__file__)).parent, site / "pip")
    dists = {
        "pip": [],
        "setuptools": [],
        "wheel": [],
        "foo": ["setuptools; extra == 'build'"],
        "bar": ["wheel>=0.40"],
    }
    for name, requires in dists.items():
        info = site / f"{name}-1.0.dist-info"
        info.mkdir(parents=True)
        lines = [f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"]
        lines += [f"Requires-Dist: {r}\n" for r in requires]
        (info / "METADATA").write_text("".join(lines))

    def removable(requirements: str) -> list[str]:
        reqs = tmp_path / "model.txt"
        reqs.write_text(requirements)
        script = (
            f"import sys; sys.path[:0] = [{str(site)!r}, {str(ROOT)!r}]\n"
            "from pathlib import Path\n"
            "from omibuild.runtime.slim import removable_tools\n"
            f"print(','.join(removable_tools([Path({str(reqs)!r})])))\n"
            "assert 'packaging' not in sys.modules and 'pip._vendor.packaging' in sys.modules\n"
        )
        out = subprocess.run(
            [sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, check=True
        )
        return out.stdout.strip().split(",")

    assert removable("foo\nbar\n") == ["setuptools", "pip"]  # bar needs wheel; foo's extra unused
    assert removable("foo[build]\nbar\n") == ["pip"]  # the extra was asked for
    assert removable("pip==24.0\n") == ["setuptools"]  # the model asked for pip itself


@pytest.mark.parametrize("threads", [1, 2])
def test_predict_concurrency_is_capped_for_every_caller(tmp_path: Path, threads: int) -> None:
    """OMI_PREDICT_THREADS bounds concurrent predict calls from the lane (HTTP) and from gRPC's
    worker threads together, so a model that is not thread-safe can rely on the default 1."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from omibuild.runtime.model import ModelService

    path = _omi_json(tmp_path, {"kfserving": {"protocols": ["v2"], "port": 8080}})
    env = {"OMI_CONFIG": str(path), "OMI_PREDICT_THREADS": str(threads)}
    service = ModelService(load_config(env))
    running, peak, lock = [0], [0], threading.Lock()

    class Counting:
        vectorised = False

        def predict(self, x: object) -> object:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.02)
            with lock:
                running[0] -= 1
            return x

    service.flavor = Counting()

    async def from_http() -> list[object]:
        return list(await asyncio.gather(*(service.apredict([i]) for i in range(6))))

    with ThreadPoolExecutor(6) as pool:
        grpc_calls = [pool.submit(service.predict_blocking, [i]) for i in range(6)]
        http_results = asyncio.run(from_http())
        assert [c.result() for c in grpc_calls] == [[i] for i in range(6)]
    assert http_results == [[i] for i in range(6)]
    assert peak[0] == threads


@pytest.mark.parametrize(
    ("interface", "protocol", "workers"),
    [("kfserving", "v2", "1"), ("modzy", "v2", "1"), ("kfserving", "v1", "2")],
)
def test_a_model_that_cannot_load_stops_the_server_with_one_line(
    tmp_path: Path, interface: str, protocol: str, workers: str
) -> None:
    """A pod whose model cannot load crashes (exit 1, one line with a hint), not sits unready."""
    import subprocess
    import sys
    import time

    from omibuild.conformance.images import free_port

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "predictor.py").write_text(
        "import sklearn_is_not_here.tree\n\nclass Model:\n    pass\n"
    )
    interfaces = {
        "kfserving": {"protocols": ["v1", "v2"], "port": 8080, "grpc_port": 8081},
        "modzy": {"protocols": ["v2"], "port": 45000},
    }
    path = _omi_json(tmp_path, interfaces, flavor="custom", predictor="predictor:Model")
    port = free_port()
    env = {
        **os.environ,
        "OMI_CONFIG": str(path),
        "OMI_CODE_DIR": str(tmp_path / "code"),
        "OMI_VERIFY_MODEL": "0",
        "INTERFACE": interface,
        "PROTOCOL": protocol,
        "HTTP_PORT": str(port),
        "PSC_MODEL_PORT": str(port),
        "GRPC_PORT": str(free_port()),
        "OMI_WORKERS": workers,
    }
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "omibuild.runtime"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert time.monotonic() - start < 15
    plain = [ln for ln in proc.stderr.splitlines() if ln.startswith("omibuild runtime: ")]
    assert plain[-1] == (
        "omibuild runtime: model failed to load: No module named 'sklearn_is_not_here' "
        "(hint: if sklearn_is_not_here is your repository's own code, list it under code: in "
        "omi.yaml (omibuild init does); else add the distribution that provides it to "
        "image.requirements)"
    )


def test_the_load_failure_hint_names_the_distribution_to_install() -> None:
    from omibuild.runtime.faults import load_failure_line

    err = ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
    assert load_failure_line(err) == (
        "model failed to load: No module named 'sklearn' "
        "(hint: add scikit-learn to image.requirements in omi.yaml and apply again)"
    )
    assert load_failure_line(FileNotFoundError("no .onnx file in /opt/omi/model")) == (
        "model failed to load: no .onnx file in /opt/omi/model"
    )


@pytest.mark.parametrize("via", ["lane", "grpc-thread"])
def test_a_rejected_request_keeps_nothing_of_its_data(tmp_path: Path, via: str) -> None:
    """A model that rejects the input must not pin it: no traceback, chained error or job
    may reach it once the request is answered. The cyclic GC is off, as good as it is after
    gc.freeze(), so only reference counting can free it."""
    import gc
    import weakref

    from omibuild.runtime.http import error_status
    from omibuild.runtime.model import ModelService

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "picky.py").write_text(
        "import numpy as np\n\n"
        "class Model:\n"
        "    def load(self, model_dir):\n        pass\n"
        "    def predict(self, x):\n"
        "        copy = np.asarray(x, dtype=float) * 2\n"
        "        raise ValueError(f'{copy.shape[1]} features, expected 4: ' + 'x' * 10_000)\n"
    )
    interfaces = {"kfserving": {"protocols": ["v2"], "port": 8080}}
    path = _omi_json(tmp_path, interfaces, flavor="custom", predictor="picky:Model")
    env = {"OMI_CONFIG": str(path), "OMI_VERIFY_MODEL": "0", "OMI_CODE_DIR": str(tmp_path / "code")}
    service = ModelService(load_config(env))
    service.load()

    async def request() -> tuple[Any, str]:  # as an HTTP handler: await, map the error
        data = np.ones((1000, 3))
        alive = weakref.ref(data)
        answer = (0, "")
        try:
            await service.apredict(data)
        except InputError as exc:
            answer = error_status(exc) or answer
        return alive, answer[1]

    def grpc_request() -> tuple[Any, str]:  # as a gRPC worker thread calls it
        data = np.ones((1000, 3))
        alive = weakref.ref(data)
        answer = (0, "")
        try:
            service.predict_blocking(data)
        except InputError as exc:
            answer = error_status(exc) or answer
        return alive, answer[1]

    gc.disable()
    try:
        for _ in range(3):
            alive, message = asyncio.run(request()) if via == "lane" else grpc_request()
            assert message.startswith("the model rejected the input: ValueError: 3 features")
            assert len(message) < 300  # the library's message is bounded, not echoed whole
            assert alive() is None
    finally:
        gc.enable()
        gc.unfreeze()


def test_metrics_are_valid_prometheus_text_whatever_the_labels_hold() -> None:
    from types import SimpleNamespace

    from prometheus_client.parser import text_string_to_metric_families

    from omibuild.runtime.http import Metrics

    metrics = Metrics()
    odd = 'v2"infer\\\n} evil 1'
    metrics.observe(odd, 200, 0.004)
    metrics.observe("v1_predict", 400, 0.2)
    service = SimpleNamespace(
        name='m"odel', ready=True, lane=SimpleNamespace(coalesced=3), drift=None, defense=None
    )
    families = {f.name: f for f in text_string_to_metric_families(metrics.render(service))}  # type: ignore[arg-type]
    routes = {s.labels["route"] for s in families["omi_requests"].samples}
    assert routes == {odd, "v1_predict"}  # read back exactly, nothing injected
    [ready] = families["omi_model_ready"].samples
    assert ready.labels == {"model": 'm"odel'} and ready.value == 1
    counts = [
        s for s in families["omi_request_duration_seconds"].samples if s.name.endswith("_count")
    ]
    assert sorted(s.value for s in counts) == [1, 1]
