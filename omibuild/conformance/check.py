"""Check any image against the Open Model Interface spec 1.1 and our contracts: labels,
origin tag, non-root user, and, for every declared interface and protocol, a container that
becomes ready, answers the example input in its protocol's shape, and exits 0 on SIGTERM."""

from __future__ import annotations

import json
from concurrent import futures
from dataclasses import asdict, dataclass
from typing import Any

from omibuild import contract
from omibuild.conformance.defended import defense_findings
from omibuild.conformance.images import ImageInterfaces, free_port, interfaces_of, label_json
from omibuild.conformance.probe import (
    Endpoint,
    additivity_gap,
    container_env,
    device,
    drift_status,
    exit_reason,
    explain,
    predict,
    wait_ready,
)
from omibuild.contract import OMI_LABELS as OMI_KEYS
from omibuild.contract import SPEC_INTERFACES
from omibuild.engine.containers import Containers
from omibuild.engine.images import HOST_PLATFORM, EngineImages, readiness_timeout, same_platform
from omibuild.errors import UsageError


@dataclass
class Finding:
    requirement: str
    ok: bool
    detail: str
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_labels(labels: dict[str, str], tags: list[str]) -> list[Finding]:
    out = []
    for key in OMI_KEYS:
        out.append(
            Finding(f"label {key}", key in labels, "present" if key in labels else "missing")
        )
    raw_i, raw_p = labels.get(contract.INTERFACES_LABEL), labels.get(contract.PROTOCOLS_LABEL)
    if raw_i is not None:
        try:
            interfaces = json.loads(raw_i)
            bad = (
                [i for i in interfaces if i not in SPEC_INTERFACES]
                if isinstance(interfaces, list)
                else None
            )
            ok = isinstance(interfaces, list) and not bad
            detail = (
                f"{raw_i}"
                if ok
                else (
                    f"not spec interfaces: {bad} (extensions belong in {contract.EXTENSIONS_LABEL})"
                    if bad
                    else "not a JSON list"
                )
            )
        except ValueError as err:
            interfaces, ok, detail = None, False, f"malformed JSON {raw_i!r}: {err}"
        out.append(Finding("ml.openmodel.interfaces is a JSON list of spec interfaces", ok, detail))
        if raw_p is not None:
            try:
                protocols = json.loads(raw_p)
                aligned = (
                    isinstance(protocols, list)
                    and isinstance(interfaces, list)
                    and len(protocols) == len(interfaces)
                    and all(isinstance(p, list) and p for p in protocols)
                )
                valid = aligned and all(
                    set(p) <= set(SPEC_INTERFACES.get(i, ()))
                    for i, p in zip(interfaces, protocols, strict=True)
                )
                detail = (
                    raw_p
                    if valid
                    else (
                        f"{raw_p} is not index-aligned with {raw_i}"
                        if not aligned
                        else f"{raw_p} uses unknown protocols"
                    )
                )
                out.append(
                    Finding(
                        "ml.openmodel.protocols is index-aligned with interfaces",
                        bool(valid),
                        detail,
                    )
                )
            except ValueError as err:
                out.append(
                    Finding(
                        "ml.openmodel.protocols is index-aligned with interfaces",
                        False,
                        f"malformed JSON {raw_p!r}: {err}",
                    )
                )
    if contract.PORT_LABEL in labels:
        port = label_json(labels, contract.PORT_LABEL)
        ok = isinstance(port, int) or (isinstance(port, str) and port.isdigit())
        out.append(
            Finding(f"{contract.PORT_LABEL} is an integer", ok, repr(labels[contract.PORT_LABEL]))
        )
    if contract.MODEL_NAME_LABEL in labels:
        name = label_json(labels, contract.MODEL_NAME_LABEL)
        out.append(Finding(f"{contract.MODEL_NAME_LABEL} is set", bool(name), repr(name)))
    origin = labels.get(contract.ORIGIN_ID_LABEL)
    if origin:
        want = contract.origin_tag(origin)
        has = any(t.rsplit(":", 1)[-1] == want for t in tags)
        out.append(
            Finding(
                "an origin tag is present",
                has,
                f"tag {want[:24]}… " + ("found" if has else f"missing among {tags}"),
            )
        )
    return out


def ours(labels: dict[str, str]) -> bool:
    """An image omibuild built (it carries the plan's digest)."""
    return contract.PLAN_DIGEST_LABEL in labels


def check_runtime(
    image: str,
    info: ImageInterfaces,
    config: dict[str, Any],
    timeout: float,
    platform: str | None = None,
    gpus: str | None = None,
    robustness: int = 0,
) -> list[Finding]:
    findings: list[Finding] = []
    user = config.get("user", "")
    findings.append(
        Finding(
            "image user is non-root",
            user not in ("", "root", "0", "0:0"),
            f"USER {user or '(unset: root)'}",
        )
    )
    containers = Containers(platform, gpus)
    cuda = config["labels"].get(contract.ACCELERATOR_LABEL, "").startswith("cuda")
    # what the image should say it runs on: omibuild's say where (another's, when asked)
    wants = ("cuda:0" if gpus and cuda else "cpu") if gpus or ours(config["labels"]) else None
    pairs = [(i, p) for i, protocols in info.interfaces.items() for p in protocols or ["v1"]]
    try:
        # Each interface runs in its own container: start and probe them side by side.
        with futures.ThreadPoolExecutor(max_workers=max(1, min(4, len(pairs)))) as pool:
            probes = list(
                pool.map(
                    lambda pair: _probe(
                        containers,
                        image,
                        info,
                        *pair,
                        timeout=timeout,
                        wants=wants,
                        robustness=robustness,
                    ),
                    pairs,
                )
            )
    finally:
        containers.remove_all()
    uid = next((u for _, u in probes if u is not None), None)
    if uid is not None:
        findings.append(Finding("runs as non-root", uid != "0", f"uid {uid}"))
    for found, _ in probes:
        findings += found
    return findings


def _probe(
    containers: Any,
    image: str,
    info: ImageInterfaces,
    interface: str,
    protocol: str,
    *,
    timeout: float,
    wants: str | None = None,
    robustness: int = 0,
) -> tuple[list[Finding], str | None]:
    """Start one interface, probe it, stop it: (its findings, the uid it runs as)."""
    name = f"{interface} {protocol}"
    protocols = info.interfaces[interface] or ["v1"]
    is_default = interface == info.default and protocol == protocols[-1]
    env, port = container_env(interface, protocol, None)
    if is_default and info.port and str(info.port).strip('"').isdigit():
        # As a platform would: trust the port label, set only INTERFACE/PROTOCOL.
        env = {"INTERFACE": interface, "PROTOCOL": protocol}
        port = int(str(info.port).strip('"'))
    host_port = free_port()
    target = Endpoint(interface, protocol, info.model_name or "model", host_port)
    cid = containers.start(image, env, {port: host_port})
    seconds = wait_ready(target, timeout, alive=lambda: containers.running(cid))
    if seconds is None:
        code = None if containers.running(cid) else containers.exit_code(cid)
        logs = containers.logs(cid, tail=20)
        reason = exit_reason(logs)
        if code is not None:
            why = f"container exited with code {code}" + (f": {reason}" if reason else "")
        else:
            why = f"not ready within {timeout:.0f}s on port {port}" + (
                " (the ml.openmodel.port label)" if is_default else ""
            )
        if not reason:
            why += "; log: " + logs.strip().splitlines()[-1][-300:] if logs.strip() else ""
        containers.stop(cid, timeout=2)
        return [Finding(f"{name}: becomes ready", False, why)], None
    findings = [Finding(f"{name}: becomes ready", True, f"on port {port}", seconds)]
    uid = containers.exec(cid, ["id", "-u"]).strip()
    omi = _omi_json(containers, cid)
    example = omi.get("example")
    if example is not None:
        findings.append(_predict_finding(name, target, example, predict))
        if omi.get("explain"):
            findings += _explain_findings(name, target, example)
    if wants and interface == "kfserving" and protocol == "v2":
        said = device(target)
        seen = f"{said or 'no parameters.device in its metadata'}; expected {wants}"
        findings.append(Finding(f"{name}: reports the device it runs on", said == wants, seen))
    if omi.get("drift") and not target.grpc:
        findings.append(_drift_finding(name, target))
    if omi.get("defense") and interface == "kfserving":
        found = defense_findings(name, target, containers, cid, omi, robustness)
        findings += [Finding(what, ok, detail) for what, ok, detail in found]
    if target.grpc:
        findings.append(_reflection_finding(target))
    code = containers.stop(cid, timeout=15)
    findings.append(Finding(f"{name}: exits 0 on SIGTERM", code == 0, f"exit code {code}"))
    return findings, uid


def _omi_json(containers: Any, cid: str) -> dict[str, Any]:
    try:
        config = json.loads(containers.exec(cid, ["cat", "/opt/omi/omi.json"]))
    except Exception:  # not an omibuild image, or no omi.json: no example to send
        return {}
    return config if isinstance(config, dict) else {}


ADDITIVITY_TOLERANCE = 1e-6


def _explain_findings(name: str, target: Any, example: Any) -> list[Finding]:
    """The baked explainer answers the example, and (SHAP) its attributions add up."""
    try:
        answer = explain(target, example)
    except Exception as exc:
        return [
            Finding(f"{name}: explains the example input", False, f"{type(exc).__name__}: {exc}")
        ]
    if answer is None:
        return []  # this interface has no place for explanations
    status, document = answer
    ok = status == 200 and isinstance(document, dict) and "explanations" in document
    found = [
        Finding(
            f"{name}: explains the example input",
            ok,
            f"HTTP {status}: {json.dumps(document)[:120]}",
        )
    ]
    if ok and str(document.get("method", "")).startswith("shap"):
        gap = additivity_gap(document)
        found.append(
            Finding(
                f"{name}: attributions sum to the output minus the expected value",
                gap is not None and gap <= ADDITIVITY_TOLERANCE,
                f"largest gap {gap:.2e}" if gap is not None else "no attributions",
            )
        )
    return found


def _drift_finding(name: str, target: Any) -> Finding:
    try:
        status, body = drift_status(target)
    except Exception as exc:
        return Finding(f"{name}: serves the drift status", False, f"{type(exc).__name__}: {exc}")
    ok = status == 200 and isinstance(body, dict) and "windows" in body
    detail = (
        f"{len(body.get('features', []))} features, {body['windows']} windows of "
        f"{body.get('window')} rows"
        if ok
        else f"HTTP {status}: {str(body)[:120]}"
    )
    return Finding(f"{name}: serves the drift status", ok, detail)


def _predict_finding(name: str, target: Any, example: Any, predict: Any) -> Finding:
    try:
        status, response = predict(target, example)
    except Exception as exc:
        return Finding(f"{name}: answers the example input", False, f"{type(exc).__name__}: {exc}")
    if target.interface == "sagemaker":  # the inference toolkit's JSON: the predictions
        shape_ok = isinstance(response, list)
    else:
        shape_ok = isinstance(response, dict) and (
            "outputs" in response
            if target.interface == "kfserving" and target.protocol == "v2"
            else "predictions" in response
        )
    return Finding(
        f"{name}: answers the example input",
        status == 200 and shape_ok,
        f"HTTP {status}: {json.dumps(response)[:120]}",
    )


def _reflection_finding(target: Any) -> Finding:
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    try:
        with grpc.insecure_channel(f"{target.host}:{target.host_port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            requests = iter(
                [
                    reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="ModzyModel"),
                ]
            )
            responses = list(stub.ServerReflectionInfo(requests, timeout=5))
        services = [s.name for s in responses[0].list_services_response.service]
        from google.protobuf import descriptor_pb2

        methods: set[str] = set()
        for blob in responses[1].file_descriptor_response.file_descriptor_proto:
            fdp = descriptor_pb2.FileDescriptorProto.FromString(blob)
            for svc in fdp.service:
                if svc.name == "ModzyModel":
                    methods |= {m.name for m in svc.method}
    except Exception as exc:
        return Finding(
            "modzy v2: reflection lists ModzyModel", False, f"{type(exc).__name__}: {exc}"
        )
    ok = "ModzyModel" in services and {"Run", "Status", "Shutdown"} <= methods
    return Finding(
        "modzy v2: reflection lists ModzyModel with Run, Status, Shutdown",
        ok,
        f"services {services}, methods {sorted(methods)}",
    )


PYTHON = "/opt/omi/venv/bin/python"  # the venv's interpreter, a link to the base's
# ELF e_machine values (the System V ABI's registry) as OCI names the architecture
_MACHINES = {0x3E: "amd64", 0xB7: "arm64", 0x03: "386", 0x28: "arm", 0x15: "ppc64le",
             0x16: "s390x", 0xF3: "riscv64"}  # fmt: skip


def elf_architecture(head: bytes) -> str | None:
    """The architecture an ELF file is built for, from its header; None if not ELF."""
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _MACHINES.get(machine, f"ELF machine {machine:#x}")


def binary_finding(platform: str, path: str, head: bytes) -> Finding:
    """The image's binaries are built for the platform its config declares: an image of one
    platform made from another's base runs nothing, or runs under emulation unseen."""
    declared = [*platform.split("/"), "", ""][1]
    built = elf_architecture(head)
    what = f"its binaries are built for the image's platform ({platform or 'unknown'})"
    if built is None:
        return Finding(what, False, f"{path} is not an ELF binary")
    return Finding(what, built == declared, f"{path}: {built}")


def _platforms(image: str, config: dict[str, Any], asked: str | None) -> tuple[str, list[str]]:
    """(the platform to run, every platform the image offers). An index's are the engine's
    record of it (containerd's); `docker image inspect` names one of them, not always the
    one `docker run` starts. Without ``asked``, an image of several platforms runs as the
    host's where it offers it."""
    offered = list(EngineImages().image_platforms(image) or ()) or [config["platform"]]
    if asked:
        if not any(same_platform(asked, o) for o in offered):
            raise UsageError(
                f"{image} offers {', '.join(offered)}, not {asked}",
                hint=f"pick one of them, or pull it: docker pull --platform {asked} {image}",
            )
        return asked, offered
    if len(offered) == 1:
        return offered[0], offered
    return next((o for o in offered if same_platform(HOST_PLATFORM, o)), offered[0]), offered


def _binaries(image: str, platform: str, several: bool) -> Finding | None:
    """The interpreter's ELF machine (or any image's shell) against ``platform``. An image of
    several platforms has each read: one not in the engine is pulled for it, and one that
    cannot be read fails."""
    containers = Containers(platform)
    for path in (PYTHON, "/bin/sh"):  # omibuild's interpreter, else any image's shell
        head = containers.file_head(image, path)
        if head is not None:
            return binary_finding(platform, path, head)
    if not several:
        return None
    return Finding(
        f"its binaries are built for the image's platform ({platform})",
        False,
        f"neither {PYTHON} nor /bin/sh could be read (docker pull --platform {platform} {image})",
    )


def check_image(
    image: str,
    timeout: float | None,
    platform: str | None = None,
    gpus: str | None = None,
    robustness: int = 0,
) -> tuple[list[Finding], bool]:
    """(findings, whether the image exists). The containers run as ``platform`` (another
    architecture's under emulation), by default the host's; the binaries of every platform
    the image offers are read."""
    config = Containers().image_config(image)
    if config is None:
        return [], False
    labels = config["labels"]
    findings = check_labels(labels, config["repo_tags"])
    run_as, offered = _platforms(image, config, platform)
    for each in offered:
        found = _binaries(image, each, len(offered) > 1)
        if found is not None:
            findings.append(found)
    info = interfaces_of(labels)
    if not info.interfaces:
        findings.append(
            Finding(
                "declares at least one interface", False, "no usable ml.openmodel.interfaces label"
            )
        )
        return findings, True
    asked = run_as if (platform or len(offered) > 1) else None
    wait = readiness_timeout(timeout, run_as)
    findings += check_runtime(image, info, config, wait, asked, gpus, robustness)
    return findings, True
