"""The MLflow pyfunc model that training logs: a model from code (no pickle) with components/ as its
code and pinned requirements; loaded in a fresh process, it predicts the unit vectors of
SimBERT.encode (what /v1/embeddings returns)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components.simbert import SimBERT
from tests.tiny_training import train_tiny_simbert

TEXTS = ["怎么修改银行卡密码", "明天会下雨吗", "我的快递还没到怎么办", "hello world 1234"]
LOAD = """
import json, sys
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
import components
vectors = model.predict(json.loads(sys.argv[2]))
print(json.dumps({"vectors": vectors.tolist(), "dtype": str(vectors.dtype), "components": components.__file__}))
"""


@pytest.fixture(scope="module")
def logged(tmp_path_factory, vocab_file):
    """A tiny SimBERT logged by pipelines.tracking into a fresh SQLite store and registered."""
    import mlflow

    from pipelines.tracking import log_pyfunc_model

    root = tmp_path_factory.mktemp("pyfunc")
    model_dir = train_tiny_simbert(root / "model", vocab_file, steps=20)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("pyfunc", artifact_location=(root / "mlartifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            info = log_pyfunc_model(model_dir, "tiny-simbert")
    finally:
        mlflow.set_tracking_uri(None)
    return {"uri": uri, "model_dir": model_dir, "run_id": run.info.run_id, "info": info, "root": root}


def test_the_logged_model_is_code_with_pinned_requirements_and_a_signature(logged):
    import torch

    local = next(Path(logged["root"], "mlartifacts").rglob("MLmodel")).parent
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert "pyfunc_model.py" in files and "code/components/simbert.py" in files
    assert not any(name.endswith((".pkl", ".cloudpickle")) for name in files), files
    requirements = (local / "requirements.txt").read_text().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    assert all("==" in r for r in requirements) and not any(r.startswith("bert4ray") for r in requirements)
    signature = logged["info"].signature.to_dict()
    assert json.loads(signature["inputs"]) == [{"type": "string", "required": True}]
    assert json.loads(signature["outputs"])[0]["tensor-spec"] == {"dtype": "float32", "shape": [-1, 48]}
    assert logged["info"].metadata["bert4ray_version"] == "0.1.0"


@pytest.mark.parametrize("reference", ["models:/tiny-simbert/1", "runs"])
def test_a_fresh_process_predicts_the_unit_vectors_of_simbert_encode(logged, reference, tmp_path):
    uri = f"runs:/{logged['run_id']}/model" if reference == "runs" else reference
    env = {"PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": logged["uri"], "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", LOAD, uri, json.dumps(TEXTS, ensure_ascii=False)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dtype"] == "float32"
    # The components package comes from the logged model's code, not from this checkout.
    assert "/code/components/" in out["components"], out["components"]
    vectors = np.asarray(out["vectors"], dtype=np.float32)
    expected = SimBERT.from_pretrained(logged["model_dir"]).encode(TEXTS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.abs(vectors - expected).max() < 1e-5
