"""What a serving platform needs to run an image omibuild built, from its plan alone:
`omibuild deploy --target kubernetes|kserve|sagemaker|vertex`. Each target picks the
interface it speaks by the OMI variables (INTERFACE, PROTOCOL, HTTP_PORT, MODEL_NAME) and
probes the routes that interface answers; the image runs as its own non-root user with a
read-only root file system, and gets the time the runtime's drain needs on SIGTERM.

Pure: a plan and the image reference in, documents out (tests validate them against the
platforms' own schemas: Kubernetes', KServe's CRD, botocore's SageMaker model)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from omibuild.planning.plan import Plan

DRAIN_SECONDS = 30  # the runtime's graceful shutdown (runtime/server.py GRACE_SECONDS)
_GRACE = DRAIN_SECONDS + 15  # and the time to stop taking traffic first
KSERVE_MODELS = "/mnt/models"  # where KServe links a storageUri's files into the predictor


@dataclass(frozen=True)
class Served:
    """How one interface is served: its port, probes and the variables that pick it."""

    interface: str
    protocol: str
    port: int
    live: str | None  # an HTTP path, or None for the gRPC health service
    ready: str | None
    grpc_port: int | None = None


def served(plan: Plan, interface: str | None = None) -> Served:
    """``interface`` (default: the image's own default) as the plan's omi.json declares it."""
    doc = json.loads(plan.omi_json)
    name = interface or doc["default_interface"]
    declared = doc["interfaces"].get(name)
    if declared is None:
        raise ValueError(
            f"the image serves {', '.join(sorted(doc['interfaces']))}, not {name}: add {name} "
            "to runtimes.interfaces in omi.yaml and apply"
        )
    protocols = declared.get("protocols") or ["v1"]
    protocol = protocols[-1]
    port = int(declared["port"])
    model = doc["name"]
    if name == "kfserving" and protocol == "v2":
        return Served(name, protocol, port, "/v2/health/live", "/v2/health/ready",
                      declared.get("grpc_port"))  # fmt: skip
    if name == "kfserving":
        return Served(name, protocol, port, "/", f"/v1/models/{model}")
    if name == "modzy" and protocol == "v2":  # gRPC only: the kubelet asks grpc.health.v1
        return Served(name, protocol, port, None, None)
    paths = {"modzy": "/status", "mlflow": "/ping", "sagemaker": "/ping", "vertex": "/health"}
    return Served(name, protocol, port, paths[name], paths[name])


def _env(plan: Plan, how: Served) -> dict[str, str]:
    return {
        "INTERFACE": how.interface,
        "PROTOCOL": how.protocol,
        "HTTP_PORT": str(how.port),
        "MODEL_NAME": json.loads(plan.omi_json)["name"],
    }


def _k8s_name(plan: Plan) -> str:
    """A DNS-1035 label: lower case, digits and '-', a letter first, at most 63."""
    name = re.sub(r"[^a-z0-9-]+", "-", plan.name.lower()).strip("-")
    name = name if name[:1].isalpha() else f"m-{name}"
    return name[:63].rstrip("-") or "model"


def _probe(how: Served, path: str | None, **timing: int) -> dict[str, Any]:
    if path is None:
        return {"grpc": {"port": how.port}, **timing}
    return {"httpGet": {"path": path, "port": how.port}, **timing}


def _container(plan: Plan, image: str, how: Served, env: dict[str, str]) -> dict[str, Any]:
    ports = [{"name": "http" if how.live else "grpc", "containerPort": how.port}]
    if how.grpc_port:
        ports.append({"name": "grpc", "containerPort": int(how.grpc_port)})
    return {
        "name": "model",
        "image": image,
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": ports,
        "startupProbe": _probe(how, how.ready, periodSeconds=2, failureThreshold=150),
        "livenessProbe": _probe(how, how.live, periodSeconds=10, failureThreshold=3),
        "readinessProbe": _probe(how, how.ready, periodSeconds=5, failureThreshold=2),
        "resources": {
            "requests": {"cpu": "500m", "memory": "512Mi"},
            "limits": {"memory": "2Gi"},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": plan.uid,
            "runAsGroup": plan.uid,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # a writable /tmp: the runtime writes nothing else (tested with --read-only)
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def kubernetes(plan: Plan, image: str, interface: str | None = None) -> list[dict[str, Any]]:
    """A Deployment and a Service (a ClusterIP in front of its ports)."""
    how = served(plan, interface)
    name = _k8s_name(plan)
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/version": plan.version[:63]}
    container = _container(plan, image, how, _env(plan, how))
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "terminationGracePeriodSeconds": _GRACE,
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "fsGroup": plan.uid},
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [
                {"name": p["name"], "port": p["containerPort"], "targetPort": p["containerPort"]}
                for p in container["ports"]
            ],
        },
    }
    return [deployment, service]


def kserve(plan: Plan, image: str, modelcar: str | None = None) -> list[dict[str, Any]]:
    """An InferenceService running the OMI image as a custom predictor, speaking the Open
    Inference Protocol (kfserving v2). With ``modelcar`` (the ``<tag>-modelcar`` export),
    KServe links its files into the predictor at /mnt/models and the runtime reads them
    there."""
    how = served(plan, "kfserving")
    how = Served(how.interface, "v2", how.port, "/v2/health/live", "/v2/health/ready",
                 how.grpc_port)  # fmt: skip
    env = _env(plan, how)
    if modelcar:
        env |= {"STORAGE_URI": f"oci://{modelcar}", "OMI_MODEL_DIR": KSERVE_MODELS}
    container = _container(plan, image, how, env)
    container["name"] = "kserve-container"  # the name KServe gives its predictor's container
    for probe in ("startupProbe", "livenessProbe"):
        container.pop(probe)  # KServe's queue proxy answers liveness; readiness is the model's
    container["ports"] = container["ports"][:1]  # KServe routes one port
    return [
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": _k8s_name(plan)},
            "spec": {
                "predictor": {
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                }
            },
        }
    ]


def sagemaker(plan: Plan, image: str, role: str) -> dict[str, Any]:
    """CreateModel and CreateEndpointConfig requests (as `aws sagemaker create-model
    --cli-input-json` takes each): the image speaks SageMaker's contract (/ping,
    /invocations on 8080), which SageMaker starts as `docker run IMAGE serve`."""
    how = served(plan, "sagemaker")
    name = re.sub(r"[^a-zA-Z0-9-]+", "-", f"{plan.name}-{plan.version}").strip("-")[:63]
    environment = _env(plan, how)
    return {
        "CreateModel": {
            "ModelName": name,
            "PrimaryContainer": {
                "Image": image,
                "Mode": "SingleModel",
                "Environment": environment,
            },
            "ExecutionRoleArn": role,
        },
        "CreateEndpointConfig": {
            "EndpointConfigName": name,
            "ProductionVariants": [
                {
                    "VariantName": "AllTraffic",
                    "ModelName": name,
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": 1,
                    "ContainerStartupHealthCheckTimeoutInSeconds": 300,
                }
            ],
        },
    }


def vertex(plan: Plan, image: str) -> dict[str, Any]:
    """A Vertex AI Model (models.upload's body) with its container's routes and port."""
    how = served(plan, "vertex")
    return {
        "displayName": plan.name,
        "description": f"{plan.name} {plan.version}, built by omibuild",
        "containerSpec": {
            "imageUri": image,
            "env": [{"name": k, "value": v} for k, v in _env(plan, how).items()],
            "ports": [{"containerPort": how.port}],
            "predictRoute": "/predict",
            "healthRoute": "/health",
        },
        "labels": {"omibuild-model": _k8s_name(plan)},
    }
