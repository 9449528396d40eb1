"""The image label contract, written down once: the Open Model Interface's keys (spelled as
spec 1.1 spells them) and omibuild's own. The planner writes them, and the checker, the image
reader and apply read them, all from here."""

from __future__ import annotations

# OMI spec interfaces and the protocols each may declare; any other interface is an extension.
SPEC_INTERFACES: dict[str, tuple[str, ...]] = {"kfserving": ("v1", "v2"), "modzy": ("v1", "v2")}

INTERFACES_LABEL = "ml.openmodel.interfaces"  # JSON list of spec interface names
PROTOCOLS_LABEL = "ml.openmodel.protocols"  # JSON list of lists, index-aligned with interfaces
PORT_LABEL = "ml.openmodel.port"  # the default interface's port
MODEL_NAME_LABEL = "ml.openml.model_name"  # sic: the spec's key
OMI_LABELS = (INTERFACES_LABEL, PROTOCOLS_LABEL, PORT_LABEL, MODEL_NAME_LABEL)

EXTENSIONS_LABEL = "io.omibuild.extensions"
DEFAULT_INTERFACE_LABEL = "io.omibuild.default-interface"
ORIGIN_SOURCE_LABEL = "io.omibuild.origin.source"
ORIGIN_URI_LABEL = "io.omibuild.origin.uri"
ORIGIN_ID_LABEL = "io.omibuild.origin.id"
MODEL_DIGEST_LABEL = "io.omibuild.model.digest"
EXPLAIN_LABEL = "io.omibuild.explain"  # the baked explainer's method: shap or hook
DRIFT_LABEL = "io.omibuild.drift"  # the baked drift detector: JSON {window, threshold, correction}
DEFENSE_LABEL = "io.omibuild.defense"  # the baked defense: JSON {guard, score, alpha[, hook]}
ACCELERATOR_LABEL = "io.omibuild.accelerator"  # cuda:12 (a cpu image has none)
CUDA_DRIVER_LABEL = "io.omibuild.cuda.driver-min"  # the oldest NVIDIA driver branch it runs on
# NVIDIA's minor-version compatibility table: the oldest driver branch each CUDA major runs on
CUDA_MIN_DRIVER = {12: "525", 13: "580"}
PLAN_DIGEST_LABEL = "io.omibuild.plan.digest"  # what makes `apply` a no-op when it matches
# where the plan the image was built from is: a small JSON pointer {"file", "sha256"} to the
# state file in the image, so no label grows with the model's file count. (Images from
# omibuild before 0.2 hold the state itself here: JSON, gzip, base64.)
PLAN_STATE_LABEL = "io.omibuild.plan.state"
# the plan, less its labels (the image has those) and how it is built: JSON, gzip (mtime 0).
# `omibuild plan` diffs a new plan against it, read from the engine or the registry.
PLAN_STATE_FILE = "/opt/omi/plan-state.json.gz"
# the labels made from the plan itself: left out of what its digest and its state cover
DERIVED_LABELS = (PLAN_DIGEST_LABEL, PLAN_STATE_LABEL)


def origin_tag(origin_id: str) -> str:
    """A valid OCI tag for an upstream model id (MLflow run id, Hugging Face commit sha, or
    ``sha256:<model digest>``): characters outside [A-Za-z0-9_.-] become '-', at most 128."""
    tag = origin_id.replace(":", "-")
    return "".join(c if c.isalnum() or c in "_.-" else "-" for c in tag)[:128]


# Beside omi.json in the image: each output's name, datatype and shape, as the build's dry
# prediction on the example input learnt them (omibuild.runtime.outputs keeps the same name).
OUTPUTS_FILE = "outputs.json"


# In a source's metadata: the outputs and inputs the model's own metadata declares (its MLflow
# signature), as V2 tensor specs in JSON. The plan moves them to omi.json's "outputs"/"inputs".
OUTPUTS_KEY = "signature.outputs"
INPUTS_KEY = "signature.inputs"
