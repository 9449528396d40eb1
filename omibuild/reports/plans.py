"""Plans for people: the rich summary, markdown for pull requests, JSON for machines."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TextIO

from omibuild.planning.plan import Plan
from omibuild.render.dockerfile import render


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def stages(plan: Plan) -> list[tuple[str, str, str]]:
    """(stage, from, what it holds) rows for the stage table."""
    model = ", ".join(
        f"layer {i}: {len(layer.files)} file(s), {_human_size(layer.size)}"
        for i, layer in enumerate(plan.model_layers)
    )
    return [
        (
            "deps",
            plan.base_image,
            f"venv: {len(plan.runtime_requirements)} runtime + "
            f"{len(plan.requirements)} model requirement(s)"
            + ("; slimmed (no debug sections, Cython sources or pip)" if plan.slim else ""),
        ),
        ("code", "deps", f"runtime + {len(plan.code_files)} code file(s), byte-compiled"),
        ("final", plan.base_image, f"user {plan.user} ({plan.uid}); model {model}"),
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


def to_markdown(plan: Plan) -> str:
    origin = dict(plan.origin)
    lines = [
        f"### omibuild plan: `{plan.name}` {plan.version}",
        "",
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
        "<details><summary>Dockerfile</summary>",
        "",
        "```dockerfile",
        render(plan).rstrip(),
        "```",
        "</details>",
        "",
    ]
    return "\n".join(lines)


def print_human(plan: Plan, stream: TextIO) -> None:
    from rich.console import Console
    from rich.syntax import Syntax
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
        table.add_row(key, value)
    console.print(table)
    console.print(
        f"[bold]cache[/bold]: {', '.join(c.exporting() for c in plan.options.caches) or 'off'}"
    )
    console.print(f"[bold]secrets[/bold] (names only): {', '.join(plan.options.secrets)}")
    console.print(Syntax(render(plan), "dockerfile", theme="ansi_dark", word_wrap=True))


# `omibuild plan --format NAME`: each writes one plan to a stream
FORMATS: dict[str, Callable[[Plan, TextIO], object]] = {
    "text": print_human,
    "json": lambda plan, stream: stream.write(to_json(plan)),
    "markdown": lambda plan, stream: stream.write(to_markdown(plan)),
}
