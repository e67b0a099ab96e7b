"""A session-scoped local Ray for the pipeline tests (started only by tests that ask for it)."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_session():
    import ray
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # Workers import the train loop from the package (STACK.md: an unimportable function hangs).
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    sys.path.insert(0, str(ROOT))
    ray.init(num_cpus=3, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False,
             runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}})
    yield
    ray.shutdown()
