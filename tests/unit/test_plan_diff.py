"""A plan against the plan an image was built from (planning/diff.py), the plan state label
that carries it, and the reports that show the change (reports/plans.py)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from omibuild import contract
from omibuild.planning.diff import diff_plans, stale_reasons, target_tag, unrecorded
from omibuild.planning.plan import (
    Layer,
    Plan,
    plan_from_labels,
    plan_from_state,
    state_file,
    state_label,
)
from omibuild.reports.plans import FORMATS, to_markdown
from omibuild.sources.base import ModelFile

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


@pytest.fixture
def old() -> Plan:
    """The sklearn example's golden plan: what the image was built from."""
    return Plan.from_dict(json.loads((GOLDEN / "sklearn-iris.plan.json").read_text()))


def relabel(plan: Plan, **labels: str) -> Plan:
    return replace(plan, labels=tuple(sorted({**dict(plan.labels), **labels}.items())))


def stage(diff, name):  # type: ignore[no-untyped-def]
    [found] = [s for s in diff.stages if s.stage == name]
    return found


def test_the_same_plan_is_no_change(old: Plan) -> None:
    diff = diff_plans(old, old, "the image r:latest")
    assert not diff.changed and not any(s.rebuilt for s in diff.stages)
    out = io.StringIO()
    FORMATS["text"](old, diff, out)
    assert "No changes." in out.getvalue()


def test_requirements_name_what_moved_with_versions(old: Plan) -> None:
    new = replace(
        old,
        requirements=("scikit-learn==1.9.1", "pandas>=2", *old.requirements[1:]),
        digest="sha256:new",
    )
    diff = diff_plans(
        replace(old, requirements=("scikit_learn==1.9.0", *old.requirements[1:])), new, "x"
    )
    deps = stage(diff, "deps")
    assert deps.rebuilt and deps.reasons == ("model requirements changed",)
    changes = {(c.op, c.name, c.old, c.new) for c in deps.changes}
    assert changes == {("~", "scikit-learn", "==1.9.0", "==1.9.1"), ("+", "pandas", None, ">=2")}
    assert [s.stage for s in diff.stages if s.rebuilt] == ["deps"]


def test_a_model_change_counts_files_and_bytes(old: Plan) -> None:
    [layer] = old.model_layers
    changed = ModelFile(layer.files[0].path, 5000, "f" * 64)
    new = replace(old, model_layers=(Layer((changed, *layer.files[1:])),), digest="sha256:new")
    model = stage(diff_plans(old, new, "x"), "model")
    assert model.rebuilt and model.reasons == ("1 model file(s) changed, 5.0 kB to send",)
    [c] = model.changes
    assert (c.op, c.name) == ("~", changed.path) and c.new == "5.0 kB, sha256 ffffffffffff"


def test_code_changes_name_the_files(old: Plan) -> None:
    hook = ModelFile("hooks.py", 120, "a" * 64)
    code = stage(diff_plans(old, replace(old, code_files=(hook,), digest="n"), "x"), "code")
    assert code.rebuilt and [(c.op, c.name) for c in code.changes] == [("+", "hooks.py")]


def test_a_runtime_change_says_whether_the_version_moved(old: Plan) -> None:
    same = replace(old, runtime_digest="sha256:" + "e" * 64, digest="n")
    code = stage(diff_plans(old, same, "x"), "code")
    assert code.reasons == (
        f"omibuild's runtime changed (its files, at version {old.omibuild_version})",
    )
    newer = replace(same, omibuild_version="9.9.9")
    code = stage(diff_plans(old, newer, "x"), "code")
    assert code.reasons == (f"omibuild's runtime changed ({old.omibuild_version} → 9.9.9)",)


def test_a_stale_review_is_said_by_the_same_comparison(old: Plan) -> None:
    """apply --plan's refusal reads the diff `plan` shows: the model as a whole, the code by
    its files, every other change by name."""
    [layer] = old.model_layers
    changed = ModelFile(layer.files[0].path, 5000, "f" * 64)
    hook = ModelFile("hooks.py", 120, "a" * 64)
    new = replace(
        relabel(old, team="ranking"),
        model_layers=(Layer((changed, *layer.files[1:])),),
        code_files=(hook,),
        requirements=(*old.requirements, "six==1.17.0"),
        digest="sha256:new",
    )
    assert stale_reasons(diff_plans(old, new, "the reviewed plan")) == [
        "six added (==1.17.0)",
        "the model changed (1 model file(s) changed, 5.0 kB to send)",
        "the code changed (hooks.py)",
        "label team added (ranking)",
    ]
    assert stale_reasons(diff_plans(old, old, "the reviewed plan")) == []


def test_analysis_files_are_their_own_stage(old: Plan) -> None:
    table = ModelFile("drift/reference.json", 2048, "b" * 64)
    assert "analysis" not in [s.stage for s in diff_plans(old, old, "x").stages]
    analysis = stage(
        diff_plans(old, replace(old, analysis_files=(table,), digest="n"), "x"), "analysis"
    )
    assert analysis.reasons == ("1 analysis file(s) changed",)
    assert [(c.op, c.name) for c in analysis.changes] == [("+", "drift/reference.json")]


def test_a_moved_base_digest_rebuilds_deps(old: Plan) -> None:
    key = "org.opencontainers.image.base.digest"
    new = replace(relabel(old, **{key: "sha256:" + "c" * 64}), digest="n")
    deps = stage(diff_plans(old, new, "x"), "deps")
    assert deps.reasons == ("base digest moved",)
    assert deps.changes[0].new == "sha256:" + "c" * 64


def test_labels_ports_and_settings_change_the_image_config_only(old: Plan) -> None:
    new = replace(
        relabel(old, **{"org.opencontainers.image.description": "v2 of the model"}),
        ports=(8080, 9000),
        digest="n",
    )
    diff = diff_plans(old, new, "x")
    assert [s.stage for s in diff.stages if s.rebuilt] == ["image"]
    assert stage(diff, "image").reasons == ("1 label(s) changed", "ports changed")


def test_nothing_to_compare_is_a_new_image_and_an_older_image_is_compared_by_digest(
    old: Plan,
) -> None:
    assert diff_plans(None, old, "nothing").created
    assert not unrecorded("img", old.digest, old).changed
    assert unrecorded("img", "sha256:other", old).changed


def test_the_state_file_gives_the_plan_back_and_the_label_stays_small(old: Plan) -> None:
    labels = dict(old.labels)
    assert labels[contract.PLAN_STATE_LABEL] == state_label(old)  # what make_plan wrote
    assert len(labels[contract.PLAN_STATE_LABEL]) < 150  # a pointer, whatever the model
    data = state_file(old)
    assert data == state_file(old)  # the same plan, the same bytes (gzip's mtime is 0)
    back = plan_from_state(data, labels)
    assert back is not None and back.to_dict() == replace(old, options=back.options).to_dict()
    assert not diff_plans(back, old, "x").changed
    assert plan_from_state(data + b"x", labels) is None  # not the file the label names
    # an image from before 0.2 holds the state in the label itself: still read
    legacy = {**labels, contract.PLAN_STATE_LABEL: base64.b64encode(data).decode()}
    assert plan_from_labels(legacy) is not None and plan_from_labels(labels) is None


def test_a_hostile_state_label_is_refused_not_inflated() -> None:
    bomb = base64.b64encode(gzip.compress(b"[" + b" " * (64 << 20) + b"]")).decode()
    assert len(bomb) < 200_000  # 64 MiB of JSON in a label
    assert plan_from_labels({contract.PLAN_STATE_LABEL: bomb}) is None
    assert plan_from_labels({contract.PLAN_STATE_LABEL: "not base64!"}) is None
    junk = base64.b64encode(gzip.compress(b'{"name": 1}')).decode()
    assert plan_from_labels({contract.PLAN_STATE_LABEL: junk}) is None


def test_the_target_tag_is_the_moving_one(old: Plan) -> None:
    origin = contract.origin_tag(dict(old.origin)["id"])
    assert target_tag(replace(old, tags=(origin, "latest"))) == "latest"
    assert target_tag(replace(old, tags=(origin,))) == origin


def test_golden_markdown_for_a_requirements_and_model_change(old: Plan) -> None:
    [layer] = old.model_layers
    requirements = [r.replace("==1.5.2", "==1.9.1") for r in old.requirements]
    new = replace(
        old,
        requirements=(*requirements, "pandas==2.2.3"),
        model_layers=(Layer((ModelFile(layer.files[0].path, 2048, "e" * 64), *layer.files[1:])),),
        digest="sha256:" + "d" * 64,
    )
    markdown = to_markdown(new, diff_plans(old, new, "the image r.io/iris:latest in its registry"))
    path = GOLDEN / "sklearn-iris.change.md"
    if UPDATE:
        path.write_text(markdown)
    assert markdown == path.read_text(), "run UPDATE_GOLDEN=1 make test-unit"
    head = markdown.splitlines()[0]
    assert "2 of 4 stages change (deps, model)" in head
    assert "+ pandas==2.2.3\n- scikit-learn==1.5.2\n+ scikit-learn==1.9.1\n" in markdown
    assert "<details><summary>Full plan</summary>" in markdown


def test_an_export_added_is_named_in_the_diff(old: Plan) -> None:
    new = replace(old, exports=("modelpack",), digest="sha256:" + "e" * 64)
    [image] = [s for s in diff_plans(old, new, "x").stages if s.stage == "image"]
    assert image.rebuilt and "exports changed" in image.reasons
    assert [(c.name, c.old, c.new) for c in image.changes] == [("export", "(none)", "modelpack")]
