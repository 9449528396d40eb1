"""omibuild run IMAGE|omi.yaml — start an image locally, wait until ready, show how to call
it; --predict FILE sends one request (--predict alone: the example the image was built with),
prints the answer and stops the container."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from omibuild import contract
from omibuild.conformance.bodies import Body, parse, read_body
from omibuild.conformance.images import free_port, interfaces_of
from omibuild.conformance.probe import (
    Endpoint,
    container_env,
    curl_example,
    exit_reason,
    explain,
    native_interface,
    predict,
    wait_ready,
)
from omibuild.engine.containers import Containers
from omibuild.engine.images import readiness_timeout
from omibuild.errors import EXIT_INVALID, EXIT_OK, BuildError, OmiError, UsageError
from omibuild.planning.pipeline import prepare
from omibuild.planning.plan import OMI
from omibuild.progress import Progress
from omibuild.reports.runs import ANSWERS, SERVING
from omibuild.store.cache import Cache


def _image_and_example(target: str) -> tuple[str, Any]:
    path = Path(target)
    if path.suffix in (".yaml", ".yml"):  # a manifest (a missing one is its own error)
        offline = path.with_name("omi.lock").exists()
        # only the image's name is wanted here: no note about pinning the base
        prepared = prepare(path, Cache(), Progress(), offline=offline, notes=False)
        return prepared.plan.image_refs[0], prepared.manifest.example
    return target, None


def _carries(labels: dict[str, str], target: Endpoint, example: Any) -> dict[str, str]:
    """How to reach the explainer and drift detector the image was built with."""
    out = {}
    if (
        labels.get(contract.EXPLAIN_LABEL)
        and example is not None
        and target.interface == "kfserving"
    ):
        url = f"{target.base}/v1/models/{target.model_name}:explain"
        body = json.dumps({"instances": example})
        out["explain"] = f"curl -s -X POST -H 'Content-Type: application/json' {url} -d '{body}'"
    if labels.get(contract.DRIFT_LABEL) and not target.grpc:
        out["drift"] = f"curl -s {target.base}/drift"
    return out


def _baked_example(containers: Containers, cid: str, image: str) -> Body:
    """The example omi.json carries, read from the running container: what `--predict` alone
    sends."""
    text = containers.read_text(cid, f"{OMI}/omi.json")
    try:
        example = json.loads(text or "{}").get("example")
    except (ValueError, AttributeError):  # not omi.json as the runtime writes it
        example = None
    if example is None:
        raise UsageError(
            f"{image} holds no example input to send",
            hint="pass a request: --predict request.json",
        )
    return parse({"instances": example})


def _not_ready(containers: Any, cid: str, image: str, what: str, timeout: float) -> OmiError:
    """One line: why the container stopped (the runtime says), or that it never got ready."""
    logs = containers.logs(cid, tail=50)
    if containers.running(cid):
        return BuildError(
            f"{image} did not become ready within {timeout:.0f}s ({what})",
            hint="see `docker logs` of the container, or raise --timeout",
        )
    code = containers.exit_code(cid)
    reason = exit_reason(logs) or (logs.strip().splitlines() or ["no log"])[-1][-300:]
    return BuildError(f"{image} stopped (exit code {code}) before it was ready: {reason}")


def run(args: argparse.Namespace) -> int:
    if args.predict and args.explain:
        raise UsageError("--predict and --explain each send one request: pass one of them")
    asked = args.predict or args.explain
    request = read_body(asked) if asked else None  # before anything starts
    image, example = _image_and_example(args.target)
    baked = args.predict == ""  # --predict alone: the example, from omi.yaml or the image
    if baked and example is not None:
        request = parse({"instances": example})
    containers = Containers(args.platform, args.gpus)
    timeout = readiness_timeout(args.timeout, args.platform)
    config = containers.image_config(image)
    if config is None:
        raise UsageError(
            f"no image {image} in the local engine",
            hint="build it with `omibuild apply`, or pull it",
        )
    info = interfaces_of(config["labels"])
    # a body in one interface's own shape (V2 tensors, MLflow's dataframe_split, SageMaker
    # CSV) goes to that interface as it is, where the image has it
    native = native_interface(request, info.interfaces) if args.predict and request else None
    interface = args.interface or native or info.default
    if interface not in info.interfaces:
        raise UsageError(
            f"{image} has no interface {interface!r}; it has: "
            f"{', '.join(info.interfaces) or 'none (no OMI labels)'}"
        )
    protocol = info.protocol_for(
        interface,
        args.protocol
        or ("v2" if request and request.kind == "v2" and interface == "kfserving" else None),
    )
    env, port = container_env(interface, protocol, info.model_name)
    host_port = args.port or free_port()
    target = Endpoint(interface, protocol, info.model_name or "model", host_port)
    try:
        cid = containers.start(image, env, {port: host_port})
        seconds = wait_ready(target, timeout, alive=lambda: containers.running(cid))
        if seconds is None:
            raise _not_ready(containers, cid, image, f"{interface} {protocol}", timeout)
        print(
            f"{image}: {interface} {protocol} ready in {seconds:.1f}s on {target.base}",
            file=sys.stderr,
        )
        record: dict[str, Any] = {
            "image": image,
            "image_id": config.get("id"),
            "interface": interface,
            "protocol": protocol,
            "url": target.base,
            "ready_seconds": round(seconds, 3),
        }
        if request is not None and args.explain:
            answer = explain(target, request.rows)
            if answer is None:
                raise UsageError(
                    f"{interface} has no place for explanations: use --interface kfserving or modzy"
                )
            status, response = answer
            record |= {"status": status, "response": response}
            ANSWERS[args.format](record, sys.stdout)
            return EXIT_OK if status < 400 else EXIT_INVALID
        if baked and request is None:
            request = _baked_example(containers, cid, image)
        if request is not None:
            status, response = predict(target, request)
            record |= {"status": status, "response": response}
            ANSWERS[args.format](record, sys.stdout)
            return EXIT_OK if status < 400 else EXIT_INVALID
        curl = curl_example(target, example) if example is not None else None
        carries = _carries(config["labels"], target, example)
        SERVING[args.format](record | {"curl": curl} | carries, sys.stdout)
        print("press Ctrl-C to stop", file=sys.stderr)
        threading.Event().wait()
        return EXIT_OK
    finally:
        containers.remove_all()
