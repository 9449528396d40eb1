"""Render a Plan as a multi-stage Dockerfile (pure).

Stages: ``deps`` builds the venv (pip cache mount; the CA bundle and pip configuration
arrive as secret mounts for that step only) and slims it (runtime/slim.py), ``code``
byte-compiles the runtime and the user's code, and the final image assembles /opt/omi with
``COPY --link``. The model is not in this Dockerfile: omibuild makes the model layers itself
and appends them to what BuildKit built (engine/oci.py), and the dry prediction on omi.yaml's
example runs on that assembled image (engine/apply.py)."""

from __future__ import annotations

from omibuild.contract import PLAN_STATE_FILE
from omibuild.planning.plan import OMI, Plan
from omibuild.render.quoting import dq, json_args, sh

# The build context laid out by the stager (engine/context.py) for this Dockerfile. The
# model files are staged in it too, for the layers omibuild makes, but .dockerignore keeps
# them out of what BuildKit reads.
CTX_MODEL = "model"
CTX_RUNTIME = "runtime"
CTX_CODE = "code"
CTX_REQUIREMENTS = "requirements"
CTX_ANALYSIS = "analysis"  # explain's background and drift's reference (planning/analysis.py)
CTX_STATE = "plan-state.json.gz"  # the plan's state (planning/plan.py state_file)
SLIM_SCRIPT = "omibuild/runtime/slim.py"  # in the runtime tree of the context

_PIP_ENV = (
    "if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca "
    "SSL_CERT_FILE=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca; fi; "
    "if [ -f /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi; "
)


def _secret_mounts(plan: Plan) -> str:
    return " ".join(f"--mount=type=secret,id={s},required=false" for s in plan.options.secrets)


# One Dockerfile line and, for a line BuildKit runs as a step of its own, the step's id: the
# build view names a step by the id its line carries (engine/progress.py), never by its text.
Line = tuple[str, str | None]


def _system_stage(plan: Plan) -> list[Line]:
    """apt's packages, in a stage both the venv's build and the final image start from: a
    library the model loads at run time (LightGBM's libgomp1) must be in the final image, and
    a compiler must be there when pip builds. apt's lists and archives are cache mounts, so
    neither reaches a layer; the CA bundle is a secret mount, copied for apt and removed."""
    pkgs = " ".join(sh(p) for p in plan.system_packages)
    return [
        (f"FROM {plan.base_image} AS system", "base"),
        (
            "RUN --mount=type=cache,target=/var/cache/apt,sharing=locked "
            "--mount=type=cache,target=/var/lib/apt/lists,sharing=locked "
            f"{_secret_mounts(plan)} \\\n"
            "    if [ -f /run/secrets/ca ]; then cp /run/secrets/ca /tmp/ca.crt && echo "
            "'Acquire::https::CAInfo \"/tmp/ca.crt\";' > /etc/apt/apt.conf.d/99omi-ca; fi; \\\n"
            f"    apt-get update && apt-get install -y --no-install-recommends {pkgs} && "
            "rm -f /etc/apt/apt.conf.d/99omi-ca /tmp/ca.crt",
            "system-packages",
        ),
    ]


PIP_REPORT = "/tmp/omi-pip-report.json"  # pip's --report, in the deps stage only


def _start(plan: Plan) -> str:
    """What the deps and final stages start from: the base, or it with apt's packages."""
    return "system" if plan.system_packages else plan.base_image


def _from(plan: Plan, name: str) -> Line:
    """A stage's FROM: a step of its own (BuildKit's 1/N) only when it starts from an image."""
    return (f"FROM {_start(plan)} AS {name}", None if plan.system_packages else "base")


def _deps_stage(plan: Plan) -> list[Line]:
    py = plan.python
    # an index on this machine's loopback is reached only from the host's network
    network = "--network=host " if plan.options.host_network else ""
    indexes = f"--index-url {sh(plan.index_url)} " if plan.index_url else ""
    indexes += "".join(f"--extra-index-url {sh(u)} " for u in plan.extra_index_urls)
    lines = [
        _from(plan, "deps"),
        (f"RUN {sh(py)} -m venv {OMI}/venv", "venv"),
        (f"COPY --link {CTX_REQUIREMENTS}/ {OMI}/requirements/", "requirements"),
        (
            f"RUN {network}--mount=type=cache,target=/root/.cache/pip,sharing=locked "
            f"{_secret_mounts(plan)} \\\n"
            f"    {_PIP_ENV}\\\n"
            f"    {OMI}/venv/bin/pip install --disable-pip-version-check "
            f"--no-warn-script-location "
            f"--report {PIP_REPORT} "
            f"{indexes}-r {OMI}/requirements/runtime.txt -r {OMI}/requirements/model.txt",
            "install",
        ),
    ]
    # only the venv leaves this stage, so the removed bytes never reach a layer; the script
    # also records what the venv holds, with pip's archive hashes, for the SBOM (attest.py)
    no_slim = "" if plan.slim else "--no-slim "
    lines += [
        (f"COPY --link {CTX_RUNTIME}/{SLIM_SCRIPT} /tmp/omi-slim.py", "slim-script"),
        (
            f"RUN {OMI}/venv/bin/python /tmp/omi-slim.py {no_slim}--pip-report {PIP_REPORT} "
            f"{OMI}/venv {OMI}/requirements/runtime.txt {OMI}/requirements/model.txt",
            "slim" if plan.slim else "record",
        ),
    ]
    return lines


def _code_stage(plan: Plan) -> list[Line]:
    lines: list[Line] = [
        ("FROM deps AS code", None),
        (f"COPY --link {CTX_RUNTIME}/ {OMI}/runtime/", "runtime"),
    ]
    targets = [f"{OMI}/runtime"]
    if plan.code_files:
        lines.append((f"COPY --link {CTX_CODE}/ {OMI}/code/", "code"))
        targets.append(f"{OMI}/code")
    else:
        lines.append((f"RUN mkdir -p {OMI}/code", "code-directory"))
    # unchecked-hash: the .pyc files do not depend on file mtimes, so they are reproducible
    compile_ = f"RUN {OMI}/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash "
    lines.append((compile_ + " ".join(targets), "compile"))
    return lines


def _config(plan: Plan) -> list[Line]:
    """What only the image's config holds: no step of BuildKit's."""
    lines = [f"ENV {key}={dq(value)}" for key, value in plan.env]
    lines += [f"LABEL {dq(key)}={dq(value)}" for key, value in plan.labels]
    if plan.ports:
        lines.append("EXPOSE " + " ".join(str(p) for p in plan.ports))
    lines += [
        f"USER {plan.uid}:{plan.uid}",
        "STOPSIGNAL SIGTERM",
        "ENTRYPOINT " + json_args([f"{OMI}/venv/bin/python", "-m", "omibuild.runtime"]),
        "CMD " + json_args(["serve"]),
    ]
    return [(line, None) for line in lines]


def _final_stage(plan: Plan) -> list[Line]:
    user = sh(plan.user)
    lines: list[Line] = [
        (f"FROM {_start(plan)}", None if plan.system_packages else "base"),
        (
            f"RUN (getent group {plan.uid} || groupadd --system --gid {plan.uid} {user}) "
            f">/dev/null && useradd --system --uid {plan.uid} --gid {plan.uid} "
            f"--no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {user}",
            "user",
        ),
        (f"COPY --link --from=deps {OMI}/venv {OMI}/venv", "copy-venv"),
        (f"COPY --link --from=code {OMI}/runtime {OMI}/runtime", "copy-runtime"),
        (f"COPY --link --from=code {OMI}/code {OMI}/code", "copy-code"),
    ]
    if plan.analysis_files:
        lines.append((f"COPY --link {CTX_ANALYSIS}/ {OMI}/analysis/", "analysis"))
    lines.append((f"COPY --link omi.json {OMI}/omi.json", "omi-json"))
    # the plan's state: a file, so that no label or line grows with the model's file count
    lines.append((f"COPY --link {CTX_STATE} {PLAN_STATE_FILE}", "plan-state"))
    return lines + _config(plan)


def _stages(plan: Plan) -> list[list[Line]]:
    stages = [_deps_stage(plan), _code_stage(plan), _final_stage(plan)]
    if plan.system_packages:
        stages.insert(0, _system_stage(plan))
    return stages


def render(plan: Plan) -> str:
    header = [
        f"# Generated by omibuild {plan.omibuild_version} from the plan {plan.digest}.",
        "# Do not edit: change omi.yaml and run `omibuild plan`.",
    ]
    body = "\n\n".join("\n".join(line for line, _ in stage) for stage in _stages(plan))
    return "\n".join(header) + "\n\n" + body + "\n"


def step_ids(plan: Plan) -> tuple[tuple[str, str], ...]:
    """Each BuildKit step of the rendered Dockerfile by the name BuildKit gives it, its
    stage and number ("deps 3": BuildKit's "[deps 3/6]"), with the plan's id for it. BuildKit
    numbers the lines that run (a FROM an image, RUN, COPY) and names an unnamed stage by
    its index ("stage-3")."""
    out = []
    for index, stage in enumerate(_stages(plan)):
        first = stage[0][0]
        name = first.rsplit(" AS ", 1)[1] if " AS " in first else f"stage-{index}"
        steps = [step for _, step in stage if step is not None]
        out += [(f"{name} {n}", step) for n, step in enumerate(steps, 1)]
    return tuple(out)
