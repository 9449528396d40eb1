"""BuildKit's structured progress read into steps, shown in words, and a failed build named
in one line (engine/progress.py). The events are shaped as buildx 0.13 writes them with
--progress=rawjson; tests/integration/test_build_view.py drives real builds."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest

from omibuild.engine.failures import diagnose
from omibuild.engine.progress import (
    Events,
    GithubView,
    LineView,
    Step,
    Steps,
    label,
    words,
)
from omibuild.planning.plan import Plan
from omibuild.render.dockerfile import step_ids

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
# the steps of the sklearn example's golden plan, by the names BuildKit gives them
IDS = step_ids(Plan.from_dict(json.loads((GOLDEN / "sklearn-iris.plan.json").read_text())))
T0 = "2026-12-01T05:21:40.100000000Z"
T1 = "2026-12-01T05:21:42.600000000Z"


def vertex(digest: str, name: str, **more: Any) -> dict[str, Any]:
    return {"vertexes": [{"digest": digest, "name": name, **more}]}


def log(digest: str, text: str) -> dict[str, Any]:
    data = base64.b64encode(text.encode()).decode()
    return {"logs": [{"vertex": digest, "stream": 1, "data": data, "timestamp": T1}]}


def pretty(*events: dict[str, Any]) -> list[str]:
    """As buildx prints them: each object indented over several lines."""
    return [ln for e in events for ln in json.dumps(e, indent=2).splitlines()]


PIP = "[deps 4/6] RUN --mount=type=cache,target=/root/.cache/pip pip install -r model.txt"


def build(*events: dict[str, Any], trailer: tuple[str, ...] = ()) -> Steps:
    steps = Steps(ids=IDS)
    reader = Events()
    for line in [*pretty(*events), *trailer]:
        for event in reader.feed(line):
            steps.apply(event)
    return steps


def test_events_and_plain_lines_are_told_apart() -> None:
    reader = Events()
    out = []
    for line in [*pretty(vertex("a", "[deps 2/6] RUN x")), "Dockerfile:3", "ERROR: failed"]:
        out += list(reader.feed(line))
    assert out[0] == vertex("a", "[deps 2/6] RUN x")
    assert out[1:] == ["Dockerfile:3", "ERROR: failed"]


def test_a_brace_inside_a_log_does_not_end_the_event() -> None:
    reader = Events()
    event = log("a", "{\n}\n")
    lines = json.dumps(event, indent=2).splitlines()
    got = [e for ln in lines for e in reader.feed(ln)]
    assert got == [event]


def test_steps_keep_times_cache_hits_logs_and_bytes() -> None:
    steps = build(
        vertex("a", "[deps 2/6] RUN python3 -m venv /opt/omi/venv", started=T0, completed=T1),
        vertex("b", "[deps 3/6] COPY --link requirements/ /r/", cached=True, completed=T1),
        vertex("c", "[deps 3/6] LINK COPY --link requirements/ /r/", completed=T1),
        vertex("d", "[internal] load build context", started=T0),
        {"statuses": [{"id": "ctx", "vertex": "d", "current": 1_200_000_000}]},
        log("a", "created\nvenv ready\n"),
    )
    a = steps.steps["a"]
    assert a.seconds == pytest.approx(2.5) and list(a.logs) == ["created", "venv ready"]
    assert [s.name for s in steps.dockerfile_steps()] == [
        "[deps 2/6] RUN python3 -m venv /opt/omi/venv",
        "[deps 3/6] COPY --link requirements/ /r/",
    ]
    assert steps.steps["b"].cached and steps.steps["d"].bytes == 1_200_000_000
    assert words(steps.steps["d"]) == "sending the build context (1.2 GB)"


@pytest.mark.parametrize(
    ("name", "said"),
    [
        (PIP, "[deps 4/6] installing the requirements"),
        (
            "[stage-2 3/7] COPY --link --from=deps /opt/omi/venv /opt/omi/venv",
            "[stage-2 3/7] copying the virtualenv",
        ),
        ("[code 2/3] RUN mkdir -p /opt/omi/code", "[code 2/3] creating the code directory"),
        # named by its place, not its text: the plan's step 4 of deps is pip's
        ("[deps 4/6] RUN anything at all", "[deps 4/6] installing the requirements"),
        (
            "[describe 3/3] RUN --network=none python -m x describe",
            "[describe 3/3] running a command",
        ),
        ("exporting cache to client directory", "exporting the cache"),
        ("exporting to image", "exporting the image"),
        ("[internal] load metadata for python:3.11-slim", "resolving python:3.11-slim"),
        (
            "[deps 1/6] FROM python:3.11-slim@sha256:abc",
            "[deps 1/6] starting from python:3.11-slim",
        ),
    ],
)
def test_steps_in_words(name: str, said: str | None) -> None:
    steps = build(vertex("x", name))
    text = label(steps.steps["x"])
    assert "--mount" not in text and "RUN " not in text
    if said:
        assert text == said


def test_the_line_view_prints_one_line_per_step_with_its_time() -> None:
    out = io.StringIO()
    view = LineView(out)
    steps = Steps(ids=IDS)
    for event in [
        vertex("a", PIP, started=T0, completed=T1),
        vertex(
            "b", "[stage-2 6/7] COPY --link omi.json /opt/omi/omi.json", cached=True, completed=T1
        ),
        vertex("c", "[stage-2 6/7] LINK COPY --link omi.json /opt/omi/omi.json", completed=T1),
        vertex("d", "[internal] load .dockerignore", started=T0, completed=T1),
    ]:
        view.update(steps, steps.apply(event))
    assert out.getvalue() == (
        "  [deps 4/6] installing the requirements: 2.5s\n  [stage-2 6/7] writing omi.json: cached\n"
    )


def test_the_github_view_folds_each_step_s_log() -> None:
    out = io.StringIO()
    view = GithubView(out)
    steps = Steps(ids=IDS)
    for event in [log("a", "ignored: the step is not known yet\n"), vertex("a", PIP, started=T0)]:
        view.update(steps, steps.apply(event))
    view.update(steps, steps.apply(log("a", "Collecting numpy\n::set-output name=x::y\n")))
    view.update(steps, steps.apply(vertex("a", PIP, started=T0, completed=T1)))
    assert out.getvalue() == (
        "::group::[deps 4/6] installing the requirements: 2.5s\n"
        "Collecting numpy\n"
        "::set-output name=x::y\n"
        "::endgroup::\n"
    )


def test_a_failed_pip_install_is_pip_s_own_line() -> None:
    steps = build(
        vertex("a", PIP, started=T0),
        log(
            "a",
            "ERROR: Could not find a version that satisfies the requirement sk==0.0.1 (from "
            "versions: none)\nERROR: No matching distribution found for sk==0.0.1\n",
        ),
        vertex("a", PIP, started=T0, completed=T1, error="process did not complete: exit code: 1"),
        trailer=("ERROR: failed to solve: process ... exit code: 1",),
    )
    failure = diagnose(steps)
    assert failure.kind == "requirements"
    assert failure.line == (
        "pip could not install the requirements: No matching distribution found for sk==0.0.1"
    )
    assert "image.requirements" in (failure.hint or "")


def test_the_build_s_own_step_says_what_is_wrong() -> None:
    name = "[describe 3/3] RUN python -m omibuild.runtime describe /opt/omi/outputs.json"
    steps = build(
        vertex("a", name, started=T0),
        log("a", "omibuild: omi.yaml example: the model cannot predict it (X); fix it\n"),
        vertex("a", name, completed=T1, error="process did not complete: exit code: 3"),
    )
    assert str(diagnose(steps)) == "omi.yaml example: the model cannot predict it (X); fix it"


@pytest.mark.parametrize(
    ("name", "error", "kind", "says"),
    [
        (
            "[internal] load metadata for python:3.11-slim",
            "failed to do request: Head https://registry-1.docker.io/v2/library/python/manifests"
            "/3.11-slim: dial tcp: lookup registry-1.docker.io: no such host",
            "base",
            "the base image python:3.11-slim cannot be pulled",
        ),
        (
            "[code 1/2] COPY --link code/ /opt/omi/code/",
            'failed to calculate checksum of ref abc::def: "/code/hooks.py": not found',
            "missing file",
            "code/hooks.py is missing from the build context",
        ),
        (
            "exporting to image",
            "failed to push 127.0.0.1:1/m:latest: failed to do request: Head "
            '"http://127.0.0.1:1/v2/m/blobs/sha256:abc": dial tcp 127.0.0.1:1: connect: '
            "connection refused",
            "registry",
            "the registry 127.0.0.1:1 is unreachable (connection refused)",
        ),
        (
            "exporting to image",
            "failed to push r.example/m:1: unexpected status from HEAD request: 401 Unauthorized",
            "auth",
            "the registry refused the push",
        ),
        (
            "[deps 4/6] RUN pip install -r x",
            "process did not complete successfully: exit code: 137",
            "memory",
            "installing the requirements ran out of memory",
        ),
        (
            "exporting to image",
            "write /var/lib/docker/x: no space left on device",
            "disk",
            "the disk is full",
        ),
        ("[code 2/2] RUN make", "something else broke\nmore", "build", "something else broke"),
    ],
)
def test_each_failure_kind_is_named(name: str, error: str, kind: str, says: str) -> None:
    steps = build(vertex("a", name, started=T0, completed=T1, error=error))
    failure = diagnose(steps)
    assert failure.kind == kind and failure.line.startswith(says), failure
    assert "\n" not in str(failure)


def test_a_step_canceled_because_another_failed_is_not_the_fault() -> None:
    steps = build(
        vertex("a", "[deps 2/6] RUN sleep 9", started=T0, completed=T1, error="context canceled"),
        vertex("b", "[deps 3/6] COPY x /x", started=T0, completed=T1, error='"/x": not found'),
    )
    assert diagnose(steps).kind == "missing file"


def test_the_step_buildx_names_at_the_end_is_the_fault() -> None:
    error = 'process "/bin/sh -c pip install -r model.txt" did not complete successfully'
    steps = build(
        vertex("a", "importing cache manifest from local:1", started=T0),
        vertex("b", PIP, started=T0),
        vertex("a", "importing cache manifest from local:1", completed=T1, error="not found"),
        log("b", "ERROR: No matching distribution found for sk==0.0.1\n"),
        vertex("b", PIP, completed=T1, error=error),
        trailer=(f"ERROR: failed to solve: {error}",),
    )
    assert diagnose(steps).kind == "requirements"


def test_the_live_view_names_pip_s_current_package_and_keeps_time() -> None:
    import io

    from omibuild.engine.progress import TtyView, pip_doing

    steps = build(
        vertex("p", PIP, started=T0),
        log("p", "Collecting scikit-learn==1.9.1 (from -r /r/model.txt (line 1))\n"),
        log("p", "  Downloading torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl (190 MB)\n"),
        log("p", "     ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 12.0/190.0 MB 40 MB/s eta 0:00:05\n"),
    )
    running = steps.steps["p"]
    assert pip_doing(running) == ": downloading torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"
    running.logs.append("Installing collected packages: numpy, torch")
    assert pip_doing(running) == ": installing"
    assert pip_doing(Step("x", "[deps 2/6] RUN python3 -m venv /opt/omi/venv", 2, "venv")) == ""
    view = TtyView(io.StringIO(), "omibuild.local/m")
    try:
        view.update(steps, [])
        drawn = io.StringIO()
        from rich.console import Console

        Console(file=drawn, width=160).print(view._render())
        assert "installing the requirements: installing" in drawn.getvalue()
    finally:
        view.close(steps)
