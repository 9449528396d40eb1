"""Plans for people: the rich summary, markdown for pull requests, JSON for machines."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TextIO

from omibuild import contract
from omibuild.planning.diff import Change, PlanDiff, target_tag
from omibuild.planning.plan import Plan
from omibuild.render.dockerfile import render
from omibuild.units import human


def _label(key: str, value: str) -> str:
    """A label's value as a reviewer reads it (the plan state is a blob for machines)."""
    if key == contract.PLAN_STATE_LABEL:
        return f"(the plan, for later diffs: {len(value)} bytes of gzip+base64)"
    return value


def stages(plan: Plan) -> list[tuple[str, str, str]]:
    """(stage, from, what it holds) rows for the stage table."""
    model = ", ".join(
        f"layer {i}: {len(layer.files)} file(s), {human(layer.size)}"
        for i, layer in enumerate(plan.model_layers)
    )
    analysis = "".join(
        f"; {f.path} ({human(f.size)})" for f in plan.analysis_files
    )  # explain's background, drift's reference: their own layer
    return [
        (
            "deps",
            plan.base_image,
            f"venv: {len(plan.runtime_requirements)} runtime + "
            f"{len(plan.requirements)} model requirement(s)"
            + ("; slimmed (no debug sections, Cython sources or pip)" if plan.slim else ""),
        ),
        ("code", "deps", f"runtime + {len(plan.code_files)} code file(s), byte-compiled"),
        ("final", plan.base_image, f"user {plan.user} ({plan.uid}); model {model}{analysis}"),
    ]


def _interfaces(plan: Plan) -> list[tuple[str, str, str]]:
    config = json.loads(plan.omi_json)
    rows = []
    for name, body in config["interfaces"].items():
        ports = str(body["port"]) + (f", grpc {body['grpc_port']}" if body.get("grpc_port") else "")
        default = " (default)" if name == config["default_interface"] else ""
        rows.append((name + default, ",".join(body["protocols"]), ports))
    return rows


def to_json(plan: Plan) -> str:
    body = plan.to_dict()
    body["dockerfile"] = render(plan)
    return json.dumps(body, indent=2, sort_keys=True) + "\n"


def state_markdown(plan: Plan) -> str:
    """The whole plan, for the folded part of a pull-request comment."""
    origin = dict(plan.origin)
    lines = [
        "| | |",
        "|---|---|",
        f"| origin | {origin['source']} `{origin['uri']}` → `{origin['id']}` |",
        f"| model digest | `{plan.model_digest}` |",
        f"| images | {', '.join(f'`{r}`' for r in plan.image_refs)} |",
        f"| base | `{plan.base_image}` |",
        f"| plan digest | `{plan.digest}` |",
        "",
        "| interface | protocols | port |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in _interfaces(plan)),
        "",
        "| stage | from | holds |",
        "|---|---|---|",
        *(f"| {a} | `{b}` | {c} |" for a, b, c in stages(plan)),
        "",
        f"Secrets (names only): {', '.join(plan.options.secrets)}. "
        f"Cache: {', '.join(c.exporting() for c in plan.options.caches) or 'off'}.",
        "",
        *_folded("Dockerfile", f"```dockerfile\n{render(plan).rstrip()}\n```"),
    ]
    return "\n".join(lines)


def _folded(summary: str, body: str) -> list[str]:
    """A section a pull-request comment shows folded, under its summary."""
    return [f"<details><summary>{summary}</summary>", "", body, "</details>", ""]


def print_human(plan: Plan, stream: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream, highlight=False)
    origin = dict(plan.origin)
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("model", f"{plan.name} {plan.version}")
    summary.add_row("origin", f"{origin['source']} {origin['uri']} → {origin['id']}")
    summary.add_row("model digest", plan.model_digest)
    summary.add_row("images", "\n".join(plan.image_refs))
    summary.add_row("base", plan.base_image)
    if plan.platforms:
        summary.add_row("platforms", ", ".join(plan.platforms))
    if plan.accelerator != "cpu":
        labels = dict(plan.labels)
        driver = labels.get(contract.CUDA_DRIVER_LABEL)
        summary.add_row(
            "accelerator",
            plan.accelerator + (f" (NVIDIA driver {driver} or newer)" if driver else ""),
        )
    summary.add_row("plan digest", plan.digest)
    console.print(summary)

    table = Table(title="interfaces")
    for col in ("interface", "protocols", "port"):
        table.add_column(col)
    for row in _interfaces(plan):
        table.add_row(*row)
    console.print(table)

    table = Table(title="stages")
    for col in ("stage", "from", "holds"):
        table.add_column(col)
    for row in stages(plan):
        table.add_row(*row)
    console.print(table)

    table = Table(title="labels")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for key, value in plan.labels:
        table.add_row(key, _label(key, value))
    console.print(table)
    console.print(
        f"[bold]cache[/bold]: {', '.join(c.exporting() for c in plan.options.caches) or 'off'}"
    )
    console.print(f"[bold]secrets[/bold] (names only): {', '.join(plan.options.secrets)}")
    console.print("[dim]the Dockerfile: omibuild plan --dockerfile[/dim]")


# -- the change a plan makes -------------------------------------------------------------------
_MARK = {"+": "+", "-": "-", "~": "~"}


def _summary(diff: PlanDiff) -> str:
    if diff.created:
        return "a new image: every stage is built"
    if not diff.changed:
        return "No changes."
    moved = [s.stage for s in diff.stages if s.rebuilt]
    return f"{len(moved)} of {len(diff.stages)} stages change ({', '.join(moved)})"


def _change_line(c: Change) -> str:
    if c.op != "~":
        return f"{c.op} {_named(c.name, c.new if c.op == '+' else c.old)}"
    if c.old and c.new and c.old[0] in "=<>!~(" and c.new[0] in "=<>!~(":  # requirements
        return f"~ {_named(c.name, c.old)} → {_named(c.name, c.new)}"
    return f"~ {c.name}: {c.old} → {c.new}"


def print_diff(plan: Plan, diff: PlanDiff, stream: TextIO) -> None:
    """What a terminal or a CI log shows: the change, stage by stage, as terraform plan does."""
    from rich.console import Console  # rich: colour on a terminal, plain text in a log
    from rich.markup import escape

    console = Console(file=stream, highlight=False, soft_wrap=True)
    target = f"{plan.repository}:{target_tag(plan)}"
    console.print(
        f"[bold]omibuild plan[/bold]: {escape(plan.name)} {escape(plan.version)} → {target}"
    )
    console.print(f"compared with: {escape(diff.against)}")
    console.print()
    if diff.created:
        console.print(f"[green]+[/green] {target} will be created")
        console.print()
        print_human(plan, stream)
        return
    if not diff.changed:
        console.print(
            f"[bold]No changes.[/bold] The image was built from this plan ({plan.digest})."
        )
        return
    colour = {"+": "green", "-": "red", "~": "yellow"}
    for stage in diff.stages:
        if not stage.rebuilt:
            console.print(f"  {stage.stage:<8} unchanged")
            continue
        console.print(
            f"[yellow]~[/yellow] [bold]{stage.stage:<8}[/bold]"
            f" {'rebuilt' if stage.stage != 'image' else 'changed'}: "
            + escape("; ".join(stage.reasons))
        )
        for c in stage.changes:
            console.print(f"    [{colour[c.op]}]{escape(_change_line(c))}[/{colour[c.op]}]")
    console.print()
    console.print(f"[bold]Plan:[/bold] {_summary(diff)}. New plan {diff.new_digest}.")


def _named(name: str, value: str | None) -> str:
    """``scikit-learn==1.9.1`` for a requirement, ``name  value`` for anything else."""
    if value == "(any)":
        return name
    if value and value[0] in "=<>!~":
        return f"{name}{value}"
    return f"{name}  {value}"


def _diff_block(title: str, changes: list[Change]) -> list[str]:
    if not changes:
        return []
    lines = [f"**{title}**", "", "```diff"]
    for c in changes:
        if c.op in "-~":
            lines.append(f"- {_named(c.name, c.old)}")
        if c.op in "+~":
            lines.append(f"+ {_named(c.name, c.new)}")
    return [*lines, "```", ""]


def _stage_changes(diff: PlanDiff, *names: str) -> list[Change]:
    return [c for s in diff.stages if s.stage.split(" ")[0] in names for c in s.changes]


def to_markdown(plan: Plan, diff: PlanDiff) -> str:
    """A pull-request comment: one line that says it all, what changes and why, the named
    requirement and file changes, and the whole plan and Dockerfile folded underneath."""
    target = f"{plan.repository}:{target_tag(plan)}"
    head = f"**omibuild plan** `{plan.name}` {plan.version} → `{target}`: "
    lines = [head + f"**{_summary(diff)}**", "", f"Compared with {diff.against}.", ""]
    if diff.changed and not diff.created:
        lines += ["| stage | | why |", "|---|---|---|"]
        for stage in diff.stages:
            verdict = ("changed" if stage.stage == "image" else "rebuilt") if stage.rebuilt else ""
            mark = f"~ {verdict}" if stage.rebuilt else "unchanged"
            lines.append(f"| {stage.stage} | {mark} | {'; '.join(stage.reasons)} |")
        lines.append("")
        deps = _stage_changes(diff, "deps")
        lines += _diff_block("Requirements and base", deps)
        lines += _diff_block("Model files", _stage_changes(diff, "model"))
        lines += _diff_block("Code", _stage_changes(diff, "code"))
        lines += _diff_block("Image config", _stage_changes(diff, "image"))
    lines += _folded("Full plan", state_markdown(plan).rstrip() + "\n")
    return "\n".join(lines)


def write_json(plan: Plan, diff: PlanDiff, stream: TextIO) -> None:
    body = json.loads(to_json(plan))
    body["changes"] = diff.to_dict()
    stream.write(json.dumps(body, indent=2, sort_keys=True) + "\n")


# `omibuild plan --format NAME`: each writes a plan and the change it makes to a stream
FORMATS: dict[str, Callable[[Plan, PlanDiff, TextIO], object]] = {
    "text": print_diff,
    "json": write_json,
    "markdown": lambda plan, diff, stream: stream.write(to_markdown(plan, diff)),
}
