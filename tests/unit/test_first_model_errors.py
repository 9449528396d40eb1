"""Every error a stranger meets on the way to a first image, as the line they read and the
exit code the README states (1 invalid input, 2 usage or I/O error)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from omibuild.cli import main
from omibuild.errors import UsageError
from omibuild.manifest.validate import validate_file

HEAD = """apiVersion: omibuild/v1
name: demo
model:
  source:
    local: {path: model}
  flavor: sklearn
image:
  requirements: [scikit-learn==1.5.2]
"""


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "demo"
    (root / "model").mkdir(parents=True)
    (root / "model" / "model.joblib").write_bytes(b"not really a model")
    monkeypatch.chdir(root)
    return root


def errors(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_a_hook_that_its_module_does_not_define_is_a_validation_error(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "hooks.py").write_text(
        "def preprocess(x):\n    return x\n\n\ndef _helper():\n    pass\n"
    )
    (repo / "omi.yaml").write_text(HEAD + "processing:\n  preprocess: hooks:preprocss\n")
    assert main(["validate"]) == 1
    assert errors(capsys)[0] == (
        "omi.yaml:10:15: $.processing.preprocess: hooks.py defines no `preprocss` "
        "(hint: did you mean `hooks:preprocess`?)"
    )


def test_a_predictor_class_is_found_in_conditional_and_imported_names(repo: Path) -> None:
    (repo / "predictor.py").write_text(
        "try:\n    from joblib import load as Model\nexcept ImportError:\n    class Model: ...\n"
    )
    text = HEAD.replace("flavor: sklearn", "flavor: custom\n  predictor: predictor:Model")
    (repo / "omi.yaml").write_text(text)
    result = validate_file(repo / "omi.yaml", env={})
    assert result.ok, [i.text() for i in result.issues]


def test_kserve_is_the_kserve_name_of_kfserving_and_an_unknown_default_gets_one_message(
    repo: Path,
) -> None:
    (repo / "omi.yaml").write_text(HEAD + "runtimes:\n  default: kserve\n")
    result = validate_file(repo / "omi.yaml", env={})
    assert result.ok and result.manifest is not None
    assert result.manifest.runtimes.default == "kfserving"
    (repo / "omi.yaml").write_text(HEAD + "runtimes:\n  default: triton\n")
    [issue] = validate_file(repo / "omi.yaml", env={}).issues
    assert issue.path == "$.runtimes.default" and "add triton" not in issue.text()


def test_a_flavor_package_no_requirement_names_is_a_warning_not_a_failure(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "omi.yaml").write_text(
        HEAD.replace("  requirements: [scikit-learn==1.5.2]", "  slim: true")
    )
    assert main(["validate"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "omi.yaml:6:11: $.model.flavor: warning: the sklearn flavor loads the model with "
        "scikit-learn, which no requirement installs (the container would stop: No module named "
        "'sklearn') (hint: add scikit-learn==<the version that saved the model> to "
        "image.requirements)",
        "omi.yaml: valid",
    ]
    (repo / "model" / "requirements.txt").write_text("scikit-learn>=1.3\n")  # the model's own
    assert main(["validate"]) == 0
    assert "warning" not in capsys.readouterr().out


def test_every_verb_reads_omi_yaml_here_and_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for verb in ("validate", "plan", "apply", "run"):
        assert main([verb]) == 2, verb
        assert errors(capsys) == [
            "omibuild: error: omi.yaml: no such file (hint: run `omibuild init` to create one)"
        ], verb


def test_init_refuses_a_model_outside_the_manifests_directory(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "elsewhere").mkdir()
    assert main(["init", "../elsewhere"]) == 2
    assert errors(capsys) == [
        f"omibuild: error: ../elsewhere: outside {repo}, where omi.yaml goes; a manifest's "
        "paths stay inside its directory (hint: run init in a directory that holds the model, "
        "or pass -o DIR/omi.yaml)"
    ]
    assert not (repo / "omi.yaml").exists()


def test_init_at_a_root_with_model_files_beside_other_files_takes_only_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "Churn Model"
    root.mkdir()
    monkeypatch.chdir(root)
    for name in ("a.onnx", "b.onnx", "train.py", "README.md"):
        (root / name).write_text("x")
    assert main(["init"]) == 0
    text = (root / "omi.yaml").read_text()
    assert "name: churn-model\n" in text
    assert "path: .\n      include: [a.onnx, b.onnx]" in text
    result = validate_file(root / "omi.yaml", env={})
    assert result.ok, [i.text() for i in result.issues]


def test_run_reads_the_request_file_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    assert main(["run", "some/image:tag", "--predict", str(tmp_path / "missing.json")]) == 2
    [line] = errors(capsys)
    assert line.startswith(f"omibuild: error: {tmp_path}/missing.json: cannot read the request")


def test_an_unreachable_engine_is_one_line_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = f"unix://{tmp_path}/no-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", sock)
    for argv in (["run", "some/image:tag"], ["check", "some/image:tag"]):
        assert main(argv) == 2, argv
        assert errors(capsys) == [
            f"omibuild: error: cannot reach the Docker engine at {sock} (hint: start Docker "
            "(or `make setup` on this repository's machines), or set DOCKER_HOST)"
        ], argv


def test_a_reviewed_plan_names_what_moved(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{repo}/no-engine.sock")
    monkeypatch.setenv("OMIBUILD_CACHE_DIR", str(repo.parent / "cache"))
    (repo / "omi.yaml").write_text(HEAD + "  labels: {team: search}\n")
    assert main(["plan", "--out", "reviewed.plan.json"]) == 0
    reviewed = json.loads((repo / "reviewed.plan.json").read_text())
    (repo / "omi.yaml").write_text(HEAD + "  labels: {team: ranking}\n  user: {uid: 20000}\n")
    capsys.readouterr()
    assert main(["apply", "--plan", "reviewed.plan.json"]) == 1
    [line] = [ln for ln in errors(capsys) if ln.startswith("omibuild: error:")]
    assert line == (
        f"omibuild: error: the reviewed plan {reviewed['digest'][:19]} is stale: label team: "
        "search → ranking; user: omi (10001) → omi (20000) (hint: run `omibuild plan --out "
        "plan.json` again and have it reviewed)"
    )


def test_completion_scripts_offer_every_verb_and_its_options() -> None:
    bash = subprocess.run(
        [sys.executable, "-m", "omibuild", "completion", "bash"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for word in ("init", "validate", "plan", "apply", "run", "check", "--format", "--predict"):
        assert word in bash
    script = (
        bash + '\nCOMP_WORDS=(omibuild run --pr); COMP_CWORD=2; _omibuild; echo "${COMPREPLY[@]}"\n'
    )
    got = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert got.stdout.split() == ["--predict", "--protocol"]
    zsh = subprocess.run(
        [sys.executable, "-m", "omibuild", "completion", "zsh"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert zsh.startswith("#compdef omibuild") and "--predict" in zsh


def test_every_verb_help_has_a_description_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    from omibuild.cli import VERBS

    for verb in VERBS:
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        text = capsys.readouterr().out
        assert text.count("\n") > 5 and "omibuild " in text, verb
        if verb != "schema":
            assert "examples:" in text, verb


def test_a_full_disk_names_the_directory_and_what_is_free(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write() that fills the disk names no file: the line names omibuild's cache, where
    it writes, and the space left there; a copy that cannot fit says what it needs first."""
    import errno

    from omibuild import cli
    from omibuild.store.hashing import copy_and_hash

    monkeypatch.setenv("OMIBUILD_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()

    def full(args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("omibuild.commands.validate.run", full)
    assert cli.main(["validate", str(tmp_path / "omi.yaml")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"omibuild: error: {tmp_path / 'cache'}: No space left on device (")
    assert "MB free" in line and "omibuild cache prune" in line

    big = tmp_path / "weights.bin"
    with open(big, "wb") as fh:
        fh.truncate(1 << 42)  # sparse: 4 TiB that take no room
    with pytest.raises(UsageError, match=r"no space for 4\.4 TB \(the file system has "):
        copy_and_hash(big, tmp_path / "copy.bin")
    assert not (tmp_path / "copy.bin").exists()


def test_predict_alone_without_a_baked_example_says_to_pass_a_request() -> None:
    from omibuild.commands.run import _baked_example

    class Holds:
        """A container whose omi.json has no example (the manifest gave none)."""

        def read_text(self, cid: str, path: str) -> str:
            assert path == "/opt/omi/omi.json"
            return json.dumps({"name": "m", "example": None})

    with pytest.raises(UsageError) as err:
        _baked_example(Holds(), "c1", "r/m:1")  # type: ignore[arg-type]
    assert str(err.value) == (
        "r/m:1 holds no example input to send (hint: pass a request: --predict request.json)"
    )
