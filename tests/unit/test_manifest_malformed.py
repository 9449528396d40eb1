"""A corpus of broken manifests: each must be reported at the right line with a useful message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omibuild.manifest.validate import validate_file

GOOD_HEAD = """apiVersion: omibuild/v1
name: iris
model:
  source:
    local: {path: model}
  flavor: sklearn
"""

# (id, manifest text or bytes, expected line, fragment of the message)
CASES: list[tuple[str, str | bytes, int, str]] = [
    ("empty file", "", 1, "the file is empty"),
    ("only comments", "# nothing here\n", 1, "the file is empty"),
    ("list root", "- a\n- b\n", 1, "must be a mapping, not a list"),
    ("scalar root", "hello\n", 1, "must be a mapping, not a single value"),
    ("binary junk", b"\x89PNG\r\n\x1a\n\x00\x00", 1, "not UTF-8"),
    ("nul byte", "name: a\x00b\n", 1, "invalid YAML"),
    ("tab indentation", "apiVersion: omibuild/v1\nmodel:\n\tflavor: sklearn\n", 3, "'\\t'"),
    ("unclosed quote", 'apiVersion: "omibuild/v1\nname: x\n', 3, "invalid YAML"),
    ("bad indentation", "apiVersion: omibuild/v1\nname: x\n  model: y\n", 3, "invalid YAML"),
    ("two documents", "name: a\n---\nname: b\n", 2, "invalid YAML"),
    (
        "duplicate key",
        GOOD_HEAD + "name: other\n",
        7,
        "duplicate key 'name' (first defined at line 2)",
    ),
    (
        "duplicate nested key",
        GOOD_HEAD.replace("  flavor: sklearn\n", "  flavor: sklearn\n  flavor: onnx\n"),
        7,
        "duplicate key 'flavor'",
    ),
    (
        "missing apiVersion",
        GOOD_HEAD.replace("apiVersion: omibuild/v1\n", ""),
        1,
        "missing required key `apiVersion`",
    ),
    (
        "wrong apiVersion",
        GOOD_HEAD.replace("omibuild/v1", "omibuild/v2"),
        1,
        "`omibuild/v2` is not allowed",
    ),
    ("missing name", GOOD_HEAD.replace("name: iris\n", ""), 1, "missing required key `name`"),
    (
        "name wrong type",
        GOOD_HEAD.replace("name: iris", "name: 42"),
        2,
        "expected a string, got a whole number",
    ),
    ("name bad chars", GOOD_HEAD.replace("name: iris", "name: Iris Model"), 2, "is not valid"),
    ("unknown top key", GOOD_HEAD + "modle: {}\n", 7, "unknown key `modle`"),
    (
        "typo hint",
        GOOD_HEAD.replace("flavor: sklearn", "flavour: sklearn"),
        6,
        "did you mean `flavor`?",
    ),
    (
        "missing source",
        "apiVersion: omibuild/v1\nname: x\nmodel:\n  flavor: sklearn\n",
        4,
        "missing required key `source`",
    ),
    (
        "empty source",
        GOOD_HEAD.replace("    local: {path: model}\n", "    {}\n"),
        5,
        "declare a model source",
    ),
    (
        "two sources",
        GOOD_HEAD.replace(
            "    local: {path: model}\n",
            "    local: {path: model}\n    mlflow: {uri: 'models:/a/1'}\n",
        ),
        5,
        "declare exactly one model source, found 2",
    ),
    (
        "unknown source",
        GOOD_HEAD.replace("local: {path: model}", "s3: {path: model}"),
        5,
        "unknown key `s3`",
    ),
    (
        "bad mlflow uri",
        GOOD_HEAD.replace("local: {path: model}", "mlflow: {uri: 'models:iris'}"),
        5,
        "is not valid",
    ),
    (
        "bad runs uri",
        GOOD_HEAD.replace("local: {path: model}", "mlflow: {uri: 'runs:/xyz/model'}"),
        5,
        "is not valid",
    ),
    (
        "bad tracking uri",
        GOOD_HEAD.replace(
            "local: {path: model}", "mlflow: {uri: 'models:/a/1', tracking_uri: 'ftp://x'}"
        ),
        5,
        "is not valid",
    ),
    (
        "hf typo",
        GOOD_HEAD.replace("local: {path: model}", "huggingface: {repo: a/b, revison: main}"),
        5,
        "did you mean `revision`?",
    ),
    (
        "unknown flavor",
        GOOD_HEAD.replace("flavor: sklearn", "flavor: sklern"),
        6,
        "did you mean `sklearn`?",
    ),
    (
        "path escapes",
        GOOD_HEAD.replace("path: model", "path: ../outside"),
        5,
        "leaves the model repository",
    ),
    (
        "absolute path",
        GOOD_HEAD.replace("path: model", "path: /etc"),
        5,
        "leaves the model repository",
    ),
    ("missing path", GOOD_HEAD.replace("path: model", "path: nothere"), 5, "does not exist"),
    (
        "symlink escape",
        GOOD_HEAD.replace("path: model", "path: escape"),
        5,
        "points outside the model repository",
    ),
    (
        "custom without predictor",
        GOOD_HEAD.replace("flavor: sklearn", "flavor: custom"),
        6,
        "needs `model.predictor`",
    ),
    (
        "hook bad syntax",
        GOOD_HEAD + "processing:\n  preprocess: hooks.preprocess\n",
        8,
        "is not valid",
    ),
    (
        "hook module missing",
        GOOD_HEAD + "processing:\n  preprocess: nomod:fn\n",
        8,
        "module `nomod` not found",
    ),
    (
        "default runtime undeclared",
        GOOD_HEAD + "runtimes:\n  default: modzy\n  interfaces: {kfserving: {}}\n",
        8,
        "default runtime `modzy` is not among",
    ),
    (
        "unknown interface",
        GOOD_HEAD + "runtimes:\n  interfaces: {triton: {}}\n",
        8,
        "unknown key `triton`",
    ),
    (
        "port out of range",
        GOOD_HEAD + "runtimes:\n  interfaces: {kfserving: {port: 70000}}\n",
        8,
        "out of range",
    ),
    (
        "port as string",
        GOOD_HEAD + "runtimes:\n  interfaces: {kfserving: {port: '8080'}}\n",
        8,
        "expected a whole number",
    ),
    (
        "grpc port equals http",
        GOOD_HEAD + "runtimes:\n  interfaces: {kfserving: {port: 8080, grpc_port: 8080}}\n",
        8,
        "must differ",
    ),
    (
        "bad protocol",
        GOOD_HEAD + "runtimes:\n  interfaces: {kfserving: {protocols: [v3]}}\n",
        8,
        "`v3` is not allowed",
    ),
    (
        "repository with tag",
        GOOD_HEAD + "image:\n  repository: reg.io/a/b:latest\n",
        8,
        "not a valid image repository",
    ),
    (
        "repository upper case",
        GOOD_HEAD + "image:\n  repository: reg.io/Team/B\n",
        8,
        "not a valid image repository",
    ),
    ("duplicate tags", GOOD_HEAD + "origin:\n  tags: [a, a]\n", 8, "lists the same item twice"),
    ("invalid tag", GOOD_HEAD + "origin:\n  tags: ['-bad']\n", 8, "is not valid"),
    (
        "requirements wrong type",
        GOOD_HEAD + "image:\n  requirements: 5\n",
        8,
        "expected one of: file (a string)",
    ),
    (
        "requirements object typo",
        GOOD_HEAD + "image:\n  requirements: {file: [r.txt]}\n",
        8,
        "did you mean `files`?",
    ),
    ("env newline", GOOD_HEAD + 'image:\n  env: {A: "x\\nRUN evil"}\n', 8, "control characters"),
    (
        "unset variable",
        GOOD_HEAD + "image:\n  repository: ${OMI_TEST_UNSET_VAR}\n",
        8,
        "OMI_TEST_UNSET_VAR is not set",
    ),
    (
        "malformed interpolation",
        GOOD_HEAD + "image:\n  repository: ${OMI-BAD}\n",
        8,
        "malformed interpolation",
    ),
    (
        "secret with both",
        GOOD_HEAD + "build:\n  secrets: [{id: a, env: A, file: /x}]\n",
        8,
        "exactly one of",
    ),
    ("merge key", "base: &b {name: x}\n<<: *b\napiVersion: omibuild/v1\n", 2, "merge keys"),
    ("non-string key", GOOD_HEAD + "1: x\n", 7, "mapping keys must be strings"),
    ("example wrong shape", GOOD_HEAD + "  example: {instances: 3}\n", 7, "expected a list"),
]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "model").mkdir(parents=True)
    (root / "model" / "model.joblib").write_bytes(b"x")
    (root / "hooks.py").write_text("def preprocess(x):\n    return x\n")
    # beside the repository, inside the test's own directory (which goes when it passes)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "escape")
    return root


@pytest.mark.parametrize(
    ("text", "line", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_manifest_is_reported_at_its_line(
    repo: Path, text: str | bytes, line: int, fragment: str
) -> None:
    path = repo / "omi.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, "utf-8")
    result = validate_file(path, env={})
    assert not result.ok
    assert result.manifest is None
    matching = [i for i in result.issues if fragment in i.text()]
    assert matching, f"no issue mentions {fragment!r}: {[i.text() for i in result.issues]}"
    assert matching[0].line == line, matching[0].text()
    assert matching[0].text().startswith(f"{path}:{line}:")


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30


def test_every_problem_is_reported_at_once(repo: Path) -> None:
    path = repo / "omi.yaml"
    path.write_text(
        GOOD_HEAD.replace("flavor: sklearn", "flavor: nope") + "modle: 1\nimage: {repository: A}\n"
    )
    result = validate_file(path, env={})
    assert len(result.issues) == 3, [i.text() for i in result.issues]
    assert "never" not in " ".join(i.message for i in result.issues)


def test_failed_oneof_never_says_not_valid_under_any(repo: Path) -> None:
    path = repo / "omi.yaml"
    path.write_text(GOOD_HEAD + "image:\n  requirements: {files: [1]}\n")
    messages = [i.message for i in validate_file(path, env={}).issues]
    assert messages and not any(
        "is not valid under any of the given schemas" in m for m in messages
    )
    assert any("expected a string" in m for m in messages)
