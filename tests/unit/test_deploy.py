"""omibuild deploy's documents, validated offline against each platform's own definition:
Kubernetes' schemas (kubernetes-validate, strict), KServe's InferenceService CRD schema (a
fixture, unknown fields refused as the API server prunes them), botocore's SageMaker service
model, and Vertex AI's Model message (google-cloud-aiplatform); each with a case it refuses."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from omibuild.planning.plan import Plan
from omibuild.render import deploy

ROOT = Path(__file__).parents[2]
GOLDEN = ROOT / "tests/golden/sklearn-iris.plan.json"
ISVC = ROOT / "tests/fixtures/kserve/inferenceservice-v1beta1.schema.json.gz"
IMAGE = "registry.example.com/models/iris:sha256-1234"
K8S = "1.33.0"


@pytest.fixture
def plan() -> Plan:
    return Plan.from_dict(json.loads(GOLDEN.read_text()))


def _strict(schema: Any) -> Any:
    """The CRD schema refusing unknown fields where it names its fields (the API server
    drops them silently, which hides a typo)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def test_kubernetes_deployment_and_service(plan: Plan) -> None:
    deployment, service = deploy.kubernetes(plan, IMAGE)
    for doc in (deployment, service):
        kubernetes_validate.validate(doc, K8S, strict=True)
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"INTERFACE": "kfserving", "PROTOCOL": "v2", "HTTP_PORT": "8080",
                   "MODEL_NAME": "iris-classifier"}  # fmt: skip
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert (
        container["securityContext"]["runAsNonRoot"]
        and container["securityContext"]["runAsUser"] == plan.uid
    )
    assert pod["terminationGracePeriodSeconds"] > deploy.DRAIN_SECONDS
    assert [p["port"] for p in service["spec"]["ports"]] == [8080, 8081]
    # the gRPC-only interface is probed as the kubelet probes gRPC: grpc.health.v1
    [modzy, _] = deploy.kubernetes(plan, IMAGE, "modzy")
    [grpc] = modzy["spec"]["template"]["spec"]["containers"]
    assert grpc["readinessProbe"]["grpc"] == {"port": 45000}
    kubernetes_validate.validate(modzy, K8S, strict=True)
    # and the schema does refuse a wrong document
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = [1]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S, strict=True)


def test_kserve_inference_service(plan: Plan) -> None:
    schema = _strict(json.loads(gzip.decompress(ISVC.read_bytes())))
    validator = jsonschema.Draft7Validator(schema)
    [isvc] = deploy.kserve(plan, IMAGE)
    validator.validate(isvc)
    [container] = isvc["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container" and container["image"] == IMAGE
    [car] = deploy.kserve(plan, IMAGE, f"{IMAGE}-modelcar")
    validator.validate(car)
    env = {e["name"]: e["value"] for e in car["spec"]["predictor"]["containers"][0]["env"]}
    assert env["STORAGE_URI"] == f"oci://{IMAGE}-modelcar"
    assert env["OMI_MODEL_DIR"] == deploy.KSERVE_MODELS
    typo = json.loads(json.dumps(isvc))
    typo["spec"]["predictor"]["containerz"] = typo["spec"]["predictor"].pop("containers")
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(typo)


def test_sagemaker_requests_pass_botocore_s_model(plan: Plan) -> None:
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("sagemaker")
    role = "arn:aws:iam::123456789012:role/sagemaker"
    requests = deploy.sagemaker(plan, IMAGE, role)
    for operation, params in requests.items():
        report = ParamValidator().validate(params, model.operation_model(operation).input_shape)
        assert not report.has_errors(), report.generate_report()
    env = requests["CreateModel"]["PrimaryContainer"]["Environment"]
    assert env["INTERFACE"] == "sagemaker" and env["HTTP_PORT"] == "8080"
    wrong = {**requests["CreateModel"], "ModelNme": "x"}
    wrong.pop("ModelName")
    report = ParamValidator().validate(wrong, model.operation_model("CreateModel").input_shape)
    assert report.has_errors()


def test_vertex_model_parses_as_vertex_s_message(plan: Plan) -> None:
    from google.cloud.aiplatform_v1.types import Model

    body = deploy.vertex(plan, IMAGE)
    parsed = Model.from_json(json.dumps(body), ignore_unknown_fields=False)
    assert parsed.container_spec.image_uri == IMAGE
    assert parsed.container_spec.health_route == "/health"
    assert parsed.container_spec.ports[0].container_port == 8080
    env = {e.name: e.value for e in parsed.container_spec.env}
    assert env["INTERFACE"] == "vertex"
    with pytest.raises(Exception, match=r"containerSpex|no field named"):
        Model.from_json(json.dumps({**body, "containerSpex": {}}), ignore_unknown_fields=False)


def test_an_interface_the_image_lacks_is_one_line(plan: Plan) -> None:
    doc = json.loads(plan.omi_json)
    doc["interfaces"] = {"kfserving": doc["interfaces"]["kfserving"]}
    only = dataclasses.replace(plan, omi_json=json.dumps(doc))
    with pytest.raises(ValueError, match="serves kfserving, not sagemaker: add sagemaker"):
        deploy.sagemaker(only, IMAGE, "arn:aws:iam::123456789012:role/x")
