#!/usr/bin/python3
"""A stand-in for kube-apiserver that speaks its wire protocol: HTTPS, bearer tokens, discovery,
get/list/watch with resourceVersion, pagination, selectors, bookmarks, 410 Gone, create, update,
patch (JSON, merge and strategic merge), delete and TokenReview; plus scenario controls (compaction,
dropped watches, delays, injected failures, token rotation) that a real server only shows under
load or failure.

Standalone:

  /usr/bin/python3 tests/kube/fake_apiserver.py --listen 127.0.0.1:0 --state-dir DIR \
      [--objects FILE.yaml]... [--bookmark-interval SECONDS] [--watch-timeout SECONDS]

prints "listening <port>" once it serves, and writes DIR/ca.crt (the CA of its certificate, which
names 127.0.0.1 and kubernetes.default.svc), DIR/token (a valid bearer token), DIR/kubeconfig (for
kubectl) and DIR/control-token. Scenario controls are then `POST /__fake/<op>` with a JSON body
and `Authorization: Bearer <control-token>`:

  apply          {"object": {...}} | {"objects": [...]} | {"yaml": "..."} | the object(s)
                                                                           -> {"applied": n}
  delete         {"kind": "Pod", "namespace": "ns", "name": "x"}          -> {"deleted": bool}
  compact        {}                                                        -> {"compacted": rv}
  drop_watches   {} (abrupt) | {"clean": true} (as a timeout)              -> {"dropped": n}
  set_delay      {"seconds": 0.5}
  fail_next      {"n": 2, "status": 429, "retry_after": 3}
  rotate_token   {}                                                        -> {"token": "..."}
  add_token_review {"token": ..., "username": ..., "extra": {...}, "groups": [...],
                    "uid": ..., "audiences": [...]}
  requests       {}  -> [{"method", "path", "query", "status", "content_type", "accept", "time"}]

In-process (tests/kube on sys.path):

  from fake_apiserver import FakeApiServer
  srv = FakeApiServer(state_dir); port = srv.start(); srv.apply({...}); ...; srv.stop()

with the same operations as methods: apply(obj_dict_or_yaml), delete(kind, namespace, name),
compact(), drop_watches(clean=False), set_delay(seconds), fail_next(n, status, retry_after=None),
rotate_token(), add_token_review(token, username, extra, groups=None, uid=None, audiences=None),
requests() -> [(method, path, query)]; and for assertions request_log() (with status, Accept,
Content-Type, time), wait_for_request(predicate, timeout), watches() (the open ones),
get(kind, namespace, name), resource_version(). Attributes: port, url, token, ca_file,
token_file, kubeconfig.

What is modelled after kube-apiserver 1.32 and what is not:
- One global resourceVersion counter over all resources, as etcd's revision. `compact()` makes
  every older resourceVersion unusable: a watch from one gets HTTP 200 and a single ERROR event
  with a Status of code 410, reason Expired; an exact list at one, or a continue token taken at
  one, gets HTTP 410.
- Watches send synthetic ADDED events for the current state when started without a
  resourceVersion (or with "0"), then every change in order; a change that moves an object into or
  out of a watch's selectors arrives as ADDED or DELETED. Bookmarks carry an empty object with
  only the resourceVersion, every `bookmark_interval` seconds when asked for, and once before a
  `timeoutSeconds` expiry closes the stream.
- Lists come back in key order (namespace/name), with continue tokens in the real server's format
  and remainingItemCount when no selector filters.
- Discovery both aggregated (apidiscovery.k8s.io/v2, what client-go asks for first) and per
  group; OpenAPI v3 only as deep as kubectl's apply looks (fieldValidation on each PATCH), v2
  without definitions. Tables (kubectl's server-side printing) for every resource; pods,
  namespaces, services, configmaps and the custom resources with their own columns.
- fieldValidation checks the top level and metadata only (no schemas below them).
- TokenReview answers from add_token_review(); a token registered without audiences is good for
  any audience asked, and one asked for no audience gets the API server's
  (https://kubernetes.default.svc.cluster.local).
- Namespaces default, kube-system, kube-public and kube-node-lease exist from the start. Creating
  an object through the API in a missing namespace fails as it does with NamespaceLifecycle;
  `apply()` (the test's own hand) does not check.
- Pods are deleted at once (no kubelet to finish a graceful deletion); deleting a namespace
  deletes its objects at once. No admission, no defaulting beyond what is written here, no
  server-side apply field ownership (apply patches merge like a merge patch).
"""

import argparse
import base64
import bisect
import collections
import copy
import datetime
import ipaddress
import json
import os
import random
import re
import secrets
import select
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

import yaml

try:
    _YamlLoader = yaml.CSafeLoader
except AttributeError:  # libyaml missing: slower, same result
    _YamlLoader = yaml.SafeLoader

SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0",
    "gitCommit": "70d3cc986aa8221cd1dfb1121852688902d3bf53",
    "gitTreeState": "clean",
    "buildDate": "2024-12-11T17:59:15Z",
    "goVersion": "go1.23.3",
    "compiler": "gc",
    "platform": "linux/amd64",
}

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
# kube-apiserver's default --min-request-timeout is 1800 s; a watch without timeoutSeconds lasts a
# random time between one and two of it.
DEFAULT_WATCH_TIMEOUT = 1800.0
# How long a list or watch with a resourceVersion ahead of the server waits before it gives up
# (the watch cache's "Too large resource version" wait).
TOO_LARGE_RV_WAIT = 3.0

# ---------------------------------------------------------------------------------------------
# Resource registry


class Resource(NamedTuple):
    group: str  # "" for core
    versions: tuple  # served versions, preferred first
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple = ()
    categories: tuple = ()
    verbs: tuple = ("create", "delete", "deletecollection", "get", "list", "patch", "update",
                    "watch")
    status_subresource: bool = False
    # Field selectors the real server accepts besides metadata.name and metadata.namespace.
    field_labels: tuple = ()
    # Built-in types (not CRDs): list items carry no kind/apiVersion, strategic merge patch works.
    builtin: bool = True
    hash: str = ""

    def api_version(self, version=None):
        v = version or self.versions[0]
        return f"{self.group}/{v}" if self.group else v


_POD_FIELDS = ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
               "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP",
               "status.nominatedNodeName")
_ISTIO = ("v1", "v1beta1")
RESOURCES = [
    Resource("", ("v1",), "pods", "pod", "Pod", True, ("po",), ("all",), status_subresource=True,
             field_labels=_POD_FIELDS, hash="xPOwRZ+Yhw8="),
    Resource("", ("v1",), "namespaces", "namespace", "Namespace", False, ("ns",),
             verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
             status_subresource=True, field_labels=("status.phase",), hash="Q3oi5N2YM8M="),
    Resource("", ("v1",), "services", "service", "Service", True, ("svc",), ("all",),
             status_subresource=True, hash="0/CO1lhkEBI="),
    Resource("", ("v1",), "configmaps", "configmap", "ConfigMap", True, ("cm",),
             hash="qFsyl6wFWjQ="),
    Resource("discovery.k8s.io", ("v1",), "endpointslices", "endpointslice", "EndpointSlice", True,
             field_labels=("addressType",), hash="Nx3SIv6I0mE="),
    Resource("security.istio.io", _ISTIO, "peerauthentications", "peerauthentication",
             "PeerAuthentication", True, ("pa",), ("istio-io", "security-istio-io"),
             status_subresource=True, builtin=False),
    Resource("security.istio.io", _ISTIO, "authorizationpolicies", "authorizationpolicy",
             "AuthorizationPolicy", True, ("ap",), ("istio-io", "security-istio-io"),
             status_subresource=True, builtin=False),
    Resource("security.istio.io", _ISTIO, "requestauthentications", "requestauthentication",
             "RequestAuthentication", True, ("ra",), ("istio-io", "security-istio-io"),
             status_subresource=True, builtin=False),
    Resource("gateway.networking.k8s.io", ("v1",), "gateways", "gateway", "Gateway", True,
             ("gtw",), ("gateway-api",), status_subresource=True, builtin=False),
    Resource("authentication.k8s.io", ("v1",), "tokenreviews", "", "TokenReview", False,
             verbs=("create",)),
]
_BY_GROUP_PLURAL = {(r.group, r.plural): r for r in RESOURCES}
GROUPS = collections.OrderedDict()
for _r in RESOURCES:
    if _r.group:
        GROUPS.setdefault(_r.group, [])
        for _v in _r.versions:
            if _v not in GROUPS[_r.group]:
                GROUPS[_r.group].append(_v)


def find_resource(kind_or_plural, api_version=None):
    """A resource by kind ("Pod"), plural ("pods"), singular or short name, any case."""
    k = kind_or_plural.lower()
    group = None
    if api_version:
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    for r in RESOURCES:
        if group is not None and r.group != group:
            continue
        if k in (r.kind.lower(), r.plural, r.singular) or k in r.short_names:
            return r
    return None


# ---------------------------------------------------------------------------------------------
# Errors as the API server reports them (a metav1.Status)


class ApiError(Exception):

    def __init__(self, code, reason, message, details=None, headers=None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self):
        s = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
             "message": self.message, "reason": self.reason}
        if self.details is not None:
            s["details"] = self.details
        s["code"] = self.code
        return s


def _qualified(res):
    return f"{res.plural}.{res.group}" if res.group else res.plural


def not_found(res, name):
    d = {"name": name, "kind": res.plural}
    if res.group:
        d["group"] = res.group
    return ApiError(404, "NotFound", f'{_qualified(res)} "{name}" not found', d)


def gone(message):
    return ApiError(410, "Expired", message)


def bad_request(message):
    return ApiError(400, "BadRequest", message)


def invalid(res, name, causes):
    msg = "; ".join(f"{c['field']}: {c['message']}" for c in causes)
    d = {"name": name, "kind": res.kind, "causes": [
        {"reason": c.get("reason", "FieldValueInvalid"), "message": c["message"],
         "field": c["field"]} for c in causes]}
    if res.group:
        d["group"] = res.group
    return ApiError(422, "Invalid", f'{res.kind} "{name}" is invalid: {msg}', d)


NOT_FOUND_PATH = ApiError(404, "NotFound", "the server could not find the requested resource",
                          {})

_STATUS_FOR_CODE = {
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: injected failure"),
    502: ("InternalError", "Internal error occurred: injected failure (bad gateway)"),
    503: ("ServiceUnavailable", "The server is currently unable to handle the request"),
    504: ("Timeout", "The server was unable to return a response in the time allotted, but may "
          "still be processing the request"),
}

# ---------------------------------------------------------------------------------------------
# Selectors

_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _split_top(s):
    """Splits on commas outside parentheses."""
    out, depth, cur = [], 0, []
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def parse_label_selector(text):
    """Returns a predicate on a labels dict; raises ApiError 400 as the real parser does."""
    if text is None or text.strip() == "":
        return None
    reqs = []
    for part in _split_top(text):
        p = part.strip()
        if not p:
            raise bad_request(f"unable to parse requirement: found '', expected: identifier")
        m = re.match(r"^(\S+?)\s+(in|notin)\s*\((.*)\)$", p)
        if m:
            key, op, vals = m.group(1), m.group(2), [v.strip() for v in m.group(3).split(",")]
            vals = [v for v in vals if v != ""] if op == "notin" or len(vals) > 1 else vals
            reqs.append((key, op, set(vals)))
        elif p.startswith("!"):
            reqs.append((p[1:].strip(), "!exists", None))
        else:
            m = re.match(r"^([^=!<>\s]+)\s*(==|=|!=|<|>)\s*(\S*)$", p)
            if m:
                key, op, val = m.groups()
                op = {"==": "=", }.get(op, op)
                if op in ("<", ">"):
                    try:
                        int(val)
                    except ValueError:
                        raise bad_request(f"unable to parse requirement: for 'Gt', 'Lt' operators, "
                                          f"the value must be an integer")
                elif not _LABEL_VALUE.match(val) or len(val) > 63:
                    raise bad_request(f"unable to parse requirement: values[0][{key}]: Invalid "
                                      f"value: \"{val}\": a valid label must be an empty string or "
                                      "consist of alphanumeric characters, '-', '_' or '.'")
                reqs.append((key, op, val))
            elif re.match(r"^\S+$", p):
                reqs.append((p, "exists", None))
            else:
                raise bad_request(f"unable to parse requirement: found '{p}', expected: "
                                  "in, notin, =, ==, !=, gt, lt")
        key = reqs[-1][0]
        if not _LABEL_KEY.match(key):
            raise bad_request(f"unable to parse requirement: key: Invalid value: \"{key}\": name "
                              "part must consist of alphanumeric characters, '-', '_' or '.'")

    def match(labels):
        labels = labels or {}
        for key, op, val in reqs:
            has = key in labels
            if op == "=" and labels.get(key) != val:
                return False
            if op == "!=" and has and labels[key] == val:
                return False
            if op == "in" and (not has or labels[key] not in val):
                return False
            if op == "notin" and has and labels[key] in val:
                return False
            if op == "exists" and not has:
                return False
            if op == "!exists" and has:
                return False
            if op in ("<", ">"):
                try:
                    lv = int(labels[key])
                except (KeyError, ValueError):
                    return False
                if (op == "<" and not lv < int(val)) or (op == ">" and not lv > int(val)):
                    return False
        return True

    return match


def _field_value(obj, path):
    cur = obj
    for seg in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(seg)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(text, res):
    if text is None or text.strip() == "":
        return None
    reqs = []
    allowed = {"metadata.name", "metadata.namespace"} | set(res.field_labels)
    for part in text.split(","):
        p = part.strip()
        m = re.match(r"^([^=!]+?)\s*(==|=|!=)\s*(.*)$", p)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{p}'")
        field, op, val = m.group(1).strip(), m.group(2), m.group(3).strip()
        if field not in allowed:
            raise bad_request(f'field label not supported: {field}')
        reqs.append((field, op != "!=", val))

    def match(obj):
        for field, eq, val in reqs:
            if (_field_value(obj, field) == val) != eq:
                return False
        return True

    return match


# ---------------------------------------------------------------------------------------------
# Patches


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def _ptr(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"the JSON patch path '{path}' is not a JSON pointer")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc, ops):
    """RFC 6902 on a deep copy of doc."""
    doc = copy.deepcopy(doc)
    if not isinstance(ops, list):
        raise bad_request("json patch must be a list of operations")

    def parent(path):
        toks = _ptr(path)
        if not toks:
            raise ApiError(422, "Invalid", "the JSON patch cannot replace the root")
        cur = doc
        for t in toks[:-1]:
            cur = cur[int(t)] if isinstance(cur, list) else cur[t]
        return cur, toks[-1]

    def get(path):
        cur = doc
        for t in _ptr(path):
            cur = cur[int(t)] if isinstance(cur, list) else cur[t]
        return cur

    try:
        for op in ops:
            kind, path = op.get("op"), op.get("path", "")
            if kind == "test":
                if get(path) != op.get("value"):
                    raise ApiError(422, "Invalid", f"the JSON patch test on '{path}' failed")
                continue
            if kind in ("move", "copy"):
                value = copy.deepcopy(get(op["from"]))
                if kind == "move":
                    p, k = parent(op["from"])
                    del p[int(k) if isinstance(p, list) else k]
                kind, op = "add", {"path": path, "value": value}
            p, k = parent(path)
            if kind == "add":
                if isinstance(p, list):
                    p.insert(len(p) if k == "-" else int(k), copy.deepcopy(op["value"]))
                else:
                    p[k] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del p[int(k) if isinstance(p, list) else k]
            elif kind == "replace":
                if isinstance(p, list):
                    p[int(k)] = copy.deepcopy(op["value"])
                else:
                    if k not in p:
                        raise KeyError(k)
                    p[k] = copy.deepcopy(op["value"])
            else:
                raise bad_request(f"unexpected json patch operation {kind!r}")
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our "
                       f"request: json patch could not be applied: {e!r}")
    return doc


# Merge keys of the lists kubectl's strategic merge patches touch in the built-in types.
_SMP_MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "env": "name", "volumes": "name", "volumeMounts": "mountPath", "imagePullSecrets": "name",
    "hostAliases": "ip", "ownerReferences": "uid", "readinessGates": "conditionType",
    "conditions": "type", "containerStatuses": "name", "podIPs": "ip", "ephemeralContainerStatuses":
    "name", "initContainerStatuses": "name", "volumeDevices": "devicePath",
    "topologySpreadConstraints": "topologyKey", "resourceClaims": "name",
}
_SMP_PRIMITIVE_MERGE = {"finalizers"}


def _list_merge_key(field, items):
    if field == "ports":
        sample = next((i for i in items if isinstance(i, dict)), {})
        return "containerPort" if "containerPort" in sample else "port"
    return _SMP_MERGE_KEYS.get(field)


def strategic_merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for k, v in patch.items():
        if k in ("$patch", "$retainKeys") or k.startswith("$setElementOrder/"):
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            field = k.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [x for x in result[field] if x not in v]
            continue
        if v is None:
            result.pop(k, None)
            continue
        cur = result.get(k)
        if isinstance(v, dict):
            merged = strategic_merge_patch(cur, v)
            if merged is None:
                result.pop(k, None)
            else:
                result[k] = merged
        elif isinstance(v, list) and k in _SMP_PRIMITIVE_MERGE and isinstance(cur, list):
            result[k] = cur + [x for x in v if x not in cur]
        elif isinstance(v, list) and isinstance(cur, list) and _list_merge_key(k, v + cur):
            key = _list_merge_key(k, v + cur)
            if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in v):
                result[k] = [{a: b for a, b in i.items() if a != "$patch"} for i in v
                             if not (isinstance(i, dict) and i.get("$patch") == "replace" and
                                     len(i) == 1)]
                continue
            merged = list(cur)
            for item in v:
                if not isinstance(item, dict):
                    continue
                idx = next((n for n, c in enumerate(merged)
                            if isinstance(c, dict) and c.get(key) == item.get(key)), None)
                if item.get("$patch") == "delete":
                    if idx is not None:
                        del merged[idx]
                elif idx is None:
                    merged.append({a: b for a, b in item.items() if not a.startswith("$")})
                else:
                    merged[idx] = strategic_merge_patch(merged[idx], item)
            order = patch.get(f"$setElementOrder/{k}")
            if isinstance(order, list):
                rank = {o.get(key): n for n, o in enumerate(order) if isinstance(o, dict)}
                merged.sort(key=lambda i: rank.get(i.get(key), len(rank)))
            result[k] = merged
        else:
            result[k] = copy.deepcopy(v)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


# ---------------------------------------------------------------------------------------------
# Time and tables


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _timestamp(t=None):
    return (t or _now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(s):
    try:
        return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc)
    except (TypeError, ValueError):
        return None


def human_duration(seconds):
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if dy == 0 else f"{hours // 24 // 365}y{dy}d"
    return f"{hours // 24 // 365}y"


def _age(obj):
    t = _parse_ts(obj.get("metadata", {}).get("creationTimestamp"))
    if t is None:
        return "<unknown>"
    return human_duration((_now() - t).total_seconds())


def _col(name, typ="string", fmt="", desc="", priority=0):
    return {"name": name, "type": typ, "format": fmt, "description": desc, "priority": priority}


_NAME_DESC = ("Name must be unique within a namespace. Is required when creating resources, "
              "although some resources may allow a client to request the generation of an "
              "appropriate name automatically. Name is primarily intended for creation idempotence "
              "and configuration definition. Cannot be updated. More info: "
              "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names")
_AGE_DESC = ("CreationTimestamp is a timestamp representing the server time when this object was "
             "created.")


def _pod_row(pod):
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    containers = spec.get("containers") or []
    cstat = status.get("containerStatuses") or []
    ready = sum(1 for c in cstat if c.get("ready"))
    restarts = sum(int(c.get("restartCount") or 0) for c in cstat)
    reason = status.get("reason") or status.get("phase") or ""
    for c in cstat:
        st = c.get("state") or {}
        if st.get("waiting", {}).get("reason"):
            reason = st["waiting"]["reason"]
        elif st.get("terminated", {}).get("reason"):
            reason = st["terminated"]["reason"]
    if pod.get("metadata", {}).get("deletionTimestamp"):
        reason = "Terminating"
    gates = spec.get("readinessGates") or []
    return [pod["metadata"]["name"], f"{ready}/{len(containers)}", reason, str(restarts),
            _age(pod), status.get("podIP") or "<none>", spec.get("nodeName") or "<none>",
            status.get("nominatedNodeName") or "<none>",
            f"0/{len(gates)}" if gates else "<none>"]


def _service_row(svc):
    spec = svc.get("spec") or {}
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" if not p.get("nodePort") else
                     f"{p.get('port')}:{p.get('nodePort')}/{p.get('protocol', 'TCP')}"
                     for p in spec.get("ports") or []) or "<none>"
    sel = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items()))
    ext = ",".join(spec.get("externalIPs") or []) or "<none>"
    return [svc["metadata"]["name"], spec.get("type", "ClusterIP"), spec.get("clusterIP") or
            "<none>", ext, ports, _age(svc), sel or "<none>"]


_TABLES = {
    "pods": ([_col("Name", fmt="name", desc=_NAME_DESC),
              _col("Ready", desc="The aggregate readiness state of this pod for accepting "
                   "traffic."),
              _col("Status", desc="The aggregate status of the containers in this pod."),
              _col("Restarts", desc="The number of times the containers in this pod have been "
                   "restarted and when the last container in this pod has restarted."),
              _col("Age", desc=_AGE_DESC),
              _col("IP", desc="IP address allocated to the pod. Routable at least within the "
                   "cluster. Empty if not yet allocated.", priority=1),
              _col("Node", desc="NodeName is a request to schedule this pod onto a specific "
                   "node.", priority=1),
              _col("Nominated Node", desc="nominatedNodeName is set only when this pod preempts "
                   "other pods on the node.", priority=1),
              _col("Readiness Gates", desc="If specified, all readiness gates will be evaluated "
                   "for pod readiness.", priority=1)], _pod_row),
    "namespaces": ([_col("Name", fmt="name", desc=_NAME_DESC),
                    _col("Status", desc="The status of the namespace"),
                    _col("Age", desc=_AGE_DESC)],
                   lambda o: [o["metadata"]["name"], (o.get("status") or {}).get("phase",
                                                                               "Active"),
                              _age(o)]),
    "services": ([_col("Name", fmt="name", desc=_NAME_DESC), _col("Type"), _col("Cluster-IP"),
                  _col("External-IP"), _col("Port(s)"), _col("Age", desc=_AGE_DESC),
                  _col("Selector", priority=1)], _service_row),
    "configmaps": ([_col("Name", fmt="name", desc=_NAME_DESC), _col("Data", "integer"),
                    _col("Age", desc=_AGE_DESC)],
                   lambda o: [o["metadata"]["name"],
                              len(o.get("data") or {}) + len(o.get("binaryData") or {}),
                              _age(o)]),
}


def _programmed(gw):
    for c in (gw.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Programmed":
            return c.get("status", "")
    return ""


# The printer columns of the custom resources' definitions (Istio's and Gateway API's CRDs).
_CRD_COLUMNS = {
    "peerauthentications": ([_col("Mode", desc="Defines the mTLS mode used for peer "
                                  "authentication.")],
                            lambda o: [((o.get("spec") or {}).get("mtls") or {}).get("mode")]),
    "authorizationpolicies": ([_col("Action", desc="The operation to take.")],
                              lambda o: [(o.get("spec") or {}).get("action")]),
    "gateways": ([_col("Class"), _col("Address"), _col("Programmed")],
                 lambda o: [(o.get("spec") or {}).get("gatewayClassName"),
                            ",".join(a.get("value", "") for a in
                                     (o.get("status") or {}).get("addresses") or []) or None,
                            _programmed(o) or None]),
}


def table_for(res, objs, list_meta, first=True):
    """A meta.k8s.io/v1 Table of objs, rows carrying PartialObjectMetadata as includeObject's
    default (Metadata) does. Watch events after the first omit the column definitions, as the
    real server does to save bandwidth."""
    if res.plural in _TABLES:
        cols, row = _TABLES[res.plural]
    elif not res.builtin:
        extra_cols, extra = _CRD_COLUMNS.get(res.plural, ([], lambda o: []))
        cols = [_col("Name", fmt="name", desc=_NAME_DESC)] + extra_cols + [
            _col("Age", "date", desc=_AGE_DESC)]
        row = lambda o: [o["metadata"]["name"]] + extra(o) + [_age(o)]
    else:
        cols, row = ([_col("Name", fmt="name", desc=_NAME_DESC),
                      _col("Created At", "date", desc=_AGE_DESC)],
                     lambda o: [o["metadata"]["name"], o["metadata"].get("creationTimestamp")])
    rows = [{"cells": row(o), "object": {"kind": "PartialObjectMetadata",
                                         "apiVersion": "meta.k8s.io/v1",
                                         "metadata": o.get("metadata", {})}} for o in objs]
    t = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta}
    if first:
        t["columnDefinitions"] = cols
    t["rows"] = rows
    return t


# ---------------------------------------------------------------------------------------------
# Certificates


def _make_certs(state_dir):
    """A CA and a server certificate for 127.0.0.1 and kubernetes.default.svc (ECDSA P-256),
    kept in state_dir so a restarted server in the same directory keeps its identity."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_crt, srv_crt, srv_key = (os.path.join(state_dir, n)
                                for n in ("ca.crt", "server.crt", "server.key"))
    if all(os.path.exists(p) for p in (ca_crt, srv_crt, srv_key)):
        return srv_crt, srv_key
    now = datetime.datetime.utcnow() - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-apiserver-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))] + [
        x509.DNSName(n) for n in ("kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
                                  "kubernetes.default", "kubernetes", "localhost")]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    _write_atomic(srv_key, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), 0o600)
    _write_atomic(srv_crt, cert.public_bytes(pem))
    _write_atomic(ca_crt, ca.public_bytes(pem))
    return srv_crt, srv_key


def _write_atomic(path, data, mode=0o644):
    if isinstance(data, str):
        data = data.encode()
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The store: objects, history, watchers


class Event(NamedTuple):
    rv: int
    res: Resource
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict  # the new object (for DELETED: the last state, with the deletion's RV)
    old: dict  # the previous object, or None


def _key(ns, name):
    return f"{ns}/{name}" if ns else name


class Store:
    """Every object of every resource under one lock; one global resourceVersion."""

    def __init__(self):
        self.cond = threading.Condition()
        self.rv = 1
        self.compacted = 1  # watches and exact reads need rv >= compacted
        self.objects = {r: {} for r in RESOURCES}
        self.history = []  # Event, in rv order, since the last compaction
        self.history_rvs = []
        self.watchers = set()
        # Service clusterIPs are allocated from 198.19.240.1 up (test addresses only, in
        # 198.18.0.0/15; a real cluster would use its service CIDR).
        self.cluster_ip = int(ipaddress.IPv4Address("198.19.240.1"))

    # --- called with self.cond held ---
    def _commit(self, res, type_, obj, old):
        self.rv += 1
        obj = dict(obj)
        obj["metadata"] = dict(obj["metadata"], resourceVersion=str(self.rv))
        key = _key(obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if type_ == "DELETED":
            self.objects[res].pop(key, None)
        else:
            self.objects[res][key] = obj
        ev = Event(self.rv, res, type_, obj, old)
        self.history.append(ev)
        self.history_rvs.append(self.rv)
        for w in list(self.watchers):
            if w.res is res:
                w.queue.append(ev)
        if self.watchers:
            self.cond.notify_all()
        return obj

    def state_at(self, res, rv):
        """res's objects as they were at rv (rv >= compacted)."""
        objs = self.objects[res]
        idx = bisect.bisect_right(self.history_rvs, rv)
        if idx == len(self.history):
            return objs
        objs = dict(objs)
        for ev in reversed(self.history[idx:]):
            if ev.res is not res:
                continue
            key = _key(ev.obj["metadata"].get("namespace"), ev.obj["metadata"]["name"])
            if ev.type == "ADDED":
                objs.pop(key, None)
            else:
                objs[key] = ev.old
        return objs

    def events_after(self, res, rv):
        idx = bisect.bisect_right(self.history_rvs, rv)
        return [e for e in self.history[idx:] if e.res is res]

    def compact(self):
        self.compacted = self.rv
        self.history = []
        self.history_rvs = []


def _clone(obj):
    """A deep copy of plain JSON data; several times faster than copy.deepcopy on it."""
    return json.loads(json.dumps(obj))


_uid_random = random.Random(secrets.randbits(64))
_uid_lock = threading.Lock()


def _uid():
    with _uid_lock:
        return str(uuid.UUID(int=_uid_random.getrandbits(128), version=4))


def _new_meta(meta, ns, res):
    meta = dict(meta)
    if res.namespaced:
        meta["namespace"] = ns
    else:
        meta.pop("namespace", None)
    meta["uid"] = _uid()
    meta["creationTimestamp"] = _timestamp()
    meta.pop("resourceVersion", None)
    meta.pop("deletionTimestamp", None)
    return meta


def _set_generation(res, new, old):
    """metadata.generation as custom resources have it: 1 at creation, one more for each change
    outside metadata and status."""
    if res.builtin:
        return
    if old is None:
        new["metadata"]["generation"] = 1
        return
    gen = old["metadata"].get("generation", 1)
    body = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}
    new["metadata"]["generation"] = gen + 1 if body(old) != body(new) else gen


def _same_content(a, b):
    """Whether an update changes nothing (the real server then writes nothing)."""
    strip = lambda o: {**o, "metadata": {k: v for k, v in o.get("metadata", {}).items()
                                         if k not in ("resourceVersion", "managedFields")}}
    return strip(a) == strip(b)


# ---------------------------------------------------------------------------------------------
# Watches


class Watch:

    def __init__(self, res, ns="", query=None):
        self.res = res
        self.ns = ns or ""
        self.query = query or {}
        self.queue = collections.deque()
        self.drop = False  # end abruptly (no terminating chunk)
        self.stop = False  # end cleanly


class RequestRecord(NamedTuple):
    method: str
    path: str
    query: dict  # parameter -> value (the last one when repeated)


_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class FakeApiServer:
    """kube-apiserver's protocol on one HTTPS port; see the module docstring."""

    def __init__(self, state_dir, listen="127.0.0.1:0", bookmark_interval=3.0,
                 watch_timeout=DEFAULT_WATCH_TIMEOUT):
        self.state_dir = os.path.abspath(state_dir)
        os.makedirs(self.state_dir, exist_ok=True)
        host, _, port = listen.rpartition(":")
        self._host = host.strip("[]") or "127.0.0.1"
        self._listen_port = int(port or 0)
        self.bookmark_interval = float(bookmark_interval)
        self.watch_timeout = float(watch_timeout)
        self.store = Store()
        self._ctl = threading.Lock()  # scenario state below
        self._tokens = set()
        self._token_reviews = {}
        self._delay = 0.0
        self._fail = collections.deque()  # (status, retry_after)
        self._log = []
        self._conns = set()
        self._httpd = None
        self._thread = None
        self.port = None
        self.ca_file = os.path.join(self.state_dir, "ca.crt")
        self.token_file = os.path.join(self.state_dir, "token")
        self.kubeconfig = os.path.join(self.state_dir, "kubeconfig")
        self.control_token_file = os.path.join(self.state_dir, "control-token")
        with self.store.cond:
            for ns in DEFAULT_NAMESPACES:
                self._apply_locked({"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": ns}})

    # --- lifecycle ---

    def start(self):
        cert, key = _make_certs(self.state_dir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        # Only HTTP/1.1: clients that offer h2 fall back, as they would behind a proxy that does.
        ctx.set_alpn_protocols(["http/1.1"])
        token = None
        if os.path.exists(self.token_file):
            token = open(self.token_file).read().strip() or None
        self._set_token(token or secrets.token_urlsafe(32))
        if not os.path.exists(self.control_token_file):
            _write_atomic(self.control_token_file, secrets.token_urlsafe(32), 0o600)
        self.control_token = open(self.control_token_file).read().strip()

        server = self

        class Httpd(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 256  # many agents (re)connecting at once
            address_family = socket.AF_INET6 if ":" in server._host else socket.AF_INET

            def finish_request(self, request, client_address):
                # The handshake runs on the connection's own thread, so a slow client never
                # holds up accept().
                try:
                    request.settimeout(30)
                    tls = ctx.wrap_socket(request, server_side=True)
                    tls.settimeout(None)
                except (OSError, ssl.SSLError):
                    return
                with server._ctl:
                    server._conns.add(tls)
                try:
                    Handler(tls, client_address, self)
                except (OSError, ssl.SSLError):
                    pass
                finally:
                    with server._ctl:
                        server._conns.discard(tls)
                    try:
                        tls.close()
                    except OSError:
                        pass

            def shutdown_request(self, request):
                try:
                    request.close()
                except OSError:
                    pass

        class Handler(_Handler):
            api = server

        self._httpd = Httpd((self._host, self._listen_port), Handler)
        self.port = self._httpd.server_address[1]
        self._write_kubeconfig()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-apiserver",
                                        daemon=True)
        self._thread.start()
        return self.port

    def stop(self):
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self.drop_watches()
        with self._ctl:
            conns = list(self._conns)
        for c in conns:
            try:
                socket.socket.shutdown(c, socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        self._thread.join(timeout=10)
        self._httpd = None

    @property
    def url(self):
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"https://{host}:{self.port}"

    @property
    def token(self):
        with self._ctl:
            return next(iter(self._tokens))

    def _write_kubeconfig(self):
        cfg = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "fake", "cluster": {"server": self.url,
                                                      "certificate-authority": self.ca_file}}],
            "users": [{"name": "fake", "user": {"tokenFile": self.token_file}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                      "namespace": "default"}}],
            "current-context": "fake",
        }
        _write_atomic(self.kubeconfig, yaml.safe_dump(cfg), 0o600)

    def _set_token(self, token):
        with self._ctl:
            self._tokens = {token}
        _write_atomic(self.token_file, token, 0o600)

    # --- scenario controls ---

    def apply(self, obj):
        """Creates or replaces objects as the test's own hand: a dict, a list of dicts, a
        `kind: List`, or text: YAML (one or many documents) or JSON (an object, a list, a
        `kind: List`; much faster for thousands). Status is kept as given; namespaces need not
        exist. Returns the stored object (a list when given several)."""
        objs = self._objects_of(obj)
        out = []
        with self.store.cond:
            for o in objs:
                out.append(self._apply_locked(o))
        return out if len(out) != 1 else out[0]

    @staticmethod
    def _objects_of(obj):
        if isinstance(obj, (str, bytes)):
            text = obj.decode() if isinstance(obj, bytes) else obj
            try:
                # JSON is YAML too, and parses many times faster: bulk loads should use it.
                obj = json.loads(text) if text.lstrip()[:1] in ("{", "[") else None
            except ValueError:
                obj = None
            if obj is None:
                obj = [d for d in yaml.load_all(text, Loader=_YamlLoader) if d]
        if isinstance(obj, dict):
            obj = [obj]
        out = []
        for o in obj:
            if o.get("kind", "").endswith("List") and isinstance(o.get("items"), list):
                out.extend(o["items"])
            else:
                out.append(o)
        return out

    def _apply_locked(self, o):
        if not isinstance(o, dict):
            raise ValueError(f"fake apiserver: not an object: {o!r:.80}")
        res = find_resource(str(o.get("kind", "")), o.get("apiVersion"))
        if res is None or "get" not in res.verbs:
            raise ValueError(f"fake apiserver: no resource for {o.get('apiVersion')} "
                             f"{o.get('kind')}")
        # Our own copy: the caller may change its dicts afterwards.
        new = _clone(o)
        meta = new.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            raise ValueError("fake apiserver: object without metadata.name")
        ns = (meta.get("namespace") or "default") if res.namespaced else ""
        key = _key(ns, meta["name"])
        old = self.store.objects[res].get(key)
        new["apiVersion"] = res.api_version()
        if old is None:
            new["metadata"] = _new_meta(meta, ns, res)
            _set_generation(res, new, None)
            if res.plural == "namespaces":
                new.setdefault("status", {"phase": "Active"})
                new["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = \
                    meta["name"]
            return self.store._commit(res, "ADDED", new, None)
        new["metadata"] = dict(meta, uid=old["metadata"]["uid"],
                               creationTimestamp=old["metadata"]["creationTimestamp"],
                               resourceVersion=old["metadata"]["resourceVersion"])
        if res.namespaced:
            new["metadata"]["namespace"] = ns
        _set_generation(res, new, old)
        if _same_content(old, new):
            return old
        return self.store._commit(res, "MODIFIED", new, old)

    def delete(self, kind, namespace, name):
        """Deletes one object; returns its last state, or None when there was none."""
        res = find_resource(kind)
        if res is None:
            raise ValueError(f"fake apiserver: unknown kind {kind}")
        with self.store.cond:
            return self._delete_locked(res, (namespace or "") if res.namespaced else "", name)

    def _delete_locked(self, res, ns, name):
        if res.namespaced and not ns:
            ns = "default"
        old = self.store.objects[res].get(_key(ns, name))
        if old is None:
            return None
        if res.plural == "namespaces":
            for r in RESOURCES:
                if r.namespaced:
                    for o in [o for o in self.store.objects[r].values()
                              if o["metadata"].get("namespace") == name]:
                        self.store._commit(r, "DELETED", o, o)
        return self.store._commit(res, "DELETED", old, old)

    def get(self, kind, namespace, name):
        res = find_resource(kind)
        with self.store.cond:
            return self.store.objects[res].get(_key(namespace if res.namespaced else "", name))

    def resource_version(self):
        with self.store.cond:
            return self.store.rv

    def compact(self):
        """Every resourceVersion older than the current one becomes 410 Gone."""
        with self.store.cond:
            self.store.compact()
            return self.store.rv

    def drop_watches(self, clean=False):
        """Ends every open watch: abruptly (the connection closes mid-stream) or, with clean,
        as a server-side timeout does (the chunked stream ends properly)."""
        with self.store.cond:
            ws = list(self.store.watchers)
            for w in ws:
                if clean:
                    w.stop = True
                else:
                    w.drop = True
            self.store.cond.notify_all()
        return len(ws)

    def set_delay(self, seconds):
        """Every API request waits this long before it is handled."""
        with self._ctl:
            self._delay = float(seconds)

    def fail_next(self, n, status, retry_after=None):
        """The next n API requests fail with status (429 or 5xx), with Retry-After when given."""
        with self._ctl:
            for _ in range(int(n)):
                self._fail.append((int(status), retry_after))

    def rotate_token(self):
        """Writes a new token to DIR/token; the old one gets 401 from now on."""
        token = secrets.token_urlsafe(32)
        self._set_token(token)
        return token

    def add_token_review(self, token, username, extra=None, groups=None, uid=None,
                         audiences=None):
        """TokenReview answers authenticated for token with this user. audiences, when given,
        are the token's own; a review naming none of them is refused."""
        with self._ctl:
            self._token_reviews[token] = {
                "username": username, "uid": uid or str(uuid.uuid4()),
                "groups": list(groups) if groups is not None else [
                    "system:serviceaccounts", "system:authenticated"],
                "extra": {k: list(v) if isinstance(v, (list, tuple)) else [v]
                          for k, v in (extra or {}).items()},
                "audiences": list(audiences) if audiences is not None else None,
            }

    def requests(self):
        """(method, path, query) of every request seen, in order."""
        with self._ctl:
            return [RequestRecord(r["method"], r["path"], dict(r["query"])) for r in self._log]

    def request_log(self):
        """Like requests(), with status, Accept, Content-Type, User-Agent and arrival time
        (time.time()) of each."""
        with self._ctl:
            return [dict(r) for r in self._log]

    def wait_for_request(self, predicate, timeout=10.0):
        """Waits until a request satisfying predicate(RequestRecord) has arrived; returns it, or
        None after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for r in self.requests():
                if predicate(r):
                    return r
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def watches(self):
        """The watches open now: (resource plural, namespace or "", query) each."""
        with self.store.cond:
            return [(w.res.plural, w.ns, dict(w.query)) for w in self.store.watchers]

    def clear_requests(self):
        with self._ctl:
            self._log.clear()


# ---------------------------------------------------------------------------------------------
# HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api = None  # FakeApiServer, set by the subclass

    def log_message(self, fmt, *args):
        pass

    def send_response(self, code, message=None):
        # As kube-apiserver: a Date header and no Server header.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_PUT(self):
        self._serve("PUT")

    def do_PATCH(self):
        self._serve("PATCH")

    def do_DELETE(self):
        self._serve("DELETE")

    def do_HEAD(self):
        self._serve("HEAD")

    # --- plumbing ---

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline(65537)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, code, body, ctype="application/json", headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body, separators=(",", ":")).encode()
        elif isinstance(body, str):
            body = body.encode()
        self._set_status(code)
        self.send_response(code)
        self.send_header("Audit-Id", self._audit_id)
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        for w in self._warnings:
            self.send_header("Warning", '299 - "%s"' % w.replace('"', '\\"'))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _set_status(self, code):
        # Recorded before the answer leaves, so a client that got it finds it in the log.
        self._status = code
        if self._record is not None:
            with self.api._ctl:
                self._record["status"] = code

    def _error(self, e):
        self._send(e.code, e.status(), headers=e.headers)

    def _serve(self, method):
        self._audit_id = _uid()
        self._warnings = []
        self._status = 0
        self._record = None
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        api = self.api
        record = {"method": method, "path": path, "query": query, "time": time.time(),
                  "accept": self.headers.get("Accept", ""),
                  "content_type": self.headers.get("Content-Type", ""),
                  "user_agent": self.headers.get("User-Agent", ""), "status": None}
        try:
            try:
                body = self._body()
            except (ValueError, OSError):
                self.close_connection = True  # no way to find the next request's start
                raise bad_request("malformed request body")
            if path.startswith("/__fake/"):
                self._control(path[len("/__fake/"):], body)
                return
            with api._ctl:
                api._log.append(record)
                delay = api._delay
            self._record = record
            auth = self.headers.get("Authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
            with api._ctl:
                ok = token is not None and token in api._tokens
            if not ok:
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if delay > 0:
                time.sleep(delay)
            with api._ctl:
                fail = api._fail.popleft() if api._fail else None
            if fail is not None:
                code, retry_after = fail
                reason, msg = _STATUS_FOR_CODE.get(code, ("InternalError", "injected failure"))
                headers = {}
                details = None
                if retry_after is not None:
                    headers["Retry-After"] = str(int(retry_after))
                    details = {"retryAfterSeconds": int(retry_after)}
                raise ApiError(code, reason, msg, details, headers)
            self._route(method, path, query, body)
        except ApiError as e:
            self._error(e)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
        except Exception as e:  # a bug here must not look like a protocol answer
            import traceback
            traceback.print_exc()
            self._error(ApiError(500, "InternalError", f"Internal error occurred: {e!r}"))

    def _control(self, op, body):
        api = self.api
        auth = self.headers.get("Authorization", "")
        if auth != f"Bearer {api.control_token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")
        try:
            args = json.loads(body or b"{}")
        except ValueError:
            raise bad_request("control body is not JSON")
        try:
            if op == "apply":
                if isinstance(args, list) or "kind" in args:
                    objs = api._objects_of(args)  # the objects themselves
                elif "yaml" in args:
                    objs = api._objects_of(args["yaml"])
                else:
                    objs = args.get("objects") or [args["object"]]
                with api.store.cond:
                    for o in api._objects_of(objs):
                        api._apply_locked(o)
                out = {"applied": len(objs), "resourceVersion": str(api.resource_version())}
            elif op == "delete":
                out = {"deleted": api.delete(args["kind"], args.get("namespace"),
                                             args["name"]) is not None}
            elif op == "compact":
                out = {"compacted": str(api.compact())}
            elif op == "drop_watches":
                out = {"dropped": api.drop_watches(bool(args.get("clean")))}
            elif op == "set_delay":
                api.set_delay(args["seconds"])
                out = {}
            elif op == "fail_next":
                api.fail_next(args["n"], args["status"], args.get("retry_after"))
                out = {}
            elif op == "rotate_token":
                out = {"token": api.rotate_token()}
            elif op == "add_token_review":
                api.add_token_review(args["token"], args["username"], args.get("extra"),
                                     args.get("groups"), args.get("uid"), args.get("audiences"))
                out = {}
            elif op == "requests":
                out = [{k: r[k] for k in ("method", "path", "query", "status", "content_type",
                                                "accept", "time")}
                       for r in api.request_log()]
            else:
                raise ApiError(404, "NotFound", f"no control operation {op!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise bad_request(f"control {op}: {e!r}")
        self._send(200, out)

    # --- routing ---

    def _route(self, method, path, query, body):
        segs = [s for s in path.split("/") if s]
        if path in ("/healthz", "/livez", "/readyz"):
            return self._send(200, "ok", "text/plain; charset=utf-8")
        if path == "/version":
            return self._send(200, SERVER_VERSION)
        if path in ("/api", "/apis"):
            # Aggregated discovery (apidiscovery.k8s.io), which client-go asks for first: every
            # group, version and resource in one answer.
            for part in (self.headers.get("Accept") or "").split(","):
                params = dict(f.strip().split("=", 1) for f in part.split(";")[1:] if "=" in f)
                if params.get("g") == "apidiscovery.k8s.io" and \
                        params.get("as") == "APIGroupDiscoveryList" and \
                        params.get("v") in ("v2", "v2beta1"):
                    v = params["v"]
                    return self._send(200, _aggregated_discovery(path == "/api", v),
                                      f"application/json;g=apidiscovery.k8s.io;v={v};"
                                      "as=APIGroupDiscoveryList")
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"],
                                    "serverAddressByClientCIDRs": [{
                                        "clientCIDR": "0.0.0.0/0",
                                        "serverAddress": f"127.0.0.1:{self.api.port}"}]})
        if path == "/apis":
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1",
                                    "groups": [_group_doc(g) for g in GROUPS]})
        if segs[:1] == ["openapi"]:
            return self._openapi(segs[1:])
        if segs[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", segs[2:]
        elif segs[:1] == ["apis"] and len(segs) >= 2 and segs[1] in GROUPS:
            group = segs[1]
            if len(segs) == 2:
                return self._send(200, dict(_group_doc(group), kind="APIGroup",
                                            apiVersion="v1"))
            version, rest = segs[2], segs[3:]
            if version not in GROUPS[group]:
                raise NOT_FOUND_PATH
        else:
            raise NOT_FOUND_PATH
        if not rest:
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed",
                               "the server does not allow this method on the requested resource")
            return self._send(200, _resource_list(group, version))
        watch_path = False
        if rest[0] == "watch":
            watch_path, rest = True, rest[1:]
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces" and (group, rest[2]) in _BY_GROUP_PLURAL:
            ns, rest = rest[1], rest[2:]
        if not rest or (group, rest[0]) not in _BY_GROUP_PLURAL:
            raise NOT_FOUND_PATH
        res = _BY_GROUP_PLURAL[(group, rest[0])]
        if version not in res.versions or (ns is not None and not res.namespaced):
            raise NOT_FOUND_PATH
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if res.namespaced and ns is None:
            # Across namespaces there are only list and watch.
            if name is not None:
                raise NOT_FOUND_PATH
            if method not in ("GET", "HEAD"):
                raise ApiError(405, "MethodNotAllowed",
                               "the server does not allow this method on the requested resource")
        if len(rest) > 3 or (sub is not None and not (sub == "status" and
                                                      res.status_subresource)):
            raise NOT_FOUND_PATH
        ctx = _Ctx(self.api, res, version, ns, name, sub, query, self.headers)
        if watch_path or (method == "GET" and name is None and
                          query.get("watch") in ("1", "true", "True")):
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed",
                               "the server does not allow this method on the requested resource")
            if watch_path and name is not None:
                ctx.field_extra = name
            return self._watch(ctx)
        verb = {("GET", False): "list", ("GET", True): "get", ("POST", False): "create",
                ("PUT", True): "update", ("PATCH", True): "patch",
                ("DELETE", True): "delete", ("DELETE", False): "deletecollection",
                ("HEAD", False): "list", ("HEAD", True): "get"}.get((method, name is not None))
        if verb is None or verb not in res.verbs:
            raise ApiError(405, "MethodNotAllowed",
                           "the server does not allow this method on the requested resource")
        if res.plural == "tokenreviews":
            return self._send(201, self._token_review(body))
        handler = getattr(self, f"_{verb}")
        code, out = handler(ctx, body)
        if verb == "get" and ctx.table:
            out = ctx.external(out)
            out = table_for(res, [out], {"resourceVersion": out["metadata"]["resourceVersion"]})
        if isinstance(out, dict) and out.get("kind") not in ("Status", "Table") and \
                not out.get("kind", "").endswith("List"):
            out = ctx.external(out)
        self._send(code, out, ctx.content_type())

    # --- discovery ---

    def _openapi(self, rest):
        # OpenAPI v3, just enough for kubectl to see that the server validates fields itself
        # (fieldValidation on each PATCH) and that only JSON and merge patches are described,
        # so it computes strategic merge patches from its own types. OpenAPI v2 without
        # definitions: older kubectl validates client-side against it and skips types it does
        # not describe (a 404 there would make its apply fail).
        if rest == ["v2"]:
            if "protobuf" in (self.headers.get("Accept") or ""):
                return self._send(200, _OPENAPI_V2_PB,
                                  "application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
            return self._send(200, {"swagger": "2.0", "info": {
                "title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]}, "paths": {},
                "definitions": {}})
        if rest == ["v3"]:
            paths = {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=" + _HASH}}
            for g, vs in GROUPS.items():
                for v in vs:
                    paths[f"apis/{g}/{v}"] = {
                        "serverRelativeURL": f"/openapi/v3/apis/{g}/{v}?hash={_HASH}"}
            return self._send(200, {"paths": paths})
        if rest[:1] == ["v3"] and len(rest) >= 3:
            if rest[1] == "api" and rest[2:] == ["v1"]:
                return self._send(200, _openapi_doc("", "v1"))
            if rest[1] == "apis" and len(rest) == 4 and rest[2] in GROUPS and \
                    rest[3] in GROUPS[rest[2]]:
                return self._send(200, _openapi_doc(rest[2], rest[3]))
        raise NOT_FOUND_PATH

    # --- verbs ---

    def _get(self, ctx, body):
        with ctx.store.cond:
            obj = ctx.store.objects[ctx.res].get(ctx.key())
        if obj is None:
            raise not_found(ctx.res, ctx.name)
        return 200, obj

    def _list(self, ctx, body):
        code, out = ctx.list()
        return code, out

    def _create(self, ctx, body):
        obj = ctx.decode(body)
        res = ctx.res
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if res.namespaced:
            if meta.get("namespace") and meta["namespace"] != ctx.ns:
                raise bad_request("the namespace of the provided object does not match the "
                                  "namespace sent on the request")
            meta["namespace"] = ctx.ns
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        ctx.validate(obj)
        ctx.check_fields(obj, self)
        with ctx.store.cond:
            if res.namespaced and _key("", ctx.ns) not in ctx.store.objects[_NAMESPACES]:
                raise not_found(_NAMESPACES, ctx.ns)
            if ctx.store.objects[res].get(_key(ctx.ns, meta["name"])) is not None:
                d = {"name": meta["name"], "kind": res.plural}
                if res.group:
                    d["group"] = res.group
                raise ApiError(409, "AlreadyExists",
                               f'{_qualified(res)} "{meta["name"]}" already exists', d)
            obj["metadata"] = _new_meta(meta, ctx.ns, res)
            obj["apiVersion"] = res.api_version()
            ctx.defaults_on_create(obj)
            _set_generation(res, obj, None)
            if ctx.dry_run:
                return 201, dict(obj, metadata=dict(obj["metadata"],
                                                    resourceVersion=str(ctx.store.rv)))
            return 201, ctx.store._commit(res, "ADDED", obj, None)

    def _update(self, ctx, body):
        obj = ctx.decode(body)
        meta = obj.get("metadata") or {}
        if meta.get("name") != ctx.name:
            raise bad_request("the name of the object (%s) does not match the name on the URL "
                              "(%s)" % (meta.get("name"), ctx.name))
        if ctx.res.namespaced and meta.get("namespace") not in (None, "", ctx.ns):
            raise bad_request("the namespace of the provided object does not match the "
                              "namespace sent on the request")
        with ctx.store.cond:
            old = ctx.store.objects[ctx.res].get(ctx.key())
            if old is None:
                raise not_found(ctx.res, ctx.name)
            rv = meta.get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise ctx.conflict()
            ctx.check_fields(obj, self)
            return ctx.write(old, obj)

    def _patch(self, ctx, body):
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        known = ["application/json-patch+json", "application/merge-patch+json",
                 "application/apply-patch+yaml"]
        if ctx.res.builtin:
            known.append("application/strategic-merge-patch+json")
        if ctype not in known:
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an "
                           "unknown format - accepted media types include: " + ", ".join(known))
        try:
            patch = (yaml.load(body, Loader=_YamlLoader) if ctype == "application/apply-patch+yaml"
                     else json.loads(body or b"null"))
        except (ValueError, yaml.YAMLError) as e:
            raise bad_request(f"error decoding patch: {e}")
        with ctx.store.cond:
            old = ctx.store.objects[ctx.res].get(ctx.key())
            if ctype == "application/apply-patch+yaml":
                if not ctx.query.get("fieldManager"):
                    raise bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: "
                                      "Required value: is required for apply patch")
                if not isinstance(patch, dict):
                    raise bad_request("apply patch must be an object")
                if old is None:
                    ctx.store.cond.release()
                    try:
                        code, out = self._create(ctx, json.dumps(patch).encode())
                    finally:
                        ctx.store.cond.acquire()
                    return code, out
                new = merge_patch(old, patch)
            elif old is None:
                raise not_found(ctx.res, ctx.name)
            elif ctype == "application/merge-patch+json":
                new = merge_patch(old, patch)
            elif ctype == "application/json-patch+json":
                new = json_patch(old, patch)
            else:
                new = strategic_merge_patch(old, patch)
            if not isinstance(new, dict):
                raise ApiError(422, "Invalid", "the patch does not leave an object")
            rv = (patch.get("metadata") or {}).get("resourceVersion") \
                if isinstance(patch, dict) and isinstance(patch.get("metadata"), dict) else None
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise ctx.conflict()
            new.setdefault("metadata", {})["resourceVersion"] = old["metadata"][
                "resourceVersion"]
            ctx.check_fields(new, self)
            return ctx.write(old, new)

    def _delete(self, ctx, body):
        opts = {}
        if body:
            try:
                opts = json.loads(body)
            except ValueError:
                raise bad_request("DeleteOptions is not JSON")
        pre = (opts or {}).get("preconditions") or {}
        with ctx.store.cond:
            old = ctx.store.objects[ctx.res].get(ctx.key())
            if old is None:
                raise not_found(ctx.res, ctx.name)
            if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
                raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: "
                               f"{pre['uid']}, UID in object meta: {old['metadata']['uid']}")
            if pre.get("resourceVersion") and \
                    pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", "Precondition failed: ResourceVersion in "
                               f"precondition: {pre['resourceVersion']}, ResourceVersion in "
                               f"object meta: {old['metadata']['resourceVersion']}")
            if ctx.dry_run:
                return 200, old
            if ctx.res.plural == "namespaces":
                # The namespace controller empties it; here that happens at once.
                return 200, self.api._delete_locked(ctx.res, "", ctx.name)
            return 200, ctx.store._commit(ctx.res, "DELETED", old, old)

    def _deletecollection(self, ctx, body):
        with ctx.store.cond:
            items = [o for o in ctx.current() if ctx.matches(o)]
            out = []
            if not ctx.dry_run:
                for o in items:
                    out.append(ctx.store._commit(ctx.res, "DELETED", o, o))
            else:
                out = items
            return 200, ctx.list_body([ctx.item(o) for o in out], {
                "resourceVersion": str(ctx.store.rv)})

    def _token_review(self, body):
        try:
            tr = json.loads(body)
        except ValueError:
            raise bad_request("TokenReview is not JSON")
        if not isinstance(tr, dict) or tr.get("kind") not in (None, "TokenReview"):
            raise bad_request("the object provided is unrecognized (must be of type TokenReview)")
        spec = tr.get("spec") or {}
        token = spec.get("token")
        if not token:
            raise ApiError(422, "Invalid", 'TokenReview.authentication.k8s.io "" is invalid: '
                           'spec.token: Required value: token is required', {
                               "group": "authentication.k8s.io", "kind": "TokenReview",
                               "causes": [{"reason": "FieldValueRequired",
                                           "message": "Required value: token is required",
                                           "field": "spec.token"}]})
        wanted = spec.get("audiences") or []
        with self.api._ctl:
            known = self.api._token_reviews.get(token)
        status = {"user": {}}
        if known is None:
            status["error"] = "[invalid bearer token, token lookup failed]"
        else:
            have = known["audiences"]
            if wanted and have is not None:
                granted = [a for a in wanted if a in have]
            else:
                granted = wanted or (have if have is not None else
                                     ["https://kubernetes.default.svc.cluster.local"])
            if not granted:
                status["error"] = ("[invalid bearer token, token audiences "
                                   f"{json.dumps(have)} is invalid for the target audiences "
                                   f"{json.dumps(wanted)}]")
            else:
                status = {"authenticated": True, "user": {
                    "username": known["username"], "uid": known["uid"],
                    "groups": known["groups"]}, "audiences": granted}
                if known["extra"]:
                    status["user"]["extra"] = known["extra"]
        return {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}

    # --- watch ---

    def _watch(self, ctx):
        api, store = self.api, ctx.store
        q = ctx.query
        rv_param = q.get("resourceVersion", "")
        bookmarks = q.get("allowWatchBookmarks") in ("1", "true", "True")
        send_initial = q.get("sendInitialEvents") in ("1", "true", "True")
        try:
            timeout = float(q.get("timeoutSeconds") or 0)
        except ValueError:
            raise bad_request("timeoutSeconds must be an integer")
        if timeout <= 0:
            timeout = api.watch_timeout
        if send_initial and (not bookmarks or q.get("resourceVersionMatch") != "NotOlderThan"):
            raise ApiError(422, "Invalid", "ListOptions.meta.k8s.io \"\" is invalid: "
                           "sendInitialEvents: Forbidden: sendInitialEvents requires setting "
                           "resourceVersionMatch to NotOlderThan and allowWatchBookmarks")
        ctx.parse_selectors()
        w = Watch(ctx.res, ctx.ns, q)
        expired = None
        with store.cond:
            if rv_param not in ("", "0") and not send_initial:
                try:
                    start = int(rv_param)
                except ValueError:
                    raise bad_request(f"invalid resource version: {rv_param}")
                deadline = time.monotonic() + TOO_LARGE_RV_WAIT
                while start > store.rv and time.monotonic() < deadline:
                    store.cond.wait(deadline - time.monotonic())
                if start > store.rv:
                    expired = ApiError(504, "Timeout", f"Too large resource version: {start}, "
                                       f"current: {store.rv}", {
                                           "causes": [{"reason": "ResourceVersionTooLarge",
                                                       "message": "Too large resource version"}],
                                           "retryAfterSeconds": 1})
                elif start < store.compacted:
                    expired = gone(f"too old resource version: {start} ({store.compacted})")
                else:
                    initial = [(e.type, e.obj, e.old) for e in store.events_after(ctx.res, start)]
            else:
                initial = [("ADDED", o, None) for _, o in sorted(ctx.current_items())]
                initial_rv = store.rv
            if expired is None:
                store.watchers.add(w)
        try:
            self._set_status(200)
            self.send_response(200)
            self.send_header("Audit-Id", self._audit_id)
            self.send_header("Cache-Control", "no-cache, private")
            self.send_header("Content-Type", ctx.content_type())
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.close_connection = False
            if expired is not None:
                self._chunk({"type": "ERROR", "object": expired.status()})
                self._chunk(None)
                return
            self._stream(ctx, w, initial, bookmarks,
                         initial_rv if send_initial else None, timeout)
        except (OSError, ssl.SSLError, ValueError):
            self.close_connection = True
        finally:
            with store.cond:
                store.watchers.discard(w)

    def _chunk(self, ev):
        if ev is None:
            self.wfile.write(b"0\r\n\r\n")
        else:
            data = json.dumps(ev, separators=(",", ":")).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream(self, ctx, w, initial, bookmarks, initial_end_rv, timeout):
        store = ctx.store
        first = [True]

        def emit(type_, obj, old):
            new_match = ctx.matches(obj) if type_ != "DELETED" else False
            old_match = ctx.matches(old) if old is not None else False
            if type_ == "ADDED":
                out = "ADDED" if new_match else None
            elif type_ == "MODIFIED":
                out = {(True, True): "MODIFIED", (False, True): "ADDED",
                       (True, False): "DELETED"}.get((old_match, new_match))
            else:
                out = "DELETED" if ctx.matches(obj) else None
            if out is None:
                return
            o = ctx.external(obj)
            if ctx.table:
                o = table_for(ctx.res, [o], {"resourceVersion": o["metadata"]["resourceVersion"]},
                              first[0])
            first[0] = False
            self._chunk({"type": out, "object": o})

        def bookmark(rv, annotations=None):
            meta = {"resourceVersion": str(rv), "creationTimestamp": None}
            if annotations:
                meta["annotations"] = annotations
            self._chunk({"type": "BOOKMARK", "object": {
                "kind": ctx.res.kind, "apiVersion": ctx.res.api_version(ctx.version),
                "metadata": meta}})

        for t, o, old in initial:
            emit(t, o, old)
        if initial_end_rv is not None:
            bookmark(initial_end_rv, {"k8s.io/initial-events-end": "true"})
        end = time.monotonic() + timeout
        next_bm = time.monotonic() + self.api.bookmark_interval
        sock = self.connection
        while True:
            batch = []
            with store.cond:
                while not w.queue and not w.drop and not w.stop:
                    now = time.monotonic()
                    wake = min(end, next_bm if bookmarks else end, now + 1.0)
                    if now >= end or (bookmarks and now >= next_bm):
                        break
                    store.cond.wait(max(0.0, wake - now))
                    if not w.queue and self._peer_gone(sock):
                        return
                while w.queue:
                    batch.append(w.queue.popleft())
                drop, stop, rv = w.drop, w.stop, store.rv
            if drop:
                # A disconnect mid-stream: no terminating chunk, no TLS close_notify.
                self.close_connection = True
                try:
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            for e in batch:
                emit(e.type, e.obj, e.old)
            now = time.monotonic()
            if stop or now >= end:
                if bookmarks and not batch:
                    bookmark(rv)
                self._chunk(None)
                return
            if bookmarks and now >= next_bm and not batch:
                bookmark(rv)
                next_bm = now + self.api.bookmark_interval

    @staticmethod
    def _peer_gone(sock):
        try:
            r, _, _ = select.select([sock], [], [], 0)
            # A watch client sends nothing while it watches: anything readable is its FIN or its
            # TLS close_notify, or a protocol error; either way the watch is over.
            return bool(r)
        except (OSError, ValueError):
            return True


_NAMESPACES = _BY_GROUP_PLURAL[("", "namespaces")]
_HASH = "5F7A6C0E4B1D2C3A8F9E0D1C2B3A4F5E6D7C8B9A0F1E2D3C4B5A6978695A4B3C"


def _pb_string(field, value):
    data = value.encode()
    return bytes([field << 3 | 2, len(data)]) + data


# gnostic's openapi_v2.Document: swagger (1) and info (2: title 1, version 2).
_OPENAPI_V2_INFO = _pb_string(1, "Kubernetes") + _pb_string(2, SERVER_VERSION["gitVersion"])
_OPENAPI_V2_PB = _pb_string(1, "2.0") + bytes([2 << 3 | 2, len(_OPENAPI_V2_INFO)]) + \
    _OPENAPI_V2_INFO


def _group_doc(group):
    vs = GROUPS[group]
    return {"name": group,
            "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in vs],
            "preferredVersion": {"groupVersion": f"{group}/{vs[0]}", "version": vs[0]}}


def _aggregated_discovery(core, version):
    items = []
    for group in ([""] if core else list(GROUPS)):
        versions = ["v1"] if core else GROUPS[group]
        vs = []
        for v in versions:
            resources = []
            for r in RESOURCES:
                if r.group != group or v not in r.versions:
                    continue
                kind = {"group": group, "version": v, "kind": r.kind}
                e = {"resource": r.plural, "responseKind": kind,
                     "scope": "Namespaced" if r.namespaced else "Cluster",
                     "singularResource": r.singular or r.kind.lower(), "verbs": list(r.verbs)}
                if r.short_names:
                    e["shortNames"] = list(r.short_names)
                if r.categories:
                    e["categories"] = list(r.categories)
                if r.status_subresource:
                    e["subresources"] = [{"subresource": "status", "responseKind": kind,
                                          "verbs": ["get", "patch", "update"]}]
                resources.append(e)
            vs.append({"version": v, "resources": resources, "freshness": "Current"})
        meta = {"creationTimestamp": None}
        if group:
            meta["name"] = group
        items.append({"metadata": meta, "versions": vs})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}",
            "metadata": {}, "items": items}


def _resource_list(group, version):
    out = []
    for r in RESOURCES:
        if r.group != group or version not in r.versions:
            continue
        e = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
             "kind": r.kind, "verbs": list(r.verbs)}
        if r.short_names:
            e["shortNames"] = list(r.short_names)
        if r.categories:
            e["categories"] = list(r.categories)
        if r.hash:
            e["storageVersionHash"] = r.hash
        out.append(e)
        if r.status_subresource:
            out.append({"name": f"{r.plural}/status", "singularName": "",
                        "namespaced": r.namespaced, "kind": r.kind,
                        "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version, "resources": out}


def _openapi_doc(group, version):
    paths = {}
    prefix = f"/apis/{group}/{version}" if group else "/api/v1"
    patch_types = ["application/json-patch+json", "application/merge-patch+json",
                   "application/apply-patch+yaml"]
    for r in RESOURCES:
        if r.group != group or version not in r.versions or "patch" not in r.verbs:
            continue
        gvk = [{"group": group, "version": version, "kind": r.kind}]
        params = [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                  for n in ("dryRun", "fieldManager", "fieldValidation")] + [
            {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": True}}]
        path = (f"{prefix}/namespaces/{{namespace}}/{r.plural}/{{name}}" if r.namespaced
                else f"{prefix}/{r.plural}/{{name}}")
        paths[path] = {"patch": {
            "operationId": f"patch{r.kind}",
            "parameters": params,
            "requestBody": {"content": {t: {"schema": {"type": "object"}} for t in patch_types},
                            "required": True},
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk[0]}}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": paths, "components": {}}


_META_FIELDS = {"name", "generateName", "namespace", "selfLink", "uid", "resourceVersion",
                "generation", "creationTimestamp", "deletionTimestamp",
                "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences",
                "finalizers", "managedFields"}
_TOP_FIELDS = {
    None: {"apiVersion", "kind", "metadata", "spec", "status"},
    "configmaps": {"apiVersion", "kind", "metadata", "data", "binaryData", "immutable"},
    "endpointslices": {"apiVersion", "kind", "metadata", "addressType", "endpoints", "ports"},
}


class _Ctx:
    """One request against one resource: parsed parameters and the representation asked for."""

    def __init__(self, api, res, version, ns, name, sub, query, headers):
        self.api, self.store, self.res, self.version = api, api.store, res, version
        self.ns = ns if res.namespaced else ""
        self.name, self.sub, self.query = name, sub, query
        self.field_extra = None
        self.label_pred = self.field_pred = None
        self.dry_run = query.get("dryRun") == "All"
        accept = headers.get("Accept") or "application/json"
        self.table = False
        ok = False
        for part in accept.split(","):
            fields = [f.strip() for f in part.split(";")]
            mt, params = fields[0], dict(f.split("=", 1) for f in fields[1:] if "=" in f)
            if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and \
                    params.get("v") in ("v1", "v1beta1"):
                self.table, ok = True, True
                break
            if mt in ("application/json", "application/*", "*/*") and "as" not in params:
                ok = True
                break
        if not ok:
            raise ApiError(406, "NotAcceptable", "only the following media types are accepted: "
                           "application/json, application/yaml, "
                           "application/vnd.kubernetes.protobuf")

    def content_type(self):
        return "application/json"

    def key(self):
        return _key(self.ns, self.name)

    def external(self, obj):
        out = dict(obj)
        out["apiVersion"] = self.res.api_version(self.version)
        out["kind"] = self.res.kind
        return out

    def item(self, obj):
        """An object as a list item: built-in lists omit kind and apiVersion."""
        if self.res.builtin:
            out = dict(obj)
            out.pop("kind", None)
            out.pop("apiVersion", None)
            return out
        return self.external(obj)

    def conflict(self):
        d = {"name": self.name, "kind": self.res.plural}
        if self.res.group:
            d["group"] = self.res.group
        return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {_qualified(self.res)} '
                        f'"{self.name}": the object has been modified; please apply your changes '
                        "to the latest version and try again", d)

    def decode(self, body):
        try:
            obj = json.loads(body) if body.strip()[:1] in (b"{", b"[") else \
                yaml.load(body, Loader=_YamlLoader)
        except (ValueError, yaml.YAMLError) as e:
            raise bad_request(f"the object provided is unrecognized (must be of type "
                              f"{self.res.kind}): {e}")
        if not isinstance(obj, dict):
            raise bad_request(f"the object provided is unrecognized (must be of type "
                              f"{self.res.kind})")
        kind, av = obj.get("kind"), obj.get("apiVersion")
        if kind and kind != self.res.kind:
            raise bad_request(f"the object provided is unrecognized (must be of type "
                              f"{self.res.kind}): kind {kind}")
        if av and av != self.res.api_version(self.version) and av.split("/")[0] != \
                (self.res.group or av.split("/")[0]):
            raise bad_request(f"the API version in the data ({av}) does not match the expected "
                              f"API version ({self.res.api_version(self.version)})")
        return obj

    def check_fields(self, obj, handler):
        """fieldValidation: unknown top-level or metadata fields are an error under Strict (what
        kubectl asks for), a Warning header under Warn (the default), nothing under Ignore.
        Only these two levels: the fake carries no schemas below them."""
        mode = self.query.get("fieldValidation") or "Warn"
        if mode not in ("Strict", "Warn", "Ignore"):
            raise bad_request(f'fieldValidation: Unsupported value: "{mode}": supported values: '
                              '"Ignore", "Warn", "Strict"')
        if mode == "Ignore":
            return
        allowed = _TOP_FIELDS.get(self.res.plural, _TOP_FIELDS[None])
        unknown = [k for k in obj if k not in allowed]
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            unknown += [f"metadata.{k}" for k in meta if k not in _META_FIELDS]
        if not unknown:
            return
        if mode == "Strict":
            what = ", ".join(f'unknown field "{u}"' for u in unknown)
            raise bad_request(f'{self.res.kind} in version "{self.version}" cannot be handled '
                              f"as a {self.res.kind}: strict decoding error: {what}")
        handler._warnings = [f'unknown field "{u}"' for u in unknown]

    def validate(self, obj):
        name = obj["metadata"].get("name") or ""
        if not name:
            raise invalid(self.res, name, [{"field": "metadata.name", "reason":
                                            "FieldValueRequired", "message": "Required value: "
                                            "name or generateName is required"}])
        rx = _LABEL_NAME_RE if self.res.plural in ("namespaces", "services") else _NAME_RE
        if len(name) > 253 or not rx.match(name):
            raise invalid(self.res, name, [{"field": "metadata.name", "message": f'Invalid value: '
                                            f'"{name}": a lowercase RFC 1123 subdomain must '
                                            "consist of lower case alphanumeric characters, '-' "
                                            "or '.', and must start and end with an alphanumeric "
                                            "character"}])
        labels = obj["metadata"].get("labels") or {}
        if not isinstance(labels, dict) or any(not isinstance(v, str) for v in labels.values()):
            raise invalid(self.res, name, [{"field": "metadata.labels", "message":
                                            "Invalid value: labels must be strings"}])

    def defaults_on_create(self, obj):
        if self.res.plural == "pods":
            # Status belongs to the kubelet (the status subresource).
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        elif self.res.plural == "namespaces":
            obj["status"] = {"phase": "Active"}
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = \
                obj["metadata"]["name"]
        elif self.res.plural == "services":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            if spec.get("type") != "ExternalName" and not spec.get("clusterIP"):
                self.store.cluster_ip += 1
                ip = str(ipaddress.IPv4Address(self.store.cluster_ip))
                spec["clusterIP"], spec["clusterIPs"] = ip, [ip]
            obj["status"] = {"loadBalancer": {}}
        elif self.res.status_subresource:
            obj.pop("status", None)

    def write(self, old, new):
        """Update (store lock held): status and main resource each keep the other's part."""
        new = dict(new)
        new["apiVersion"] = self.res.api_version()
        new["kind"] = self.res.kind
        meta = dict(new.get("metadata") or {})
        for k in ("uid", "creationTimestamp", "namespace", "name"):
            if k in old["metadata"]:
                meta[k] = old["metadata"][k]
            else:
                meta.pop(k, None)
        new["metadata"] = meta
        if self.res.status_subresource:
            if self.sub == "status":
                new = {**old, "status": new.get("status")}
                if new["status"] is None:
                    new.pop("status")
            elif "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        _set_generation(self.res, new, old)
        if self.res.plural == "namespaces" and self.sub is None:
            new["metadata"]["labels"] = dict(new["metadata"].get("labels") or {})
            new["metadata"]["labels"]["kubernetes.io/metadata.name"] = self.name
        if _same_content(old, new) or self.dry_run:
            return 200, new if self.dry_run else old
        return 200, self.store._commit(self.res, "MODIFIED", new, old)

    # --- list ---

    def parse_selectors(self):
        self.label_pred = parse_label_selector(self.query.get("labelSelector"))
        self.field_pred = parse_field_selector(self.query.get("fieldSelector"), self.res)

    def matches(self, obj):
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        if self.res.namespaced and self.ns and meta.get("namespace") != self.ns:
            return False
        if self.field_extra is not None and meta.get("name") != self.field_extra:
            return False
        if self.label_pred and not self.label_pred(meta.get("labels")):
            return False
        if self.field_pred and not self.field_pred(obj):
            return False
        return True

    def current(self):
        return list(self.store.objects[self.res].values())

    def current_items(self):
        return [(k, o) for k, o in self.store.objects[self.res].items() if self.matches(o)]

    def list_body(self, items, meta):
        if self.table:
            return table_for(self.res, items, meta)
        return {"kind": f"{self.res.kind}List", "apiVersion": self.res.api_version(self.version),
                "metadata": meta, "items": items}

    def list(self):
        q = self.query
        self.parse_selectors()
        rv = q.get("resourceVersion")
        match = q.get("resourceVersionMatch")
        cont = q.get("continue")
        try:
            limit = int(q.get("limit") or 0)
        except ValueError:
            raise bad_request("limit must be an integer")
        if match and not rv:
            raise ApiError(422, "Invalid", "ListOptions.meta.k8s.io \"\" is invalid: "
                           "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden "
                           "unless resourceVersion is provided")
        if match not in (None, "", "Exact", "NotOlderThan"):
            raise ApiError(422, "Invalid", f"ListOptions.meta.k8s.io \"\" is invalid: "
                           f"resourceVersionMatch: Unsupported value: \"{match}\"")
        prefix = f"{self.ns}/" if self.res.namespaced and self.ns else ""
        start = ""
        store = self.store
        with store.cond:
            if cont:
                if rv not in (None, "", "0") and rv is not None and rv != "":
                    raise bad_request("specifying resource version is not allowed when using "
                                      "continue")
                try:
                    tok = json.loads(base64.urlsafe_b64decode(cont + "=" * (-len(cont) % 4)))
                    at, start = int(tok["rv"]), tok["start"]
                    if tok.get("v") != "meta.k8s.io/v1" or not isinstance(start, str):
                        raise ValueError
                except (ValueError, KeyError, TypeError):
                    raise bad_request("continue key is not valid: incorrect encoded start "
                                      "resourceVersion (version meta.k8s.io/v1)")
                if at < store.compacted:
                    raise gone("The provided continue parameter is too old to display a "
                               "consistent list result. You can start a new list without the "
                               "continue parameter, or use the continue token in this response "
                               "to retrieve the remainder of the results. Continuing with the "
                               "provided token results in an inconsistent list - objects that "
                               "were created, modified, or deleted between the time the first "
                               "chunk was returned and now may show up in the list.")
                objs = store.state_at(self.res, at)
            elif rv not in (None, "", "0"):
                try:
                    at = int(rv)
                except ValueError:
                    raise bad_request(f"invalid resource version: {rv}")
                exact = match == "Exact" or (not match and limit > 0)
                deadline = time.monotonic() + TOO_LARGE_RV_WAIT
                while at > store.rv and time.monotonic() < deadline:
                    store.cond.wait(deadline - time.monotonic())
                if at > store.rv:
                    raise ApiError(504, "Timeout", f"Too large resource version: {at}, current: "
                                   f"{store.rv}", {"causes": [{
                                       "reason": "ResourceVersionTooLarge",
                                       "message": "Too large resource version"}],
                                       "retryAfterSeconds": 1})
                if exact:
                    if at < store.compacted:
                        raise gone(f"too old resource version: {at} ({store.compacted})")
                    objs = store.state_at(self.res, at)
                else:
                    at, objs = store.rv, store.objects[self.res]
            else:
                at, objs = store.rv, store.objects[self.res]
            # A copy of the map (not of the objects, which are never changed in place), so the
            # page is cut from one snapshot while writers go on.
            objs = {k: o for k, o in objs.items() if k.startswith(prefix)}
            keys = sorted(objs)
        # Everything below works on a snapshot (objects are never mutated in place).
        full_start = prefix + start
        i = bisect.bisect_left(keys, full_start) if start else 0
        items = []
        last = None
        filtered = self.label_pred is not None or self.field_pred is not None
        while i < len(keys) and (limit <= 0 or len(items) < limit):
            o = objs[keys[i]]
            last = keys[i]
            i += 1
            if self.matches(o):
                items.append(o)
        meta = {"resourceVersion": str(at)}
        if limit > 0 and i < len(keys):
            rel = last[len(prefix):] + "\x00"
            tok = json.dumps({"v": "meta.k8s.io/v1", "rv": at, "start": rel},
                             separators=(",", ":"))
            meta["continue"] = base64.urlsafe_b64encode(tok.encode()).decode().rstrip("=")
            if not filtered:
                meta["remainingItemCount"] = len(keys) - i
        if self.table:
            return 200, table_for(self.res, [self.external(o) for o in items], meta)
        return 200, self.list_body([self.item(o) for o in items], meta)


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--objects", action="append", default=[],
                   help="YAML file of objects to load before serving (repeatable)")
    p.add_argument("--bookmark-interval", type=float, default=3.0)
    p.add_argument("--watch-timeout", type=float, default=DEFAULT_WATCH_TIMEOUT,
                   help="how long a watch without timeoutSeconds lasts")
    args = p.parse_args(argv)
    srv = FakeApiServer(args.state_dir, args.listen, args.bookmark_interval, args.watch_timeout)
    for path in args.objects:
        with open(path) as f:
            try:
                srv.apply(f.read())
            except (ValueError, yaml.YAMLError) as e:
                print(f"fake_apiserver: {path}: {e}", file=sys.stderr)
                return 2
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    port = srv.start()
    print(f"listening {port}", flush=True)
    done.wait()
    srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
