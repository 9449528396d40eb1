"""What flavors share: finding the model file, and turning named inputs into a DataFrame."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def find_file(model_dir: Path, config: dict[str, Any], suffixes: tuple[str, ...]) -> Path:
    if config.get("model_file"):
        return model_dir / config["model_file"]
    found = sorted(p for p in model_dir.rglob("*") if p.suffix in suffixes)
    if not found:
        raise FileNotFoundError(f"no {'/'.join(suffixes)} file in {model_dir}")
    return found[0]


def named_columns(inputs: Any, names: list[str] | None) -> Any:
    """Inputs as a pandas DataFrame where the model was fit on named columns or the request
    names them: records (V1 instances of objects), named V2 tensors (one per column), or rows
    of the model's width (then in the model's column order). Anything else as it came."""
    if isinstance(inputs, list) and inputs and all(isinstance(r, dict) for r in inputs):
        import pandas as pd

        return pd.DataFrame.from_records(inputs, columns=names or None)
    if isinstance(inputs, dict) and inputs:
        import numpy as np
        import pandas as pd

        columns = {}
        for key, value in inputs.items():
            array = np.asarray(value)
            if array.ndim == 2 and array.shape[1] == 1:
                array = array[:, 0]
            if array.ndim != 1:
                raise ValueError(
                    f"input {key!r} must hold one value per row, not shape {array.shape}"
                )
            columns[key] = array
        return pd.DataFrame(columns, columns=[n for n in (names or columns) if n in columns])
    if names and getattr(inputs, "ndim", 0) == 2 and inputs.shape[1] == len(names):
        import pandas as pd

        return pd.DataFrame(inputs, columns=names)
    return inputs


# A transformers model's pipeline task, by the suffix of its architecture's class name
# (config.json's "architectures"): without a task, the pipeline asks the Hub for one.
TASKS = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "fill-mask"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForConditionalGeneration", "text2text-generation"),
    ("ForImageClassification", "image-classification"),
    ("ForAudioClassification", "audio-classification"),
    ("ForSpeechSeq2Seq", "automatic-speech-recognition"),
    ("ForCTC", "automatic-speech-recognition"),
    ("Model", "feature-extraction"),
)


def transformers_task(model_dir: Path) -> str | None:
    """The pipeline task config.json's architecture implies, if it implies one."""
    try:
        config = json.loads((model_dir / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    architectures = config.get("architectures") if isinstance(config, dict) else None
    for name in architectures if isinstance(architectures, list) else []:
        for suffix, task in TASKS:
            if str(name).endswith(suffix):
                return task
    return None
