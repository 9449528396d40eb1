"""Plan against plan: what a new plan changes in the image an older one built, stage by stage.
Pure, like the planner. The stages are the Dockerfile's: ``deps`` (the base image and the
venv), ``model`` (one layer per model layer), ``code`` (the runtime and the hooks) and
``image`` (what only the image's config holds: labels, environment, ports, omi.json)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from omibuild import contract
from omibuild.planning.plan import Plan
from omibuild.sources.base import ModelFile
from omibuild.units import human

# labels every new plan changes; the diff says what moved underneath them instead
BASE_DIGEST_LABEL = "org.opencontainers.image.base.digest"


@dataclass(frozen=True)
class Change:
    """One named thing that moved: ``+`` added, ``-`` removed, ``~`` changed."""

    op: str
    name: str
    old: str | None = None
    new: str | None = None


@dataclass(frozen=True)
class StageDiff:
    stage: str
    rebuilt: bool
    reasons: tuple[str, ...] = ()  # why, in a few words each
    changes: tuple[Change, ...] = ()


@dataclass(frozen=True)
class PlanDiff:
    against: str  # what the plan was compared with, for people
    stages: tuple[StageDiff, ...]
    created: bool = False  # there was nothing to compare with: everything is new
    old_digest: str = ""
    new_digest: str = ""

    @property
    def changed(self) -> bool:
        return self.created or any(s.rebuilt for s in self.stages)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "changed": self.changed}


def target_tag(plan: Plan) -> str:
    """The tag a plan is compared at: its first tag that moves from build to build (latest,
    a version), not the origin tag, which names one model and so never holds an older one."""
    origin = dict(plan.origin).get("id")
    moving = [t for t in plan.tags if not origin or t != contract.origin_tag(origin)]
    return (moving or list(plan.tags))[0]


def _keyed(old: dict[str, str], new: dict[str, str]) -> list[Change]:
    out = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        out.append(Change("+" if a is None else "-" if b is None else "~", key, a, b))
    return out


def _requirement_key(line: str) -> tuple[str, str]:
    """(key, what to show) of a requirement line: the canonical name and its specifier, or
    the whole line when packaging cannot read it (a path or URL pip installs)."""
    try:
        req = Requirement(line)
    except InvalidRequirement:
        return line, line
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return canonicalize_name(req.name) + extras + marker, str(req.specifier) or "(any)"


def requirement_changes(old: Iterable[str], new: Iterable[str]) -> list[Change]:
    return _keyed(dict(map(_requirement_key, old)), dict(map(_requirement_key, new)))


def _files(old: Iterable[ModelFile], new: Iterable[ModelFile]) -> list[Change]:
    def show(f: ModelFile) -> str:
        return f"{human(f.size)}, sha256 {f.sha256[:12]}"

    return _keyed({f.path: show(f) for f in old}, {f.path: show(f) for f in new})


def _bytes_moved(old: Iterable[ModelFile], new: Iterable[ModelFile]) -> tuple[int, int]:
    """(files that differ, bytes the new ones hold) between two file sets."""
    before = {f.path: f.sha256 for f in old}
    moved = [f for f in new if before.get(f.path) != f.sha256]
    gone = len(before.keys() - {f.path for f in new})
    return len(moved) + gone, sum(f.size for f in moved)


def unrecorded(against: str, old_digest: str, new: Plan) -> PlanDiff:
    """Against an image that does not record its plan (an older omibuild built it): only its
    plan digest can be compared."""
    if old_digest == new.digest:
        return PlanDiff(against, (), old_digest=old_digest, new_digest=new.digest)
    why = "the image was built from another plan and does not record it (an older omibuild)"
    stage = StageDiff("image", True, (why,))
    return PlanDiff(against, (stage,), old_digest=old_digest, new_digest=new.digest)


def diff_plans(old: Plan | None, new: Plan, against: str) -> PlanDiff:
    if old is None:
        return PlanDiff(against, (), created=True, new_digest=new.digest)
    stages = [_deps(old, new)]
    for i in range(max(len(old.model_layers), len(new.model_layers))):
        a = old.model_layers[i].files if i < len(old.model_layers) else ()
        b = new.model_layers[i].files if i < len(new.model_layers) else ()
        count, size = _bytes_moved(a, b)
        reasons = (f"{count} model file(s) changed, {human(size)} to send",) if count else ()
        name = "model" if max(len(old.model_layers), len(new.model_layers)) == 1 else f"model {i}"
        stages.append(StageDiff(name, bool(count), reasons, tuple(_files(a, b))))
    if old.analysis_files or new.analysis_files:  # explain's background, drift's reference
        changes = _files(old.analysis_files, new.analysis_files)
        reasons = (f"{len(changes)} analysis file(s) changed",) if changes else ()
        stages.append(StageDiff("analysis", bool(changes), reasons, tuple(changes)))
    stages += [_code(old, new), _image(old, new)]
    if old.digest != new.digest and not any(s.rebuilt for s in stages):
        # something the digest covers and no stage names (the tags, the platforms): say so
        stages[-1] = StageDiff("image", True, ("the plan changed (its digest moved)",))
    return PlanDiff(against, tuple(stages), old_digest=old.digest, new_digest=new.digest)


def _deps(old: Plan, new: Plan) -> StageDiff:
    reasons, changes = [], []
    if old.base_image != new.base_image:
        reasons.append("base image changed")
        changes.append(Change("~", "base image", old.base_image, new.base_image))
    a, b = dict(old.labels).get(BASE_DIGEST_LABEL), dict(new.labels).get(BASE_DIGEST_LABEL)
    if a != b and old.base_image == new.base_image:
        reasons.append("base digest moved")
        changes.append(Change("~", "base digest", a, b))
    moved = requirement_changes(old.requirements, new.requirements)
    if moved:
        reasons.append("model requirements changed")
        changes += moved
    runtime = requirement_changes(old.runtime_requirements, new.runtime_requirements)
    if runtime:
        reasons.append("runtime requirements changed")
        changes += runtime
    packages = _keyed({p: p for p in old.system_packages}, {p: p for p in new.system_packages})
    if packages:
        reasons.append("system packages changed")
        changes += packages
    a_index, b_index = old.index_url or "PyPI", new.index_url or "PyPI"
    if a_index != b_index:
        reasons.append("index_url changed")
        changes.append(Change("~", "index_url", a_index, b_index))
    extra = _keyed({u: u for u in old.extra_index_urls}, {u: u for u in new.extra_index_urls})
    if extra:
        reasons.append("extra_index_urls changed")
        changes += [Change(c.op, "extra index", c.old, c.new) for c in extra]
    for field in ("python", "slim"):
        a, b = str(getattr(old, field)), str(getattr(new, field))
        if a != b:
            reasons.append(f"{field} changed")
            changes.append(Change("~", field, a, b))
    return StageDiff("deps", bool(reasons), tuple(reasons), tuple(changes))


def _code(old: Plan, new: Plan) -> StageDiff:
    reasons = []
    changes = _files(old.code_files, new.code_files)
    if changes:
        reasons.append(f"{len(changes)} code file(s) changed")
    if old.runtime_digest != new.runtime_digest:
        versions = (
            f"{old.omibuild_version} → {new.omibuild_version}"
            if old.omibuild_version != new.omibuild_version
            else f"its files, at version {new.omibuild_version}"
        )
        reasons.append(f"omibuild's runtime changed ({versions})")
    return StageDiff("code", bool(reasons), tuple(reasons), tuple(changes))


def _image(old: Plan, new: Plan) -> StageDiff:
    reasons, changes = [], []
    labels = _keyed(
        {k: v for k, v in old.labels if k not in contract.DERIVED_LABELS},
        {k: v for k, v in new.labels if k not in contract.DERIVED_LABELS},
    )
    if labels:
        reasons.append(f"{len(labels)} label(s) changed")
        changes += [Change(c.op, f"label {c.name}", c.old, c.new) for c in labels]
    env = _keyed(dict(old.env), dict(new.env))
    if env:
        reasons.append("environment changed")
        changes += [Change(c.op, f"env {c.name}", c.old, c.new) for c in env]
    if old.ports != new.ports:
        reasons.append("ports changed")
        changes.append(Change("~", "ports", _ports(old), _ports(new)))
    if old.user != new.user or old.uid != new.uid:
        reasons.append("user changed")
        changes.append(Change("~", "user", f"{old.user} ({old.uid})", f"{new.user} ({new.uid})"))
    if old.accelerator != new.accelerator:
        reasons.append("accelerator changed")
        changes.append(Change("~", "accelerator", old.accelerator, new.accelerator))
    if old.exports != new.exports:
        reasons.append("exports changed")
        before, after = (" ".join(p.exports) or "(none)" for p in (old, new))
        changes.append(Change("~", "export", before, after))
    if _settings(old) != _settings(new):
        reasons.append("omi.json changed")
        changes += [Change(c.op, f"omi.json {c.name}", c.old, c.new) for c in _omi_json(old, new)]
    return StageDiff("image", bool(reasons), tuple(reasons), tuple(changes))


def _ports(plan: Plan) -> str:
    return " ".join(str(p) for p in plan.ports)


def _settings(plan: Plan) -> dict[str, str]:
    """omi.json's top-level fields, each as compact JSON, but the model's files and origin:
    the model stage and the labels say those."""
    try:
        body = json.loads(plan.omi_json) if plan.omi_json else {}
    except ValueError:
        return {"omi.json": plan.omi_json}
    return {
        k: json.dumps(v, sort_keys=True) for k, v in body.items() if k not in ("model", "origin")
    }


def _omi_json(old: Plan, new: Plan) -> list[Change]:
    return _keyed(_settings(old), _settings(new))


def _said(change: Change) -> str:
    if change.op == "+":
        return f"{change.name} added ({_short(change.new)})"
    if change.op == "-":
        return f"{change.name} removed"
    return f"{change.name}: {_short(change.old)} → {_short(change.new)}"


def _short(value: str | None) -> str:
    text = "(none)" if value in (None, "") else str(value)
    return text if len(text) <= 40 else text[:37] + "…"


_WHOLE = {"model": "the model changed", "analysis": "the analysis files changed"}


def stale_reasons(diff: PlanDiff) -> list[str]:
    """What moved since a reviewed plan, in one line's worth of phrases: the model and the
    analysis files as a whole (how many files, how many bytes), the code by its files, and
    every other change by name (a requirement, a label, the user, an omi.json field)."""
    reasons: list[str] = []
    for stage in (s for s in diff.stages if s.rebuilt):
        whole = _WHOLE.get(stage.stage.split(" ")[0])
        if whole:
            reasons.append(f"{whole} ({'; '.join(stage.reasons)})")
        elif stage.stage == "code":  # the files' reason comes first when files changed
            names = ", ".join(c.name for c in stage.changes[:3])
            more = f" and {len(stage.changes) - 3} more" if len(stage.changes) > 3 else ""
            files = [f"the code changed ({names}{more})"] if stage.changes else []
            reasons += files + list(stage.reasons[len(files) :])
        elif not stage.changes:
            reasons += stage.reasons
        else:
            reasons += [_said(c) for c in stage.changes]
    return reasons
