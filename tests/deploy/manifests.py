"""Renders deploy/ and checks the rendered objects offline (no cluster).

- `render`: `kubectl kustomize` of one kustomization, with this machine's kubectl (kustomize v5)
  or Debian's kubectl 1.20 (kustomize v2.0.3), unpacked by scripts/setup_deploy_tests.sh.
- `schema_problems`: the Kubernetes OpenAPI schemas through npm kubernetes-models
  (`validate.mjs`): types, formats, enums, required fields.
- `field_problems`: unknown fields, which those schemas let through (they do not set
  additionalProperties: false): every object becomes a TypeScript object literal typed with the
  API's interface from the same packages, and the compiler's excess-property check names any
  field the type does not have, at any depth.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEPLOY = os.path.join(REPO, "deploy")
TOOLS = os.environ.get("AMBIT_DEPLOY_TOOLS", "/var/cache/ambit/deploy-tests")
NPM_DIR = os.path.join(TOOLS, "npm")
DEBIAN_KUBECTL = os.path.join(TOOLS, "kubernetes-client", "usr", "bin", "kubectl")
BUILD_DIR = os.environ.get("AMBIT_BUILD_DIR", os.path.join(REPO, "build"))
BINARIES = {
    "ambitd": os.path.join(BUILD_DIR, "agent", "main", "ambitd"),
    "ambit-tunnel": os.path.join(BUILD_DIR, "agent", "main", "ambit-tunnel"),
    "ambit-waypoint": os.path.join(BUILD_DIR, "agent", "main", "ambit-waypoint"),
    "ambit-cni": os.path.join(BUILD_DIR, "agent", "main", "ambit-cni"),
}
# What newer kubectl says about fields kustomize v2 needs (the tree is written for both).
DEPRECATION_WARNING = re.compile(
    r"^# Warning: '(bases|patchesStrategicMerge|patchesJson6902)' is deprecated\. .*$")

# apiVersion -> the module path of its TypeScript interfaces (as in validate.mjs).
TS_MODULES = {
    "v1": "kubernetes-models/v1",
    "apps/v1": "kubernetes-models/apps/v1",
    "rbac.authorization.k8s.io/v1": "kubernetes-models/rbac.authorization.k8s.io/v1",
    "batch/v1": "kubernetes-models/batch/v1",
    "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
}


def system_kubectl():
    path = shutil.which("kubectl")
    if path is None:
        raise RuntimeError("kubectl is not on PATH (scripts/setup.sh installs Debian's)")
    return path


def kustomizations():
    """Every directory under deploy/ holding a kustomization, relative to deploy/."""
    found = []
    for root, _, files in os.walk(DEPLOY):
        if "kustomization.yaml" in files:
            found.append(os.path.relpath(root, DEPLOY))
    return sorted(found)


def render(kubectl, kustomization):
    """(objects, stderr lines) of `kubectl kustomize deploy/<kustomization>`; raises on failure."""
    proc = subprocess.run([kubectl, "kustomize", os.path.join(DEPLOY, kustomization)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"{kubectl} kustomize deploy/{kustomization} failed: {proc.stderr}")
    objects = [d for d in yaml.safe_load_all(proc.stdout) if d is not None]
    return objects, [line for line in proc.stderr.splitlines() if line.strip()]


def object_id(obj):
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind')}/{ns + '/' if ns else ''}{meta.get('name')}"


def canonical(value):
    """The value with lists of named items in name order: kustomize v2 and v5 merge patched lists
    (volumes, containers) in different orders, which means nothing to the API server."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [canonical(v) for v in value]
        if items and all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in items):
            names = [v["name"] for v in items]
            if len(set(names)) == len(names):
                items.sort(key=lambda v: v["name"])
        return items
    return value


def canonical_objects(objects):
    return sorted((canonical(o) for o in objects),
                  key=lambda o: json.dumps([o.get("apiVersion"), object_id(o)]))


def schema_problems(labelled):
    """Problems of [(where, object)] against the API schemas; [] when all are valid."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "objects.json")
        with open(path, "w") as f:
            json.dump([{"where": w, "object": o} for w, o in labelled], f)
        proc = subprocess.run(["node", os.path.join(HERE, "validate.mjs"), NPM_DIR, path],
                              capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not lines):
        raise RuntimeError(f"validate.mjs failed ({proc.returncode}): {proc.stderr}")
    if proc.returncode == 0 and lines:
        raise RuntimeError(f"validate.mjs printed problems but passed: {lines}")
    return lines


def field_problems(labelled):
    """Unknown fields in [(where, object)] (and type errors the compiler sees); [] when none."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(os.path.join(NPM_DIR, "node_modules"), os.path.join(tmp, "node_modules"))
        lines = []
        spans = []  # (first line, last line, where)
        for i, (where, obj) in enumerate(labelled):
            module = TS_MODULES.get(obj.get("apiVersion"))
            if module is None:
                problems.append(f"{where}: apiVersion {obj.get('apiVersion')} has no types here")
                continue
            lines.append(f'import {{ I{obj["kind"]} as T{i} }} from "{module}/{obj["kind"]}";')
        for i, (where, obj) in enumerate(labelled):
            if TS_MODULES.get(obj.get("apiVersion")) is None:
                continue
            body = json.dumps(obj, indent=1).splitlines()
            first = len(lines) + 1
            lines.append(f"export const o{i}: T{i} = {body[0]}")
            lines.extend(body[1:])
            lines[-1] += ";"
            spans.append((first, len(lines), where))
        source = os.path.join(tmp, "objects.ts")
        with open(source, "w") as f:
            f.write("\n".join(lines) + "\n")
        tsc = os.path.join(NPM_DIR, "node_modules", "typescript", "bin", "tsc")
        proc = subprocess.run(
            ["node", tsc, "--noEmit", "--strict", "--pretty", "false", "--moduleResolution",
             "node", "--module", "commonjs", "--target", "es2020", source],
            capture_output=True, text=True, timeout=600, cwd=tmp)
        out = [line for line in proc.stdout.splitlines() if line.strip()]
        if proc.returncode != 0 and not out:
            raise RuntimeError(f"tsc failed ({proc.returncode}): {proc.stderr}")
        for line in out:
            m = re.match(r"^.*objects\.ts\((\d+),\d+\): (.*)$", line)
            if not m:
                # A continuation line of the previous message.
                if problems:
                    problems[-1] += " " + line.strip()
                    continue
                problems.append(line)
                continue
            at = int(m.group(1))
            where = next((w for a, b, w in spans if a <= at <= b), "objects.ts")
            problems.append(f"{where}: {m.group(2)}")
    return problems


def help_flags(binary):
    """The flags `binary --helpfull` lists, with dashes (as the binaries print them; a name with
    underscores, as abseil itself would print it, is read with dashes too)."""
    proc = subprocess.run([binary, "--helpfull"], capture_output=True, text=True, timeout=60)
    text = proc.stdout + proc.stderr
    flags = {m.group(1).replace("_", "-")
             for m in re.finditer(r"^\s+--([A-Za-z0-9_-]+) \(", text, re.MULTILINE)}
    if not flags:
        raise RuntimeError(f"{binary} --helpfull listed no flags: {text[:500]}")
    return flags
