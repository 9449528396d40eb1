"""omibuild deploy --target kubernetes, as a stranger meets it: a model trained in a fresh git
repository, omibuild from its wheel, `apply`, then `deploy`. The image is started exactly as
the Deployment says (its env, port, user, read-only root, no capabilities, a /tmp of its
own) and probed as the kubelet would: the startup probe until it answers, then readiness and
liveness; on SIGTERM it is done within the grace period the manifest gives."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.integration.strangers import new_stranger, training_venv
from tests.integration.test_install import IRIS_JOBLIB, SKLEARN

pytestmark = pytest.mark.integration


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status)
    except OSError:
        return 0


def test_the_container_runs_as_the_kubernetes_manifest_says(
    tmp_path: Path, unique: str, engine: None, image_cleanup: list[str]
) -> None:
    name = f"deploy-{unique}"
    s = new_stranger(tmp_path, name, training_venv("sklearn", SKLEARN))
    s.train(IRIS_JOBLIB)
    s.ok("init")
    s.ok("apply", "--progress", "quiet")
    image_cleanup.append(f"omibuild.local/{name}:latest")
    deployment, service = yaml.safe_load_all(s.ok("deploy", "--target", "kubernetes"))
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    pod = deployment["spec"]["template"]["spec"]
    [c] = pod["containers"]
    security = c["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    [http] = [p["containerPort"] for p in c["ports"] if p["name"] == "http"]
    run = ["docker", "run", "-d", "--name", name, "--read-only",
           "--user", f"{security['runAsUser']}:{security['runAsGroup']}", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges", "--tmpfs", "/tmp",
           "-p", f"127.0.0.1::{http}"]  # fmt: skip
    for e in c["env"]:
        run += ["-e", f"{e['name']}={e['value']}"]
    started = subprocess.run([*run, c["image"]], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        port = subprocess.run(["docker", "port", name, str(http)], capture_output=True,
                              text=True, check=True).stdout.split(":")[-1].strip()  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        startup = c["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        deadline = time.monotonic() + budget
        while _get(base + startup["httpGet"]["path"]) != 200:
            assert time.monotonic() < deadline, "the startup probe never passed"
            time.sleep(startup["periodSeconds"])
        for probe in ("readinessProbe", "livenessProbe"):
            assert _get(base + c[probe]["httpGet"]["path"]) == 200, probe
        grace = pod["terminationGracePeriodSeconds"]
        begun = time.monotonic()
        stopped = subprocess.run(["docker", "stop", "-t", str(grace), name],
                                 capture_output=True, timeout=grace + 30)  # fmt: skip
        assert stopped.returncode == 0 and time.monotonic() - begun < grace
        inspect = ["docker", "inspect", "--format", "{{.State.ExitCode}}", name]
        code = subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.strip()
        assert code == "0", code  # the drain finished: no SIGKILL
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
