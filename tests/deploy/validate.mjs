// Validates Kubernetes objects against the API's OpenAPI schemas, offline, with the npm
// kubernetes-models packages (types, formats, enums, required fields; the Prometheus Operator's
// CRDs for PodMonitor). Usage: node validate.mjs MODULES_DIR OBJECTS.json
// OBJECTS.json is a JSON list of {"where": "...", "object": {...}}. Prints one line per problem
// ("<where>: <path> <message>") and exits 1 when there is any, 0 when every object is valid.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";

const [modulesDir, objectsFile] = process.argv.slice(2);
const require = createRequire(path.join(modulesDir, "node_modules", "noop.js"));

// apiVersion -> the package path holding its kinds. Anything else is a problem: the deploy tree
// uses no API the checks cannot see.
const groups = {
  "v1": "kubernetes-models/v1",
  "apps/v1": "kubernetes-models/apps/v1",
  "rbac.authorization.k8s.io/v1": "kubernetes-models/rbac.authorization.k8s.io/v1",
  "batch/v1": "kubernetes-models/batch/v1",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
};

let problems = 0;
const report = (where, text) => {
  console.log(`${where}: ${text}`);
  problems++;
};

for (const { where, object } of JSON.parse(readFileSync(objectsFile, "utf8"))) {
  const group = groups[object.apiVersion];
  if (!group) {
    report(where, `apiVersion ${object.apiVersion} has no schema here`);
    continue;
  }
  let model;
  try {
    model = require(`${group}/${object.kind}`)[object.kind];
  } catch (e) {
    report(where, `kind ${object.kind} is not in ${object.apiVersion}`);
    continue;
  }
  if (typeof model !== "function") {
    report(where, `kind ${object.kind} is not in ${object.apiVersion}`);
    continue;
  }
  try {
    new model(object).validate();
  } catch (e) {
    const details = e.errors && e.errors.length
      ? e.errors.map((x) => `${x.instancePath || "/"} ${x.message}` +
        (x.params && x.params.allowedValues ? ` (${x.params.allowedValues.join(", ")})` : ""))
      : [String(e.message || e)];
    for (const d of details) report(where, d);
  }
}
process.exit(problems ? 1 : 0);
