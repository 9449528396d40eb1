"""The build as a person and a CI log see it: the live view under a pseudo-terminal, one line
per step off a terminal, GitHub Actions groups, and each common failure in one line with a
hint, the exit code the README gives and no tag left behind. Each starts in a stranger's fresh
repository with a model trained here, and induces the real failure."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from omibuild.engine.images import CONTAINERD_SOCKETS

from .test_first_model import OMIBUILD, cli, new_repo, train_joblib, without_example

pytestmark = pytest.mark.integration

EXAMPLE = "model:\n  example: {instances: [[5.1, 3.5, 1.4, 0.2]]}\n"
STEP_LINE = re.compile(r"^  (\[[a-z0-9-]+ \d+/\d+\] )?[a-z][^\n]*: (cached|\d+\.\d+s)$")
# apply's notice when it builds again after one of BuildKit's own races (engine/apply.py
# _retry_transient_failures): under the full parallel suite it happens, and the user is told
RETRY_LINE = re.compile(
    r"^\S+: (the engine lost a record during the build|exporting the build cache failed) "
    r"\([^\n]*\); building (it )?again( without exporting it)?$"
)


def stranger(tmp_path: Path, name: str, edit: str = "") -> Path:
    repo = new_repo(tmp_path, name, train_joblib)
    assert cli(repo, "init").returncode == 0
    manifest = repo / "omi.yaml"
    text = without_example(manifest.read_text()).replace("model:\n", EXAMPLE, 1)
    manifest.write_text(text + edit)
    return repo


def pushed_to(repo: Path, name: str, registry: str) -> str:
    """Point the manifest init wrote at a repository on this registry; return it."""
    manifest = repo / "omi.yaml"
    repository = f"{registry}/omibuild-test/{name}"
    text = manifest.read_text().replace(
        f"  # repository: registry.example.com/models/{name}", f"  repository: {repository}"
    )
    manifest.write_text(text)
    return repository


def tags(repository: str) -> list[str]:
    out = subprocess.run(
        ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(out.split())


def under_a_terminal(repo: Path, *args: str, timeout: float = 600) -> str:
    """Run the CLI with a pseudo-terminal as its stdout and stderr (160x45, no CI variable);
    return everything it wrote, escape sequences and all."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GITHUB_ACTIONS")}
    env |= {"TERM": "xterm-256color", "COLUMNS": "160", "LINES": "45"}
    env.setdefault("OMIBUILD_CACHE_DIR", str(repo.parent / "omicache"))
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [OMIBUILD, *args], cwd=repo, env=env, stdin=child, stdout=child, stderr=child
    )
    os.close(child)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    data = os.read(main, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def test_the_terminal_view_shows_steps_in_words_and_a_summary(
    tmp_path: Path, unique: str, engine: None, image_cleanup: list[str]
) -> None:
    name = f"stranger-tty-{unique}"
    repo = stranger(tmp_path, name)
    image_cleanup.append(f"omibuild.local/{name}:latest")
    screen = under_a_terminal(repo, "apply")
    assert "[model 3/3] predicting the example input" in screen  # a running step, live
    assert re.search(r"\d+/\d+ steps done, \d+ cached", screen)  # the counter
    assert "--mount=" not in screen and "RUN " not in screen  # no raw Dockerfile text
    assert re.search(rf"omibuild\.local/{name}: BuildKit ran its \d+ steps \(\d+ cached\)", screen)
    assert len(re.findall(r"built in [\d.]+s", screen)) == 1, screen  # one total build time
    assert re.search(r"[\d.]+ [kMG]B content, venv [\d.]+ [kMG]B", screen)
    assert re.search(r"digest sha256:[0-9a-f]{64}, \d+/\d+ steps cached", screen)
    assert f"try it: omibuild run omibuild.local/{name}:latest --predict" in screen
    image_cleanup += tags(f"omibuild.local/{name}")
    # the hint works as printed: --predict alone sends the example baked into the image
    ran = cli(repo, "run", f"omibuild.local/{name}:latest", "--predict", "--format", "json")
    assert ran.returncode == 0, ran.stderr[-2000:]
    answer = json.loads(ran.stdout)
    response = answer["response"]
    assert answer["status"] == 200 and (response.get("predictions") or response["outputs"])


def test_off_a_terminal_one_line_per_step_and_github_groups(
    tmp_path: Path, unique: str, engine: None, image_cleanup: list[str]
) -> None:
    name = f"stranger-ci-{unique}"
    repo = stranger(tmp_path, name)
    image_cleanup.append(f"omibuild.local/{name}:latest")
    plain = cli(repo, "apply")
    assert plain.returncode == 0, plain.stderr[-3000:]
    lines = [ln for ln in plain.stderr.splitlines() if not RETRY_LINE.match(ln)]
    assert lines and [ln for ln in lines if not STEP_LINE.match(ln)] == [], plain.stderr
    labels = {ln.rsplit(": ", 1)[0].strip() for ln in lines}
    assert {
        "[deps 4/6] installing the requirements",
        "[code 3/3] byte-compiling the code",  # BuildKit's places, named by the plan's ids
        "[stage-2 3/7] copying the virtualenv",
        "[model 3/3] predicting the example input",
        "exporting the image",
    } <= labels, labels
    # the model never reaches BuildKit: omibuild makes its layer and loads it
    assert not any("copying the model" in label for label in labels), labels
    assert not any(w in x for x in labels for w in ("running a command", "copying files"))
    # stored in containerd as they are hashed where its import is reachable (setup's engine)
    made = ("[model 1/3] storing the model layers in the engine as they are hashed (",
            "[model 1/3] hashing the model layers (")  # fmt: skip
    assert any(x.startswith(made) for x in labels), labels
    assert any(x.startswith("[model 2/3] loading into the engine (") for x in labels), labels
    assert "--mount" not in plain.stderr

    (repo / "model" / "extra.txt").write_text(f"retrained {unique}\n")
    github = cli(repo, "apply", env={"GITHUB_ACTIONS": "true"})
    assert github.returncode == 0, github.stderr[-3000:]
    out = github.stderr.splitlines()
    opened = [ln for ln in out if ln.startswith("::group::")]
    assert opened and len(opened) == out.count("::endgroup::")
    assert any(
        ln.startswith("::group::[model 3/3] predicting the example input: ") for ln in opened
    )
    depth = 0
    for ln in out:  # balanced, never nested
        depth += ln.startswith("::group::") - (ln == "::endgroup::")
        assert depth in (0, 1), out
    image_cleanup += tags(f"omibuild.local/{name}")

    # two ways into the engine: containerd's own import where its socket is reachable (setup's
    # machine), `docker load` when asked or elsewhere; the image answers either way
    reachable = any(os.access(s, os.W_OK) for s in CONTAINERD_SOCKETS)
    route = "containerd's import" if reachable else "docker load"
    loaded = [x for x in labels if x.startswith("[model 2/3] loading into the engine (")]
    assert loaded and loaded[0].endswith(f", by {route})"), loaded
    (repo / "model" / "extra.txt").write_text(f"retrained twice {unique}\n")
    forced = cli(repo, "apply", env={"OMIBUILD_LOAD": "docker"})
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "of model layers, by docker load): " in forced.stderr, forced.stderr
    image_cleanup += tags(f"omibuild.local/{name}")
    ran = cli(repo, "run", "--predict", "--format", "json")
    assert ran.returncode == 0 and json.loads(ran.stdout)["status"] == 200, ran.stderr[-2000:]


def failing(repo: Path, *args: str) -> tuple[str, Path]:
    """apply that must fail: exit 1, and with --progress quiet only the error line (naming
    the full log, which exists) on stderr."""
    done = cli(repo, "apply", "--progress", "quiet", *args)
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    line = lines[0]
    log = Path(line.rsplit("; full log: ", 1)[1])
    assert log.is_file() and log.stat().st_size > 0
    return line, log


def test_an_impossible_pin_is_pip_s_own_line(tmp_path: Path, unique: str, engine: None) -> None:
    name = f"stranger-pin-{unique}"
    repo = stranger(tmp_path, name)
    manifest = repo / "omi.yaml"
    manifest.write_text(
        re.sub(r"- scikit-learn==[^ \n]+", "- scikit-learn==0.0.1", manifest.read_text())
    )
    line, _ = failing(repo)
    assert line.startswith(
        f"omibuild: error: {name}: pip could not install the requirements: No matching "
        "distribution found for scikit-learn==0.0.1 (hint: check image.requirements in omi.yaml"
    ), line
    assert tags(f"omibuild.local/{name}") == []
    # a pipeline reads the kind of failure from apply's JSON
    record = json.loads(cli(repo, "apply", "--progress", "quiet", "--format", "json").stdout)
    assert [(r["status"], r["failure_kind"]) for r in record] == [("failed", "requirements")]
    # under GitHub Actions the same line is also an annotation on the run
    github = cli(repo, "apply", env={"GITHUB_ACTIONS": "true"})
    assert github.returncode == 1
    assert (
        f"::error title=omibuild apply {name}::pip could not install the requirements: No "
        "matching distribution found for scikit-learn==0.0.1"
    ) in github.stdout, github.stdout


def test_an_unpullable_base_is_named(tmp_path: Path, unique: str, engine: None) -> None:
    name = f"stranger-base-{unique}"
    repo = stranger(tmp_path, name)
    manifest = repo / "omi.yaml"
    text = manifest.read_text().replace("  # base: python:3.11-slim", "  base: 127.0.0.1:9/none:1")
    manifest.write_text(text)
    line, _ = failing(repo)
    assert line.startswith(
        f"omibuild: error: {name}: the base image 127.0.0.1:9/none:1 cannot be pulled: "
    ), line
    assert "(hint: check image.base in omi.yaml" in line
    assert tags(f"omibuild.local/{name}") == []


def test_a_dead_registry_on_push_is_named_and_leaves_no_tag(
    tmp_path: Path, unique: str, engine: None
) -> None:
    name = f"stranger-push-{unique}"
    repo = stranger(tmp_path, name)
    repository = pushed_to(repo, name, "127.0.0.1:9")
    # apply looks for the registry before it builds: an unreachable service is exit 2
    done = cli(repo, "apply", "--progress", "quiet", "--push")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line == (
        f"omibuild: error: cannot reach the registry 127.0.0.1:9 for {repository}: Connection "
        "refused (hint: check image.repository, and that the registry is up and reachable "
        "from here)"
    ), line
    assert tags(repository) == []


def test_an_unreachable_engine_is_exit_2_with_the_same_line_on_every_verb(
    tmp_path: Path, unique: str
) -> None:
    repo = stranger(tmp_path, f"stranger-noengine-{unique}")
    (repo / "request.json").write_text(json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}))
    gone = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    said = set()
    for args in (
        ("apply",),
        ("run", "--predict", "request.json"),
        ("check", "omibuild.local/anything:1"),
    ):
        done = cli(repo, *args, env=gone)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, (args, done.stderr)
        said.add(lines[0])
    assert said == {
        f"omibuild: error: cannot reach the Docker engine at unix://{tmp_path}/no-engine.sock "
        "(hint: start Docker (or `make setup` on this repository's machines), or set DOCKER_HOST)"
    }, said


@pytest.fixture
def locked_registry(tmp_path: Path) -> Iterator[str]:
    """A registry on loopback that asks for a password nobody here has."""
    import bcrypt

    from omibuild.conformance.images import free_port

    port = free_port()
    hashed = bcrypt.hashpw(b"not-yours", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "htpasswd").write_text(f"someone:{hashed}\n")
    (tmp_path / "registry.yml").write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'storage'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
        f"auth: {{htpasswd: {{realm: omibuild-test, path: {tmp_path / 'htpasswd'}}}}}\n"
    )
    with open(tmp_path / "registry.log", "w") as log:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(tmp_path / "registry.yml")], stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
            except urllib.error.HTTPError as err:
                if err.code == 401:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "registry.log"
            ).read_text()
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_registry_that_refuses_the_push_is_named_and_leaves_no_tag(
    tmp_path: Path, unique: str, engine: None, locked_registry: str
) -> None:
    name = f"stranger-auth-{unique}"
    repo = stranger(tmp_path, name)
    repository = pushed_to(repo, name, locked_registry)
    line, _ = failing(repo, "--push")
    assert line.startswith(f"omibuild: error: {name}: the registry refused the push: "), line
    assert "(hint: `docker login` to the registry" in line
    assert tags(repository) == []
