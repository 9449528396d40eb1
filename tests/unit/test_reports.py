"""The reporters (omibuild/reports/) and the label checks they report: every --format the CLI
offers has a reporter, and each output is what its reader parses."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

import pytest

from omibuild import contract
from omibuild.cli import build_parser
from omibuild.conformance.check import Finding, check_labels
from omibuild.manifest.issues import Issue
from omibuild.manifest.validate import Result
from omibuild.reports import applies, caches, checks, plans, runs, validation


@pytest.mark.parametrize(
    ("verb", "formats", "args"),
    [
        ("plan", plans.FORMATS, []),
        ("validate", validation.FORMATS, []),
        ("check", checks.FORMATS, ["some/image"]),
        ("apply", applies.FORMATS, ["omi.yaml"]),
        ("cache", caches.LISTINGS, []),
        ("cache", caches.PRUNES, ["prune"]),
        ("run", runs.ANSWERS, ["some/image"]),
        ("run", runs.SERVING, ["some/image"]),
    ],
)
def test_every_format_the_cli_offers_has_a_reporter(verb: str, formats: dict, args: list) -> None:
    parser = build_parser()
    offered = set()
    for name in ("text", "json", "markdown", "junit", "table", "xml", "github", "gitlab", "csv"):
        try:
            parser.parse_args([verb, *args, "--format", name])
            offered.add(name)
        except SystemExit:
            pass
    assert offered == set(formats)


FINDINGS = [
    Finding("label ml.openmodel.port", True, "present", 0.001),
    Finding('serves <v2> & "live"', False, "GET /v2/health/live: [red]503[/red] <html>", 1.5),
]


def test_junit_is_xml_a_ci_test_view_reads() -> None:
    out = io.StringIO()
    checks.FORMATS["junit"]("img:1", FINDINGS, out)
    suite = ET.fromstring(out.getvalue().split("?>", 1)[1])
    assert (suite.tag, suite.get("tests"), suite.get("failures")) == ("testsuite", "2", "1")
    passed, failed = suite.findall("testcase")
    assert passed.find("failure") is None and passed.get("time") == "0.001"
    assert failed.get("name") == 'serves <v2> & "live"'
    failure = failed.find("failure")
    assert failure is not None and failure.get("message") == FINDINGS[1].detail


def test_the_table_shows_details_as_text_not_markup() -> None:
    out = io.StringIO()
    checks.FORMATS["text"]("img:1", FINDINGS, out)
    assert "[red]503[/red]" in out.getvalue() and "FAIL" in out.getvalue()


def test_check_json_says_whether_all_passed() -> None:
    out = io.StringIO()
    checks.FORMATS["json"]("img:1", FINDINGS, out)
    body = json.loads(out.getvalue())
    assert body["ok"] is False and [f["ok"] for f in body["findings"]] == [True, False]


def issue(file: str, line: int, severity: str = "error") -> Issue:
    return Issue(file, line, 3, "$.model", "is bad", hint="fix it", severity=severity)


def test_validation_text_and_json() -> None:
    results = [
        Result("a/omi.yaml", [issue("a/omi.yaml", 4), issue("a/omi.yaml", 9, "warning")]),
        Result("b/omi.yaml", [issue("b/omi.yaml", 2, "warning")]),
    ]
    out = io.StringIO()
    validation.FORMATS["text"](results, out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "a/omi.yaml:4:3: $.model: is bad (hint: fix it)"
    assert lines[1] == "a/omi.yaml:9:3: $.model: warning: is bad (hint: fix it)"
    assert "b/omi.yaml: valid" in lines and lines[-1] == "1 problem in 1 of 2 file(s)"
    out = io.StringIO()
    validation.FORMATS["json"](results, out)
    assert [r["valid"] for r in json.loads(out.getvalue())] == [False, True]


def labels(**over: str) -> dict[str, str]:
    good = {
        contract.INTERFACES_LABEL: '["kfserving", "modzy"]',
        contract.PROTOCOLS_LABEL: '[["v1", "v2"], ["v2"]]',
        contract.PORT_LABEL: "8080",
        contract.MODEL_NAME_LABEL: '"iris"',
        contract.ORIGIN_ID_LABEL: "sha256:ab12",
    }
    return {**good, **over}


def failing(found: list[Finding]) -> list[str]:
    return [f.requirement for f in found if not f.ok]


def test_check_labels_passes_a_good_image() -> None:
    assert failing(check_labels(labels(), ["r/iris:sha256-ab12", "r/iris:latest"])) == []


@pytest.mark.parametrize(
    ("over", "fails"),
    [
        ({contract.INTERFACES_LABEL: '["kfserving", "sagemaker"]'}, "spec interfaces"),
        ({contract.INTERFACES_LABEL: "kfserving"}, "spec interfaces"),
        ({contract.PROTOCOLS_LABEL: '[["v1", "v2"]]'}, "index-aligned"),
        ({contract.PROTOCOLS_LABEL: '[["v1", "v3"], ["v2"]]'}, "index-aligned"),
        ({contract.PORT_LABEL: '"http"'}, "is an integer"),
        ({contract.MODEL_NAME_LABEL: '""'}, "is set"),
    ],
)
def test_check_labels_names_what_is_wrong(over: dict[str, str], fails: str) -> None:
    wrong = failing(check_labels(labels(**over), ["r/iris:sha256-ab12"]))
    assert wrong and fails in wrong[0]  # (bad interfaces fail the protocols' alignment too)


def test_check_labels_wants_the_origin_tag_and_every_spec_label() -> None:
    assert failing(check_labels(labels(), ["r/iris:latest"])) == ["an origin tag is present"]
    missing = labels()
    del missing[contract.PORT_LABEL]
    assert failing(check_labels(missing, ["r/iris:sha256-ab12"])) == [
        f"label {contract.PORT_LABEL}"
    ]


def test_github_annotations_point_at_the_line_and_escape_what_github_reads() -> None:
    problem = Issue("m/omi.yaml", 7, 5, "$.image", "bad: 100%\nreally", hint="use a, b")
    out = io.StringIO()
    validation.FORMATS["github"]([Result("m/omi.yaml", [problem])], out)
    first = out.getvalue().splitlines()[0]
    assert first == (
        "::error file=m/omi.yaml,line=7,col=5,title=omibuild validate%3A $.image"
        "::bad: 100%25%0Areally (hint: use a, b)"
    )


def test_gitlab_code_quality_report() -> None:
    results = [Result("m/omi.yaml", [issue("m/omi.yaml", 4), issue("m/omi.yaml", 9, "warning")])]
    out = io.StringIO()
    validation.FORMATS["gitlab"](results, out)
    report = json.loads(out.getvalue())
    assert [
        (r["location"]["path"], r["location"]["lines"]["begin"], r["severity"]) for r in report
    ] == [
        ("m/omi.yaml", 4, "major"),
        ("m/omi.yaml", 9, "minor"),
    ]
    assert len({r["fingerprint"] for r in report}) == 2  # one per problem


def _applied(status: str, **more: object) -> applies.Applied:
    from omibuild.engine.jobs import ApplyResult, ApplyStatus

    result = ApplyResult("iris", ("omibuild.local/iris:1", "omibuild.local/iris:latest"),
                         ApplyStatus(status), seconds=2.5, total_steps=13, cached_steps=12,
                         **more)  # type: ignore[arg-type]  # fmt: skip
    return applies.Applied(result, "sha256:plan", "load", image_bytes=123_456_789)


def test_apply_s_text_says_the_outcome_and_how_to_try_it() -> None:
    out, err = io.StringIO(), io.StringIO()
    built = _applied("built", digest="sha256:img", content_bytes=60_000_000)
    applies.FORMATS["text"]([built], out, err)
    lines = out.getvalue().splitlines()
    assert lines[0] == "iris: built in 2.5s: omibuild.local/iris:1, omibuild.local/iris:latest"
    assert lines[1] == (
        "  123.5 MB in the engine, 60.0 MB content, digest sha256:img, 12/13 steps cached"
    )
    assert lines[2] == "  try it: omibuild run omibuild.local/iris:latest --predict"
    assert err.getvalue() == ""
    # containerd's store (moby before 29) reports the content as the image's size: said once
    same = _applied("built", digest="sha256:img", content_bytes=123_450_000)
    out = io.StringIO()
    applies.FORMATS["text"]([same], out, err)
    assert out.getvalue().splitlines()[1] == (
        "  123.5 MB content, digest sha256:img, 12/13 steps cached"
    )


def test_apply_s_failure_is_one_line_and_an_annotation_under_github(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    out, err = io.StringIO(), io.StringIO()
    failed = _applied("failed", error="pip could not install x", failure_kind="requirements")
    applies.FORMATS["text"]([failed], out, err)
    assert err.getvalue() == "omibuild: error: iris: pip could not install x\n"
    assert out.getvalue() == "::error title=omibuild apply iris::pip could not install x\n"
    out = io.StringIO()
    applies.FORMATS["json"]([failed], out, io.StringIO())
    [record] = json.loads(out.getvalue())
    assert (record["status"], record["failure_kind"], record["pushed"]) == (
        "failed", "requirements", [],
    )  # fmt: skip


def test_run_says_how_to_call_what_it_serves() -> None:
    record = {"image": "i", "url": "http://127.0.0.1:1", "curl": "curl -s http://127.0.0.1:1"}
    out = io.StringIO()
    runs.SERVING["text"](record | {"drift": "curl -s http://127.0.0.1:1/drift"}, out)
    assert (
        out.getvalue() == "curl -s http://127.0.0.1:1\n# drift\ncurl -s http://127.0.0.1:1/drift\n"
    )
    out = io.StringIO()
    runs.ANSWERS["text"](record | {"status": 200, "response": {"predictions": [1]}}, out)
    assert json.loads(out.getvalue()) == {"predictions": [1]}
