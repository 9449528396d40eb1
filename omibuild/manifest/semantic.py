"""Checks JSON Schema cannot express: paths stay inside the repository, hook modules exist,
the default runtime is declared, image references are valid. Defensive: runs even when the
schema found problems, skipping whatever is not well-typed."""

from __future__ import annotations

import ast
import difflib
import re
import urllib.parse
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from omibuild.manifest.issues import Issue, json_path
from omibuild.manifest.load import PathKey, RawManifest
from omibuild.manifest.model import INTERFACE_DEFAULTS, requirements_of
from omibuild.manifest.requirements import read_requirements
from omibuild.manifest.sections import check_defense
from omibuild.manifest.tables import TableError, read_table

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?/)"
REPOSITORY = re.compile(rf"^{_DOMAIN}?{_COMPONENT}(?:/{_COMPONENT})*$")
REFERENCE = re.compile(
    rf"^{_DOMAIN}?{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?$"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# The PyPI distribution each flavor loads models with, and the module a missing one names.
# The distribution each flavor loads its model with (its module, when spelled otherwise); a
# CPU build of the same module (xgboost-cpu) also counts.
FLAVOR_DISTRIBUTION = {
    "sklearn": "scikit-learn",
    "transformers": "transformers",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "catboost": "catboost",
    "pytorch": "torch",
    "keras": "keras",
}
FLAVOR_MODULE = {"sklearn": "sklearn", "pytorch": "torch"}
CPU_BUILDS = {"xgboost": "xgboost-cpu"}
MAX_SOURCE_BYTES = 2 * 1024 * 1024


def top_level_names(file: Path) -> set[str] | None:
    """Names a module binds at top level, from its source; None when that cannot be known
    (unreadable, not Python, a star import or a module ``__getattr__``)."""
    try:
        with open(file, "rb") as fh:
            source = fh.read(MAX_SOURCE_BYTES + 1)
        if len(source) > MAX_SOURCE_BYTES:
            return None
        tree = ast.parse(source, filename=str(file))
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    names: set[str] = set()
    for node in _top_level(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return None if "__getattr__" in names else names


def _top_level(tree: ast.Module) -> list[ast.stmt]:
    """Top-level statements, looking inside if/try blocks (conditional imports and defs)."""
    out: list[ast.stmt] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop(0)
        out.append(node)
        if isinstance(node, ast.If):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody
            for handler in node.handlers:
                todo += handler.body
    return out


class Checker:
    def __init__(self, raw: RawManifest) -> None:
        self.raw = raw
        self.root = raw.path.parent.resolve()
        self.issues: list[Issue] = []

    def add(
        self, parts: PathKey, message: str, hint: str | None = None, severity: str = "error"
    ) -> None:
        line, col = self.raw.position(parts)
        self.issues.append(
            Issue(self.raw.file, line, col, json_path(parts), message, hint, severity)
        )

    def inside(self, parts: PathKey, value: Any, *, must_exist: bool = True) -> Path | None:
        """Resolve a repo-relative path; report escapes and missing files."""
        if not isinstance(value, str) or not value:
            return None
        pure = PurePosixPath(value)
        if pure.is_absolute() or ".." in pure.parts:
            self.add(
                parts,
                f"`{value}` leaves the model repository",
                "use a path relative to the directory holding omi.yaml, without ..",
            )
            return None
        target = self.root / pure
        try:
            resolved = target.resolve()
        except (RuntimeError, OSError):  # a symlink loop
            self.add(parts, f"`{value}` is a symlink loop", "remove the link")
            return None
        if not resolved.is_relative_to(self.root):
            self.add(
                parts,
                f"`{value}` is a symlink that points outside the model repository (to {resolved})",
                "copy the files into the repository instead",
            )
            return None
        if must_exist and not target.exists():
            self.add(parts, f"`{value}` does not exist in {self.root}", "check the path")
            return None
        return target

    def module(self, parts: PathKey, ref: Any, code_dir: Path | None) -> None:
        if not isinstance(ref, str) or ":" not in ref or code_dir is None:
            return
        what = (
            "a predictor is module:Class, with the module inside code.path (omibuild init "
            "writes a predictor.py to start from)"
            if parts == ("model", "predictor")
            else "hooks are module:function, with the module inside code.path"
        )
        module, attr = ref.split(":", 1)
        base = code_dir.joinpath(*module.split("."))
        candidates = [base.with_suffix(".py"), base / "__init__.py"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            rel = base.relative_to(self.root) if base.is_relative_to(self.root) else base
            self.add(
                parts,
                f"module `{module}` not found: expected {rel}.py or {rel}/__init__.py",
                what,
            )
        elif not found.resolve().is_relative_to(self.root):
            self.add(parts, f"module `{module}` is a symlink out of the model repository")
        else:
            self.defines(parts, found, module, attr)

    def defines(self, parts: PathKey, file: Path, module: str, attr: str) -> None:
        """The module's source names ``attr`` at top level: read, never imported (importing
        runs the user's code and needs the model's libraries, which the build host may lack)."""
        names = top_level_names(file)
        if names is None or attr in names:
            return  # unreadable, or it builds names at run time: the container will tell
        public = sorted(n for n in names if not n.startswith("_"))
        close = difflib.get_close_matches(attr, public, n=1)
        hint = (
            f"did you mean `{module}:{close[0]}`?"
            if close
            else (f"it defines: {', '.join(public[:8])}" if public else "define it in the module")
        )
        rel = file.relative_to(self.root) if file.is_relative_to(self.root) else file
        self.add(parts, f"{rel} defines no `{attr}`", hint)

    def one_line(self, parts: PathKey, value: Any) -> None:
        """Values that become image labels must not split a Dockerfile line."""
        if isinstance(value, str) and _CONTROL.search(value):
            self.add(
                parts,
                "control characters (such as newlines) are not allowed here",
                "write the value on one line (a ${VAR} may have brought one in)",
            )

    def run(self, data: dict[str, Any]) -> list[Issue]:
        if isinstance(data.get("authors"), list):
            for i, author in enumerate(data["authors"]):
                self.one_line(("authors", i), author)
        model: dict[str, Any] = data["model"] if isinstance(data.get("model"), dict) else {}
        self.source(model.get("source"))
        code: dict[str, Any] = data["code"] if isinstance(data.get("code"), dict) else {}
        code_dir = self.inside(("code", "path"), code.get("path", "."))
        if code_dir is not None and not code_dir.is_dir():
            self.add(("code", "path"), f"`{code.get('path')}` is not a directory")
            code_dir = None
        processing: dict[str, Any] = (
            data["processing"] if isinstance(data.get("processing"), dict) else {}
        )
        for hook in ("preprocess", "postprocess"):
            self.module(("processing", hook), processing.get(hook), code_dir)
        self.flavor(model, code_dir)
        self.flavor_requirements(model, data.get("image"))
        self.runtimes(data.get("runtimes"))
        self.image(data.get("image"))
        self.exports(data.get("export"), data.get("image"))
        self.secrets(data.get("build"))
        self.explain(data.get("explain"), model, processing, code_dir)
        self.drift(data.get("drift"))
        check_defense(self, data.get("defense"), data.get("drift"), code_dir)
        return self.issues

    def explain(
        self, spec: Any, model: dict[str, Any], processing: dict[str, Any], code_dir: Path | None
    ) -> None:
        if not isinstance(spec, dict):
            return
        background, hook = spec.get("background"), spec.get("hook")
        if (background is None) == (hook is None):
            self.add(
                ("explain",),
                "explain takes one of `background` (SHAP over a table in the repository) "
                "or `hook` (your own explainer)",
                "e.g. background: data/train.csv",
            )
        if hook is not None:
            self.module(("explain", "hook"), hook, code_dir)
            for key in ("samples", "output", "method", "columns", "exclude"):
                if key in spec:
                    self.add(
                        ("explain", key), f"`{key}` applies to SHAP (`background`), not a hook"
                    )
            return
        if model.get("flavor") == "transformers":
            self.add(
                ("explain", "background"),
                "the built-in explainer takes numeric tables, not the transformers flavor's text",
                "write an explain.hook",
            )
        elif processing.get("preprocess"):
            self.add(
                ("explain", "background"),
                "SHAP explains the model on the background's columns, and processing.preprocess "
                "changes what the model receives",
                "write an explain.hook, or drop the preprocess hook",
            )
        else:
            self.table(("explain", "background"), spec, numeric_only=True, samples=1)

    def drift(self, spec: Any) -> None:
        if isinstance(spec, dict):
            self.table(("drift", "reference"), spec, numeric_only=False, samples=1)

    def table(
        self, parts: PathKey, spec: dict[str, Any], *, numeric_only: bool, samples: int
    ) -> None:
        """The table exists in the repository and reads as the section uses it."""
        key = str(parts[-1])
        path = self.inside(parts, spec.get(key))
        if path is None:
            return
        names = {k: spec.get(k) for k in ("columns", "exclude", "categorical")}
        if not all(
            v is None or (isinstance(v, list) and all(isinstance(s, str) for s in v))
            for v in names.values()
        ):
            return  # the schema reports it
        try:
            read_table(
                path,
                str(spec[key]),
                columns=names["columns"] or (),
                exclude=names["exclude"] or (),
                categorical=names["categorical"] or (),
                samples=samples,
                numeric_only=numeric_only,
            )
        except TableError as exc:
            self.add(parts, str(exc))

    def source(self, source: Any) -> None:
        if not isinstance(source, dict):
            return
        local = source.get("local")
        if isinstance(local, dict):
            self.inside(("model", "source", "local", "path"), local.get("path"))

    def flavor(self, model: dict[str, Any], code_dir: Path | None) -> None:
        flavor, predictor = model.get("flavor"), model.get("predictor")
        if flavor == "custom" and not predictor:
            self.add(
                ("model", "flavor"),
                "the custom flavor needs `model.predictor`",
                "set predictor: module:Class, a class with load(model_dir) and predict(inputs) "
                "(see the README's custom predictor section)",
            )
        elif predictor and flavor != "custom":
            self.add(
                ("model", "predictor"),
                f"`predictor` is only used by the custom flavor, not {flavor}",
                "remove it, or set flavor: custom",
            )
        self.module(("model", "predictor"), predictor, code_dir)
        if model.get("task") and flavor != "transformers":
            self.add(("model", "task"), "`task` is only used by the transformers flavor")
        example = model.get("example")
        if isinstance(example, dict) and isinstance(example.get("file"), str):
            self.inside(("model", "example", "file"), example["file"])

    def flavor_requirements(self, model: dict[str, Any], image: Any) -> None:
        """Warn when nothing installs the package the flavor loads the model with."""
        flavor = model.get("flavor")
        if not isinstance(flavor, str) or flavor not in FLAVOR_DISTRIBUTION:
            return
        needed = FLAVOR_DISTRIBUTION[flavor]
        source = model.get("source")
        local = source.get("local") if isinstance(source, dict) else None
        if not isinstance(local, dict):
            return  # remote models bring their own requirements, known once resolved
        names = self.requirement_names(image if isinstance(image, dict) else {}, local)
        if names is None or needed in names or CPU_BUILDS.get(needed) in names:
            return
        module = FLAVOR_MODULE.get(flavor, needed)
        self.add(
            ("model", "flavor"),
            f"the {flavor} flavor loads the model with {needed}, which no requirement "
            f"installs (the container would stop: No module named '{module}')",
            f"add {needed}==<the version that saved the model> to image.requirements",
            severity="warning",
        )

    def requirement_names(self, image: dict[str, Any], local: dict[str, Any]) -> set[str] | None:
        """Canonical names of what image.requirements and the model's own requirements.txt
        install; None when they cannot be read (other checks report that)."""
        try:
            files, packages = requirements_of(image.get("requirements"))
        except (AttributeError, TypeError):
            return None
        lines = [p for p in packages if isinstance(p, str)]
        paths = [self.root / f for f in files if isinstance(f, str)]
        if isinstance(local.get("path"), str):
            paths.append(self.root / local["path"] / "requirements.txt")
        for path in paths:
            try:
                if path.resolve().is_relative_to(self.root) and path.is_file():
                    lines += read_requirements(path)
            except (OSError, UnicodeDecodeError, ValueError):
                return None
        names: set[str] = set()
        for line in lines:
            try:
                names.add(str(canonicalize_name(Requirement(line).name)))
            except InvalidRequirement:
                continue
        return names

    def runtimes(self, runtimes: Any) -> None:
        if not isinstance(runtimes, dict):
            return
        declared = runtimes.get("interfaces")
        names = list(declared) if isinstance(declared, dict) else list(INTERFACE_DEFAULTS)
        default = runtimes.get("default")
        # An unknown name is the schema's to report (with the valid names); here only a known
        # interface that the manifest left out.
        if isinstance(default, str) and default in INTERFACE_DEFAULTS and default not in names:
            self.add(
                ("runtimes", "default"),
                f"default runtime `{default}` is not among the "
                f"declared interfaces ({', '.join(names)})",
                f"add {default} under interfaces",
            )
        if not isinstance(declared, dict):
            return
        for name, body in declared.items():
            if not isinstance(body, dict):
                continue
            here = ("runtimes", "interfaces", name)
            if "grpc_port" in body and name != "kfserving":
                self.add(
                    (*here, "grpc_port"),
                    f"`grpc_port` applies to kfserving v2 only, not {name}",
                    "set `port`; modzy v2 is gRPC on `port`",
                )
            if "grpc_port" in body and body.get("grpc_port") == body.get("port"):
                self.add(
                    (*here, "grpc_port"),
                    "the gRPC port must differ from the HTTP port",
                    "one port per listener, e.g. 8080 and 8081",
                )
            protocols = body.get("protocols")
            if (
                name in ("sagemaker", "vertex", "mlflow")
                and isinstance(protocols, list)
                and protocols != ["v1"]
            ):
                self.add((*here, "protocols"), f"{name} has a single protocol, v1")

    def image(self, image: Any) -> None:
        if not isinstance(image, dict):
            return
        repo = image.get("repository")
        if isinstance(repo, str) and not REPOSITORY.match(repo):
            hint = (
                "drop the tag; put tags under origin.tags"
                if ":" in repo.rsplit("/", 1)[-1]
                else "lower-case path components, e.g. 127.0.0.1:5000/team/model"
            )
            self.add(("image", "repository"), f"`{repo}` is not a valid image repository", hint)
        base = image.get("base")
        if isinstance(base, str) and not REFERENCE.match(base):
            self.add(("image", "base"), f"`{base}` is not a valid image reference")
        try:
            files, _ = requirements_of(image.get("requirements"))
        except (AttributeError, TypeError):
            files = ()
        for i, f in enumerate(files):
            where: PathKey = ("image", "requirements")
            if isinstance(image.get("requirements"), dict):
                where = (*where, "files", i)
            self.inside(where, f)
        for section in ("env", "labels"):
            values = image.get(section)
            if isinstance(values, dict):
                for key, value in values.items():
                    self.one_line(("image", section, key), value)
        urls: list[tuple[PathKey, Any]] = [(("image", "index_url"), image.get("index_url"))]
        if isinstance(image.get("extra_index_urls"), list):
            urls += [(("image", "extra_index_urls", i), u)
                     for i, u in enumerate(image["extra_index_urls"])]  # fmt: skip
        for where, url in urls:
            if isinstance(url, str) and "@" in urllib.parse.urlsplit(url).netloc:
                self.add(
                    where,
                    "an index URL with credentials would be written into the plan and the "
                    "build's history",
                    "drop them here; give them as PIP_INDEX_URL / PIP_EXTRA_INDEX_URL in your "
                    "environment or a netrc (they reach the build as a secret)",
                )

        platforms = image.get("platforms")
        if image.get("format") == "docker" and isinstance(platforms, list) and len(platforms) > 1:
            self.add(
                ("image", "format"),
                "a docker-format image is one manifest, for one platform",
                "build one platform per image, or leave image.format at oci",
            )

    def exports(self, export: Any, image: Any) -> None:
        asked = [k for k, v in export.items() if v] if isinstance(export, dict) else []
        if asked and isinstance(image, dict) and image.get("format") == "docker":
            self.add(
                ("export", asked[0]),
                "an export is a manifest in the image's index, and a docker-format image has none",
                "leave image.format at oci to export, or drop export",
            )

    def secrets(self, build: Any) -> None:
        if not isinstance(build, dict) or not isinstance(build.get("secrets"), list):
            return
        seen: set[str] = set()
        for i, secret in enumerate(build["secrets"]):
            if not isinstance(secret, dict):
                continue
            if ("env" in secret) == ("file" in secret):
                self.add(("build", "secrets", i), "a secret takes exactly one of `env` or `file`")
            sid = secret.get("id")
            if sid in seen:
                self.add(("build", "secrets", i, "id"), f"secret id `{sid}` is used twice")
            if isinstance(sid, str):
                seen.add(sid)


def check(raw: RawManifest) -> list[Issue]:
    if not isinstance(raw.data, dict):
        return []
    return Checker(raw).run(raw.data)
