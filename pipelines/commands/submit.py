"""`bert4ray submit RECIPE.yaml --address http://HOST:8265 [--storage DIR] [--follow]`: run a
training recipe on a Ray cluster through Ray Jobs.

- The recipe (with `--overlay` files and `--set` overrides applied) is checked here first, so a
  broken recipe never reaches the cluster; it then travels inside the job's runtime_env as YAML
  text (`BERT4RAY_RECIPE_YAML`) and the job runs `python -m pipelines train env:BERT4RAY_RECIPE_YAML`.
- The runtime_env comes from `--runtime-env` (default `cluster/runtime_env.yaml`): its working_dir
  (this repository) is uploaded, pip packages are installed, environment variables set.
- `--storage` becomes the recipe's workdir on the cluster: Ray Train checkpoints, exported models,
  run state and, unless an MLflow server is given, the MLflow database go there. It is a bucket URI
  (s3://bucket/prefix, gs://..., read with each node's own credentials) or a path that every node
  of the cluster mounts (NFS, EFS, Filestore, a PVC), and is required unless the cluster runs on
  this machine (then the recipe's own workdir is used, resolved here).
- `--follow` streams the job's logs and exits with its result: 0 when it SUCCEEDED, the driver's
  exit code when it FAILED (2 for a recipe or data error, as `bert4ray train`), 3 when STOPPED.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from components import objectstore

HELP = "submit a training recipe to a Ray cluster through Ray Jobs (with --follow: stream logs, exit with its result)"
RECIPE_ENV = "BERT4RAY_RECIPE_YAML"
ENTRYPOINT = f"python -m pipelines train env:{RECIPE_ENV} --quiet"
DEFAULT_RUNTIME_ENV = Path("cluster") / "runtime_env.yaml"
STOPPED_EXIT = 3
# MLflow URIs that mean the same store from any machine (a sqlite file on a laptop does not).
SHARED_MLFLOW_SCHEMES = ("http", "https", "databricks", "postgresql", "mysql", "mssql")


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="Ray dashboard address, e.g. http://HOST:8265 (default: $RAY_ADDRESS)")
    from pipelines.job import add_override_arguments
    add_override_arguments(parser)
    parser.add_argument("--storage", help="workdir on the cluster: s3://bucket/prefix (gs://, abfs://) or an "
                                          "absolute path every node mounts; required unless the cluster runs on this machine")
    parser.add_argument("--runtime-env", default=None,
                        help=f"runtime_env YAML (default: {DEFAULT_RUNTIME_ENV} when present)")
    parser.add_argument("--mlflow-uri", default=None,
                        help="MLFLOW_TRACKING_URI for the job (default: $MLFLOW_TRACKING_URI when it is a "
                             "server or database URI, else <storage>/mlflow.db)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the last run of this recipe name from its latest checkpoint in --storage")
    parser.add_argument("--follow", action="store_true", help="stream the job's logs and exit with its result")
    parser.add_argument("--job-id", default=None, help="submission id (default: bert4ray-<recipe name>-<time>-<4 hex digits>)")


# --- checks that need no cluster -----------------------------------------------------------------
def address_host(address: str) -> str:
    return urlparse(address if "://" in address else f"http://{address}").hostname or ""


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_storage(storage: str | None, local: bool, recipe_workdir: str) -> str:
    """The absolute workdir the job will use. `local`: the cluster runs on this machine."""
    if storage is None:
        if not local:
            raise ValueError("--storage is required for a remote cluster: give an absolute path that every "
                             "node mounts (NFS, EFS, Filestore, a Kubernetes volume)")
        return str(Path(recipe_workdir).expanduser().resolve())
    scheme = urlparse(storage).scheme
    if objectstore.is_remote(storage):
        # A bucket: checked from here (scheme, bucket, credentials in this environment); the
        # cluster's nodes read and write it with the credentials of their own environment.
        objectstore.check_location(storage)
        return storage.rstrip("/")
    if scheme == "file":
        storage = urlparse(storage).path
    elif scheme and len(scheme) > 1:             # one letter: a Windows drive, not a scheme
        raise ValueError(f"--storage '{storage}': unsupported scheme '{scheme}' (give an absolute path)")
    if not Path(storage).is_absolute():
        raise ValueError(f"--storage '{storage}' must be an absolute path (the job runs in another directory)")
    return storage


def load_runtime_env(path: str | None) -> dict:
    """The runtime_env mapping; a relative working_dir is resolved against the current directory
    and must hold this repository (the job imports `pipelines` from it)."""
    import yaml
    if path is None:
        if not DEFAULT_RUNTIME_ENV.is_file():
            return {}
        path = str(DEFAULT_RUNTIME_ENV)
    if not Path(path).is_file():
        raise FileNotFoundError(f"runtime_env file '{path}' does not exist")
    try:
        env = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(env, dict):
        raise ValueError(f"{path}: a runtime_env must be a mapping")
    wd = env.get("working_dir")
    if isinstance(wd, str) and "://" not in wd:
        resolved = Path(wd).expanduser().resolve()
        if not (resolved / "pipelines" / "__init__.py").is_file():
            raise ValueError(f"{path}: working_dir '{wd}' ({resolved}) does not hold bert4ray's pipelines/ "
                             "package: run from the repository root, or set working_dir")
        env["working_dir"] = str(resolved)
    return env


def mlflow_uri_for_job(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    inherited = os.environ.get("MLFLOW_TRACKING_URI", "")
    scheme = urlparse(inherited).scheme.split("+")[0]
    return inherited if scheme in SHARED_MLFLOW_SCHEMES else None


def build_submission(args, local: bool) -> tuple[str, dict, object]:
    """(entrypoint, runtime_env, recipe) of the job; raises on a bad recipe, storage or runtime_env.
    `local`: the cluster runs on this machine (so paths here are paths there)."""
    import yaml

    from pipelines.recipe import to_dict

    recipe = load_submitted_recipe(args)
    workdir = check_storage(args.storage, local, recipe.workdir)
    recipe = load_submitted_recipe(args, [f"workdir={workdir}"])
    runtime_env = load_runtime_env(args.runtime_env)
    _check_data_paths(recipe, runtime_env, local)

    env_vars = {str(k): str(v) for k, v in (runtime_env.get("env_vars") or {}).items()}
    env_vars[RECIPE_ENV] = yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True)
    # DeepSpeed's accelerator follows the recipe unless the runtime_env fixes it.
    env_vars.setdefault("DS_ACCELERATOR", "cuda" if recipe.scaling.use_gpu else "cpu")
    # The training driver's ray.init passes DS_ACCELERATOR in its own runtime_env (pipelines/train.py);
    # Ray refuses a driver env var that the job's runtime_env also sets unless this is on.
    env_vars["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    uri = mlflow_uri_for_job(args.mlflow_uri)
    if uri:
        env_vars["MLFLOW_TRACKING_URI"] = uri
    runtime_env["env_vars"] = env_vars
    if local and not objectstore.is_remote(workdir):   # everything checked: the workdir may exist now
        Path(workdir).mkdir(parents=True, exist_ok=True)
    entrypoint = ENTRYPOINT + (" --resume" if args.resume else "")
    return entrypoint, runtime_env, recipe


def load_submitted_recipe(args, extra: list[str] = ()):
    """The recipe file with the --overlay files merged over it (in order), then the --set overrides."""
    from pipelines.job import load_command_recipe
    from pipelines.recipe import load_recipe
    return load_command_recipe(args, load_recipe, extra)


def _check_data_paths(recipe, runtime_env: dict, local: bool) -> None:
    """Relative data paths resolve in the uploaded working_dir, so they must exist here; absolute
    paths are checked here only for a cluster on this machine (elsewhere the job checks them)."""
    if recipe.data.source != "files":
        return
    for path in [*recipe.data.train, *recipe.data.validation]:
        if objectstore.is_remote(path):
            objectstore.list_files(path)
            continue
        p = Path(path)
        if p.is_absolute():
            if local and not p.exists():
                raise FileNotFoundError(f"data file '{path}' does not exist")
        elif runtime_env.get("working_dir") and not (Path(runtime_env["working_dir"]) / p).exists():
            raise FileNotFoundError(f"data file '{path}' is not in the uploaded working_dir "
                                    f"{runtime_env['working_dir']}; give a path on the cluster's storage")


# --- the cluster ---------------------------------------------------------------------------------
def connect(address: str | None):
    if not address:
        raise ValueError("no cluster address: give --address http://HOST:8265 (or set RAY_ADDRESS)")
    from ray.job_submission import JobSubmissionClient
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - connection errors come in several types
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "uthentication" in reason:
            reason += " (set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token)"
        raise ValueError(f"cannot reach the Ray cluster at {address}: {reason}") from None


def cluster_is_local(address: str) -> bool:
    """True when every alive node of the cluster has an address of this machine. A loopback
    dashboard address alone is not enough: `kubectl port-forward` makes a remote cluster look local."""
    if not is_loopback(address_host(address)):
        return False
    try:
        import psutil
        from ray.util.state import list_nodes
        nodes = list_nodes(address=address, filters=[("state", "=", "ALIVE")], timeout=10)
        mine = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    except Exception:  # noqa: BLE001 - no state API: trust the loopback address
        return True
    return all(n.node_ip in mine or is_loopback(n.node_ip) for n in nodes)


def job_status(client, job_id: str) -> str:
    return str(client.get_job_status(job_id)).split(".")[-1]


def follow(client, job_id: str) -> int:
    """Stream the job's logs until it ends, then return its exit code (see `exit_code`)."""
    import asyncio

    async def tail():
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()
    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} keeps running (bert4ray jobs stop {job_id} to end it)",
              file=sys.stderr)
        raise
    except Exception as exc:  # noqa: BLE001 - a dropped log stream: fall back to polling
        print(f"log stream ended ({type(exc).__name__}); waiting for job {job_id}", file=sys.stderr)
    return wait(client, job_id)


def wait(client, job_id: str, poll_s: float = 1.0, timeout_s: float | None = None) -> int:
    """Poll until the job is in a terminal state; print it and return its exit code."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        info = client.get_job_info(job_id)
        status = str(info.status).split(".")[-1]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            code = exit_code(status, getattr(info, "driver_exit_code", None))
            line = f"job {job_id}: {status}"
            if status != "SUCCEEDED" and info.message:
                line += f" ({info.message.splitlines()[0]})"
            print(line, file=sys.stdout if code == 0 else sys.stderr, flush=True)
            return code
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def exit_code(status: str, driver_exit_code: int | None) -> int:
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return STOPPED_EXIT
    return driver_exit_code if driver_exit_code not in (None, 0) else 1


def run(args) -> int:
    load_submitted_recipe(args)          # a broken recipe fails here, before any connection
    if args.storage and objectstore.is_remote(args.storage):
        check_storage(args.storage, False, "")          # so does a bucket that cannot be used
    client = connect(args.address)
    local = cluster_is_local(args.address)
    entrypoint, runtime_env, recipe = build_submission(args, local)
    job_id = args.job_id or f"bert4ray-{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    try:
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id,
                                   metadata={"bert4ray.recipe": recipe.name, "bert4ray.workdir": recipe.workdir})
    except Exception as exc:  # noqa: BLE001 - Ray raises RuntimeError/ValueError with long messages
        raise ValueError(f"the cluster refused the job: {str(exc).splitlines()[0]}") from None
    print(f"submitted job {job_id} to {args.address}", flush=True)
    print(f"workdir on the cluster: {recipe.workdir}", flush=True)
    if not args.follow:
        print(f"follow it with: bert4ray jobs logs {job_id} --address {args.address} --follow")
        return 0
    return follow(client, job_id)
