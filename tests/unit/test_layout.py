"""The house rules the linters do not check: an import inside a function is only for a heavy
third-party module (or an omibuild module built on one), so that `omibuild --help`,
`validate` and the runtime's cold start do not pay for what they do not use."""

from __future__ import annotations

import ast

from tests.conftest import ROOT

# heavy third-party packages: each costs tens to hundreds of milliseconds to import
HEAVY = {
    "art",  # the Adversarial Robustness Toolbox (omibuild[robustness], check --robustness)
    "google",  # protobuf
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "huggingface_hub",
    "catboost",
    "joblib",
    "keras",
    "lightgbm",
    "mlflow",
    "model_signing",  # sigstore with it, and optional (omibuild[signing])
    "numpy",
    "onnxruntime",
    "pandas",
    "python_on_whales",
    "rich",
    "scipy",
    "shap",
    "skops",
    "starlette",
    "torch",
    "transformers",
    "uvicorn",
    "xgboost",
}
# runtime/slim.py runs in the image build with whichever the venv has, and is imported where
# it has neither (the final image)
HEAVY |= {"packaging", "pip"}
# omibuild modules that import one of those at their top
BUILT_ON_HEAVY = {
    "omibuild.runtime.protos": "google",
    "omibuild.runtime.adapters.grpc_v2": "grpc",
    "omibuild.runtime.grpc_methods": "grpc",
    "omibuild.runtime.http": "starlette",
}


def _top_level_imports(module: str) -> set[str]:
    path = ROOT / (module.replace(".", "/") + ".py")
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_imports_inside_functions_are_only_for_heavy_modules() -> None:
    light = []
    for path in sorted((ROOT / "omibuild").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    if name.split(".")[0] not in HEAVY and name not in BUILT_ON_HEAVY:
                        where = f"{path.relative_to(ROOT)}:{node.lineno}"
                        light.append(f"{where}: {name}")
    assert light == [], "import these at the top of their module:\n" + "\n".join(light)


def test_the_omibuild_modules_imported_late_really_are_built_on_heavy_ones() -> None:
    for module, heavy in BUILT_ON_HEAVY.items():
        assert heavy in _top_level_imports(module), module
