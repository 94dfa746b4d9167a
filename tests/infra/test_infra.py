"""The deployment files in infra/ checked against the code they run: entry points, flags, paths, images, versions."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
LAUNCHER = INFRA / "ray-cluster.yaml"
RAYCLUSTER = INFRA / "kuberay" / "raycluster.yaml"
RAYJOB = INFRA / "kuberay" / "rayjob.yaml"
PIPELINE_JOBS = INFRA / "kuberay" / "rayjob-pipeline.yaml"
DOCKERFILE = INFRA / "Dockerfile"
DOCKERIGNORE = INFRA / "Dockerfile.dockerignore"
README = INFRA / "README.md"
TEXT_FILES = [LAUNCHER, RAYCLUSTER, RAYJOB, PIPELINE_JOBS, DOCKERFILE, README]
# What the Ray autoscaler needs to launch anything (its schema itself only insists on the first two).
LAUNCHER_KEYS = {"cluster_name", "max_workers", "provider", "auth", "available_node_types",
                 "head_node_type", "docker", "setup_commands", "head_start_ray_commands",
                 "worker_start_ray_commands", "file_mounts"}


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kuberay_docs() -> list[dict]:
    return [doc for path in (RAYCLUSTER, RAYJOB, PIPELINE_JOBS) for doc in load_all(path)]


def cluster_specs() -> list[dict]:
    """Every RayCluster spec: the RayCluster's own and those RayJobs bring with them."""
    return [doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
            for doc in kuberay_docs() if doc["kind"] == "RayCluster" or "rayClusterSpec" in doc["spec"]]


def containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def gpus(group: dict) -> int:
    return sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
               for c in group["template"]["spec"]["containers"])


# ---------------------------------------------------------------- commands and the configs they parse


def readme_commands() -> list[str]:
    """Shell lines of the README's code blocks, with backslash continuations joined."""
    blocks = re.findall(r"^```\w*\n(.*?)^```$", README.read_text(), flags=re.S | re.M)
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def python_commands(line: str) -> list[list[str]]:
    """The `python ...` invocations in a shell line: [target, *args] each, `-m` kept on modules."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:  # a line of prose or JSON, not a command
        return []
    commands, current = [], None
    for token in tokens:
        if token in ("python", "python3"):
            current = []
            commands.append(current)
        elif token in ("|", "||", "&&", ";") or token.endswith(";"):
            current = None
        elif current is not None:
            current.append(token)
    return [c for c in commands if c and c[0] != "-c"]


def all_commands() -> list[list[str]]:
    entrypoints = [doc["spec"]["entrypoint"] for doc in kuberay_docs() if doc["kind"] == "RayJob"]
    return [c for line in [*entrypoints, *readme_commands()] for c in python_commands(line)]


def source_of(command: list[str]) -> Path:
    """The file a command runs: `-m pkg.mod` through the import system, `path.py` from the repository."""
    if command[0] == "-m":
        spec = importlib.util.find_spec(command[1])
        assert spec is not None and spec.origin, f"no module {command[1]}"
        return Path(spec.origin)
    return ROOT / command[0]


def module_source(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"no module {module}"
    return Path(spec.origin)


def find_class(path: Path, name: str) -> tuple[Path, ast.ClassDef]:
    """A class defined in `path`, or imported into it with `from X import name`: (its file, its AST)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return path, node
        if isinstance(node, ast.ImportFrom) and any(a.name == name for a in node.names):
            return find_class(module_source(node.module), name)
    raise AssertionError(f"{name} not found from {path}")


def config_class(path: Path) -> str:
    """The dataclass an entry point hands to `job_config` (or `parse_config`)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("job_config", "parse_config"):
            return node.args[0].id
    raise AssertionError(f"{path} does not call job_config or parse_config")


def check_key(path: Path, class_name: str, dotted: str) -> None:
    """`a.b.c` must name fields through nested config dataclasses (a dict-typed field takes any key)."""
    path, node = find_class(path, class_name)
    fields = {s.target.id: ast.unparse(s.annotation) for s in node.body
              if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    head, _, rest = dotted.partition(".")
    assert head in fields, f"{class_name} has no field {head!r}"
    if rest and not fields[head].startswith("dict"):
        check_key(path, fields[head], rest)


def check_arguments(command: list[str]) -> None:
    """Flags and `key=value` overrides against the entry point's config; repository paths exist."""
    target = source_of(command)
    cls = config_class(target)
    args = command[2:] if command[0] == "-m" else command[1:]
    for i, token in enumerate(args):
        if token == "--config":
            assert (ROOT / args[i + 1]).is_file(), f"{args[i + 1]} (in {command}) does not exist"
        elif token.startswith("--"):
            check_key(target, cls, token[2:].replace("-", "_"))
        elif "=" in token:
            check_key(target, cls, token.split("=", 1)[0])
        if re.match(r"(common|model|formats|pipelines|trainer|demo|infra)/", token):
            assert (ROOT / token).exists(), f"{token} (in {command}) does not exist"


def test_every_python_entry_point_named_in_infra_exists():
    pattern = re.compile(r"python3? +(?:-m +([A-Za-z_][\w.]*)|([\w./-]+\.py)\b)")
    found = {m for path in TEXT_FILES for m in pattern.findall(path.read_text())}
    assert found, "no entry points found: the pattern is broken"
    for module, script in found:
        if module:
            assert importlib.util.find_spec(module) is not None, f"python -m {module}: no such module"
        else:
            assert (ROOT / script).is_file(), f"python {script}: no such file"


def test_every_config_file_referenced_exists():
    pattern = re.compile(r"--config[ =](\S+\.ya?ml)")
    referenced = {m for path in TEXT_FILES for m in pattern.findall(path.read_text())}
    assert "trainer/configs/gpu.yaml" in referenced
    missing = sorted(r for r in referenced if not (ROOT / r).is_file())
    assert not missing, f"referenced configs missing: {missing}"


def test_commands_use_flags_and_keys_their_configs_have():
    commands = all_commands()
    targets = {c[1] if c[0] == "-m" else c[0] for c in commands}
    assert {"trainer.train", "pipelines/shard.py", "pipelines/embed.py", "pipelines/evaluate.py"} <= targets
    for command in commands:
        check_arguments(command)


def test_argument_check_rejects_a_misspelt_flag_and_key():
    with pytest.raises(AssertionError, match="no field 'imagesize'"):
        check_arguments(["pipelines/shard.py", "--input", "a", "--imagesize", "3"])
    with pytest.raises(AssertionError, match="no field 'storage_pth'"):
        check_arguments(["-m", "trainer.train", "run.storage_pth=s3://b"])


# ---------------------------------------------------------------- the Ray cluster launcher


def test_launcher_config_follows_the_autoscaler_schema():
    config = yaml.safe_load(LAUNCHER.read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert LAUNCHER_KEYS <= set(config), f"missing: {LAUNCHER_KEYS - set(config)}"
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in workers.values()), \
        "no GPU worker type"
    for node_type in workers.values():
        assert "IamInstanceProfile" in node_type["node_config"], "workers need a profile to reach S3"


def test_one_image_everywhere_and_one_ray_version():
    image = yaml.safe_load(LAUNCHER.read_text())["docker"]["image"]
    assert {c["image"] for spec in cluster_specs() for c in containers(spec)} == {image}
    ray_version = dockerfile_args()["RAY_VERSION"]
    # `ray job submit` from this environment talks to the cluster: the versions must match.
    assert ray_version == ray.__version__
    assert {spec["rayVersion"] for spec in cluster_specs()} == {ray_version}


# ---------------------------------------------------------------- KubeRay


def test_raycluster_has_a_head_and_a_gpu_worker_group_with_s3_credentials():
    (cluster,) = load_all(RAYCLUSTER)
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert any(gpus(group) > 0 for group in spec["workerGroupSpecs"])
    for spec in cluster_specs():
        for container in containers(spec):
            secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]}
            assert secrets["AWS_ACCESS_KEY_ID"] == secrets["AWS_SECRET_ACCESS_KEY"] == "clips4-s3"


def test_rayjob_runs_the_trainer_on_enough_gpus():
    (job,) = load_all(RAYJOB)
    spec = job["spec"]
    assert job["kind"] == "RayJob" and spec["shutdownAfterJobFinishes"] is True
    (command,) = python_commands(spec["entrypoint"])
    assert command[:4] == ["-m", "trainer.train", "--config", "trainer/configs/gpu.yaml"]
    trainer_config = yaml.safe_load((ROOT / command[3]).read_text())
    overrides = dict(token.split("=", 1) for token in command[4:] if "=" in token)
    num_workers = int(overrides.get("scaling.num_workers", trainer_config["scaling"]["num_workers"]))
    cpus_per_worker = int(overrides.get("scaling.cpus_per_worker", trainer_config["scaling"]["cpus_per_worker"]))
    groups = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert num_workers <= sum(g["minReplicas"] * gpus(g) for g in groups), "workers would wait for GPUs"
    for group in groups:  # one training worker per GPU, each with its CPUs, must fit in its pod
        cpu = sum(int(c["resources"]["limits"]["cpu"]) for c in group["template"]["spec"]["containers"])
        assert gpus(group) * cpus_per_worker <= cpu


def test_pipeline_jobs_target_the_raycluster():
    (cluster,) = load_all(RAYCLUSTER)
    jobs = load_all(PIPELINE_JOBS)
    assert [job["metadata"]["labels"]["clips4/step"] for job in jobs] == ["shard", "embed", "evaluate"]
    for job in jobs:
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}


# ---------------------------------------------------------------- the image


def dockerfile_lines() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=\"?([^\"\s]*)\"?$", "\n".join(dockerfile_lines()), flags=re.M))


def test_dockerfile_base_is_python_311_and_user_is_not_root():
    lines = dockerfile_lines()
    (base,) = [line.split()[1] for line in lines if line.startswith("FROM ")]
    base = re.sub(r"\$\{(\w+)\}", lambda m: dockerfile_args()[m.group(1)], base)
    assert re.fullmatch(r"rayproject/ray:[\d.]+-py311-gpu", base), base
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "WORKDIR /app" in lines


def test_dockerfile_installs_the_project_from_pyproject():
    lines = dockerfile_lines()
    (install,) = [line for line in lines if "pip install" in line]
    args = shlex.split(install.split("pip install", 1)[1].split("&&")[0])
    # only options and the project itself: every dependency comes from pyproject.toml
    assert [a for a in args if not a.startswith(("-", "$"))] == ["."], args
    copied = {src for line in lines if line.startswith("COPY ") for src in line.split()[1:-1]
              if not src.startswith("--")}
    packages = re.search(r"include = \[(.*?)\]", (ROOT / "pyproject.toml").read_text()).group(1)
    needed = {p.strip(' "*') for p in packages.split(",")} | {"pyproject.toml", "README.md"}
    assert needed <= copied, f"not copied into the image: {needed - copied}"
    kept = {line.lstrip("!").rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
            if line.startswith("!")}
    assert copied <= kept, f"copied but ignored by the build context: {copied - kept}"
    assert all((ROOT / src).exists() for src in copied)


# ---------------------------------------------------------------- the capacity plan's arithmetic


def size_in_bytes(cell: str) -> float:
    number, unit = cell.split()
    return float(number) * {"GB": 1e9, "TB": 1e12}[unit]


def duration_s(cell: str) -> float:
    number, unit = cell.split()
    return float(number) * {"min": 60, "h": 3600, "days": 86400}[unit]


def test_capacity_table_follows_from_the_measured_inputs():
    text = README.read_text()
    measured = {k: float(v.replace(",", "")) for k, v in
                re.findall(r"^\| `(B_\w+|R_shard_cpu)` \| ([\d,]+) ", text, flags=re.M)}
    embed_full, embed_low = map(float, re.search(
        r"^\| `R_embed_cpu` \| ([\d.]+) images/s per vCPU \(([\d.]+) with", text, flags=re.M).groups())
    vcpus = int(re.search(r"`C` = (\d+)", text).group(1))
    latency = float(re.search(r"All at `L` = ([\d.]+) s", text).group(1))
    header = next(line for line in text.splitlines() if line.startswith("| images |"))
    shard_columns = [(int(n), int(t)) for n, t in re.findall(r"shard, (\d+) nodes?, (\d+) threads", header)]
    embed_nodes = int(re.search(r"embed CPU side, (\d+) nodes", header).group(1))
    rows = {m.group(1): [c.strip() for c in m.group(2).split("|")]
            for m in re.finditer(r"^\| (\d+[MB]) \|(.*)\|$", text, flags=re.M)}
    assert set(rows) == {"10M", "100M", "1B"} and len(shard_columns) == 2
    for label, cells in rows.items():
        n_img = float(label[:-1]) * {"M": 1e6, "B": 1e9}[label[-1]]
        for cell, key in zip(cells[:3], ("B_img", "B_f16", "B_i8")):
            assert size_in_bytes(cell) == pytest.approx(n_img * measured[key], rel=0.01), (label, key)
        for cell, (nodes, threads) in zip(cells[3:5], shard_columns):
            per_vcpu = min(measured["R_shard_cpu"], threads / latency)  # CPU or Little's law, whichever binds
            assert duration_s(cell) == pytest.approx(n_img / (per_vcpu * vcpus * nodes), rel=0.03), (label, nodes)
        low, full = re.fullmatch(r"(.+) \((.+)\)", cells[5]).groups()
        for cell, rate in ((low, embed_low), (full, embed_full)):
            assert duration_s(cell) == pytest.approx(n_img / (rate * vcpus * embed_nodes), rel=0.03), (label, rate)