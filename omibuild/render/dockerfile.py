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


def _system_stage(plan: Plan) -> list[str]:
    """apt's packages, in a stage both the venv's build and the final image start from: a
    library the model loads at run time (LightGBM's libgomp1) must be in the final image, and
    a compiler must be there when pip builds. apt's lists and archives are cache mounts, so
    neither reaches a layer; the CA bundle is a secret mount, copied for apt and removed."""
    pkgs = " ".join(sh(p) for p in plan.system_packages)
    return [
        f"FROM {plan.base_image} AS system",
        "RUN --mount=type=cache,target=/var/cache/apt,sharing=locked "
        "--mount=type=cache,target=/var/lib/apt/lists,sharing=locked "
        f"{_secret_mounts(plan)} \\\n"
        "    if [ -f /run/secrets/ca ]; then cp /run/secrets/ca /tmp/ca.crt && echo "
        "'Acquire::https::CAInfo \"/tmp/ca.crt\";' > /etc/apt/apt.conf.d/99omi-ca; fi; \\\n"
        f"    apt-get update && apt-get install -y --no-install-recommends {pkgs} && "
        "rm -f /etc/apt/apt.conf.d/99omi-ca /tmp/ca.crt",
    ]


def _start(plan: Plan) -> str:
    """What the deps and final stages start from: the base, or it with apt's packages."""
    return "system" if plan.system_packages else plan.base_image


def _deps_stage(plan: Plan) -> list[str]:
    py = plan.python
    # an index on this machine's loopback is reached only from the host's network
    network = "--network=host " if plan.options.host_network else ""
    indexes = f"--index-url {sh(plan.index_url)} " if plan.index_url else ""
    indexes += "".join(f"--extra-index-url {sh(u)} " for u in plan.extra_index_urls)
    lines = [f"FROM {_start(plan)} AS deps"]
    lines += [
        f"RUN {sh(py)} -m venv {OMI}/venv",
        f"COPY --link {CTX_REQUIREMENTS}/ {OMI}/requirements/",
        f"RUN {network}--mount=type=cache,target=/root/.cache/pip,sharing=locked "
        f"{_secret_mounts(plan)} \\\n"
        f"    {_PIP_ENV}\\\n"
        f"    {OMI}/venv/bin/pip install --disable-pip-version-check --no-warn-script-location "
        f"{indexes}-r {OMI}/requirements/runtime.txt -r {OMI}/requirements/model.txt",
    ]
    if plan.slim:  # only the venv leaves this stage, so the removed bytes never reach a layer
        lines += [
            f"COPY --link {CTX_RUNTIME}/{SLIM_SCRIPT} /tmp/omi-slim.py",
            f"RUN {OMI}/venv/bin/python /tmp/omi-slim.py {OMI}/venv "
            f"{OMI}/requirements/runtime.txt {OMI}/requirements/model.txt",
        ]
    return lines


def _code_stage(plan: Plan) -> list[str]:
    lines = [
        "FROM deps AS code",
        f"COPY --link {CTX_RUNTIME}/ {OMI}/runtime/",
    ]
    targets = [f"{OMI}/runtime"]
    if plan.code_files:
        lines.append(f"COPY --link {CTX_CODE}/ {OMI}/code/")
        targets.append(f"{OMI}/code")
    else:
        lines.append(f"RUN mkdir -p {OMI}/code")
    # unchecked-hash: the .pyc files do not depend on file mtimes, so they are reproducible
    lines.append(
        f"RUN {OMI}/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash "
        + " ".join(targets)
    )
    return lines


def _env(plan: Plan) -> list[str]:
    return [f"ENV {key}={dq(value)}" for key, value in plan.env]


def _final_stage(plan: Plan) -> list[str]:
    user = sh(plan.user)
    lines = [
        f"FROM {_start(plan)}",
        f"RUN (getent group {plan.uid} || groupadd --system --gid {plan.uid} {user}) >/dev/null && "
        f"useradd --system --uid {plan.uid} --gid {plan.uid} --no-create-home "
        f"--home-dir /nonexistent --shell /usr/sbin/nologin {user}",
        f"COPY --link --from=deps {OMI}/venv {OMI}/venv",
    ]
    lines += [
        f"COPY --link --from=code {OMI}/runtime {OMI}/runtime",
        f"COPY --link --from=code {OMI}/code {OMI}/code",
    ]
    if plan.analysis_files:
        lines.append(f"COPY --link {CTX_ANALYSIS}/ {OMI}/analysis/")
    lines.append(f"COPY --link omi.json {OMI}/omi.json")
    # the plan's state: a file, so that no label or line grows with the model's file count
    lines.append(f"COPY --link {CTX_STATE} {PLAN_STATE_FILE}")
    lines += _env(plan)
    for key, value in plan.labels:
        lines.append(f"LABEL {dq(key)}={dq(value)}")
    if plan.ports:
        lines.append("EXPOSE " + " ".join(str(p) for p in plan.ports))
    lines += [
        f"USER {plan.uid}:{plan.uid}",
        "STOPSIGNAL SIGTERM",
        "ENTRYPOINT " + json_args([f"{OMI}/venv/bin/python", "-m", "omibuild.runtime"]),
        "CMD " + json_args(["serve"]),
    ]
    return lines


def render(plan: Plan) -> str:
    header = [
        f"# Generated by omibuild {plan.omibuild_version} from the plan {plan.digest}.",
        "# Do not edit: change omi.yaml and run `omibuild plan`.",
    ]
    stages = [_deps_stage(plan), _code_stage(plan), _final_stage(plan)]
    if plan.system_packages:
        stages.insert(0, _system_stage(plan))
    body = "\n\n".join("\n".join(stage) for stage in stages)
    return "\n".join(header) + "\n\n" + body + "\n"
