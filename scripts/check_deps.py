#!/usr/bin/env python3
"""Enforces ambit's module dependency rule (docs/ARCHITECTURE.md, "Module dependency rule").

The rule table lives in docs/ARCHITECTURE.md between the `module-rules:begin` and
`module-rules:end` markers, and only there: this script reads it, so the map people read and the
rule the build enforces cannot drift apart. Checked:

  1. the table itself: every directory under agent/ has a row, every name it lists exists, and no
     module may include one of the other side of the process split (`any` modules include only
     `any` ones);
  2. #include lines of every C++ file under agent/, tests/ and bench/: a module includes only what
     its row allows; gRPC headers only on the control side, nghttp2 only on the data side, TLS
     headers (BoringSSL's and OpenSSL's share <openssl/...>) never in an `any` module; nothing in
     agent/ includes tests/ or bench/; no file anywhere includes both control-side and data-side
     code;
  3. CMake target_link_libraries: a module's targets link only the ambit targets its row allows,
     and no target (library, binary, test, benchmark) ends up with BoringSSL and gRPC or OpenSSL
     in its link closure; a data-side target never reaches gRPC or OpenSSL, a control-side one
     never BoringSSL, an `any` one neither. cmake/check_links.sh checks the linked binaries the
     same way afterwards with ldd;
  4. the map is complete: every directory under bpf/, tests/ and bench/ and every .proto package
     is named in docs/ARCHITECTURE.md, and every reference to one of its sections
     (`ARCHITECTURE.md` + `#` + anchor) names an anchor it defines, and nothing cites a design
     document outside the repository instead.

Usage: scripts/check_deps.py [--root DIR]. Exit status 0 when clean, 1 with one line per violation
(file:line: what, and which rule).
"""

import argparse
import os
import re
import sys

DOC = "docs/ARCHITECTURE.md"
BEGIN = "<!-- module-rules:begin"
END = "<!-- module-rules:end"
SIDES = ("any", "control", "data", "split")

# External libraries that decide a side, by the names CMake links them under.
GRPC_LIBS = re.compile(r"^(PkgConfig::GRPCPP|gRPC::.*|grpc\+\+.*|grpc|gpr)$")
OPENSSL_LIBS = re.compile(r"^(OpenSSL::.*|ssl|crypto)$")
BORINGSSL_LIBS = re.compile(r"^boringssl$")
# libcurl (the API-server client, agent/kube): control side only, like gRPC.
CURL_LIBS = re.compile(r"^(CURL::libcurl|PkgConfig::CURL|curl)$")

# ambit targets defined outside agent/, and the header group each stands for.
GROUP_TARGETS = {
    "ambit_dataplane_proto": "proto/ambit/dataplane",
    "ambit_admin_grpc": "proto/ambit/admin",
    "istio_ca_grpc": "proto/istio",
    "istio_zds_proto": "proto/istio",
    "istio_xds_grpc": "proto/istio",
    "envoy_ext_authz_proto": "proto/envoy",
    # Headers only: bpf/abi plus the skeletons generated from bpf/progs.
    "ambit_bpf_skeletons": "bpf/abi",
}


class Rules:
    def __init__(self):
        self.side = {}      # name -> side
        self.allowed = {}   # name -> set of names it may include / link
        self.line = {}      # name -> line in the doc


def parse_rules(root, errors):
    path = os.path.join(root, DOC)
    rules = Rules()
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        errors.append(f"{DOC}: cannot read the rule table: {e.strerror}")
        return rules
    inside = False
    found = False
    for n, text in enumerate(lines, 1):
        if text.startswith(BEGIN):
            inside, found = True, True
            continue
        if text.startswith(END):
            inside = False
            continue
        if not inside or not text.startswith("|"):
            continue
        cells = [c.strip() for c in text.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("module", "") or set(cells[0]) <= set("-: "):
            continue
        name = cells[0].strip("`")
        side = cells[1]
        if side not in SIDES:
            errors.append(f"{DOC}:{n}: side of {name} is '{side}', not one of {', '.join(SIDES)}")
            continue
        if name in rules.side:
            errors.append(f"{DOC}:{n}: {name} has two rows")
        rules.side[name] = side
        rules.allowed[name] = set(re.findall(r"`([^`]+)`", cells[2]))
        rules.line[name] = n
    if not found:
        errors.append(f"{DOC}: no rule table (between '{BEGIN} -->' and '{END} -->')")
    return rules


def check_table(root, rules, errors):
    agent = os.path.join(root, "agent")
    modules = sorted(d for d in os.listdir(agent) if os.path.isdir(os.path.join(agent, d)))
    for m in modules:
        if m not in rules.side:
            errors.append(f"agent/{m}/: module has no row in the rule table of {DOC}: add one "
                          "(its side and what it may include)")
    for name, allowed in rules.allowed.items():
        where = f"{DOC}:{rules.line[name]}"
        if "/" not in name and name not in modules:
            errors.append(f"{where}: {name} has a row but agent/{name}/ does not exist")
        for dep in sorted(allowed):
            if dep not in rules.side:
                errors.append(f"{where}: {name} may include {dep}, which has no row")
                continue
            mine, theirs = rules.side[name], rules.side[dep]
            if theirs == "split" or (theirs != "any" and mine not in (theirs, "split")):
                errors.append(f"{where}: {name} ({mine}) may not depend on {dep} ({theirs}): "
                              "dependencies stay on their side of the process split")


def classify_quoted(header):
    """The module or header group of a quoted include, or None for third-party headers."""
    parts = header.split("/")
    if parts[0] == "agent" and len(parts) > 2:
        return parts[1]
    if parts[0] in ("tests", "bench"):
        return parts[0]
    if header.startswith(("abi/", "bpf/abi/")):
        return "bpf/abi"
    if header.endswith(".skel.h"):
        return "bpf/progs"
    if header.startswith("lib/"):
        return "bpf/lib"
    if header.startswith("ambit/dataplane/"):
        return "proto/ambit/dataplane"
    if header.startswith("ambit/admin/"):
        return "proto/ambit/admin"
    if header.startswith("istio/"):
        return "proto/istio"
    if header.startswith("envoy/"):
        return "proto/envoy"
    if header.startswith("google/rpc/"):
        return "proto/google"
    return None


def classify_angle(header):
    if header.startswith(("grpcpp/", "grpc/", "grpc++/")):
        return "lib:grpc"
    if header.startswith("nghttp2/"):
        return "lib:nghttp2"
    if header.startswith("openssl/"):
        return "lib:tls"
    if header.startswith("curl/"):
        return "lib:curl"
    return None


INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')


def source_files(root, top):
    base = os.path.join(root, top)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith((".cc", ".h", ".cpp", ".hpp")):
                yield os.path.join(dirpath, name)


def file_side(kind, rules):
    if kind.startswith("lib:"):
        return {"lib:grpc": "control", "lib:curl": "control", "lib:nghttp2": "data"}.get(kind)
    side = rules.side.get(kind)
    return side if side in ("control", "data") else None


def check_includes(root, rules, errors):
    for top in ("agent", "tests", "bench"):
        for path in source_files(root, top):
            rel = os.path.relpath(path, root)
            parts = rel.split("/")
            module = parts[1] if top == "agent" and len(parts) > 2 else None
            sides = {}  # side -> first (line, what) that put the file on it
            with open(path, encoding="utf-8", errors="replace") as f:
                for n, text in enumerate(f, 1):
                    m = INCLUDE.match(text)
                    if not m:
                        continue
                    quote, header = m.groups()
                    kind = classify_quoted(header) if quote == '"' else classify_angle(header)
                    if kind is None:
                        continue
                    side = file_side(kind, rules)
                    if side is not None:
                        sides.setdefault(side, (n, header))
                    if module is None:
                        continue
                    where = f"{rel}:{n}"
                    if kind in ("tests", "bench"):
                        errors.append(f"{where}: agent/{module} includes {header}: production "
                                      "code never depends on tests/ or bench/")
                    elif kind.startswith("lib:"):
                        my_side = rules.side.get(module)
                        ok = {"lib:grpc": ("control", "split"), "lib:curl": ("control", "split"),
                              "lib:nghttp2": ("data", "split"),
                              "lib:tls": ("control", "data", "split")}[kind]
                        if my_side is not None and my_side not in ok:
                            errors.append(f"{where}: agent/{module} ({my_side}) includes <{header}>"
                                          f": only {' or '.join(ok[:-1])} modules may")
                    elif kind != module and module in rules.allowed and \
                            kind not in rules.allowed[module]:
                        errors.append(f"{where}: agent/{module} includes {header} ({kind}), which "
                                      f"its row in {DOC} does not allow")
            if "control" in sides and "data" in sides:
                c, d = sides["control"], sides["data"]
                errors.append(f"{rel}:{d[0]}: includes data-plane {d[1]} and (line {c[0]}) "
                              f"control-plane {c[1]}: one file, one side of the process split")


# --- CMake -------------------------------------------------------------------------------------

COMMAND = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*\(", re.S)
KEYWORDS = {"PUBLIC", "PRIVATE", "INTERFACE", "STATIC", "SHARED", "OBJECT", "GLOBAL", "GRPC",
            "SIDE", "LIBS", "IMPORTED", "ALIAS", "EXCLUDE_FROM_ALL"}


def cmake_commands(text):
    """(name, args, line) for each command call, comments dropped; nested parentheses kept."""
    text = re.sub(r"#[^\n]*", "", text)
    pos = 0
    while True:
        m = COMMAND.search(text, pos)
        if not m:
            return
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        args = text[m.end():i - 1].split()
        yield m.group(1), args, text.count("\n", 0, m.start()) + 1
        pos = i


class Target:
    def __init__(self, name, module, where):
        self.name, self.module, self.where = name, module, where
        self.links = []    # (lib, where)
        self.side = None   # declared side of a binary


def parse_cmake(root):
    targets = {}
    for top in ("agent", "proto", "tests", "bench", "cmake"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
            dirnames.sort()
            for name in filenames:
                if name != "CMakeLists.txt" and not name.endswith(".cmake"):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                parts = rel.split("/")
                module = parts[1] if parts[0] == "agent" and len(parts) > 2 else None
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                for cmd, args, line in cmake_commands(text):
                    where = f"{rel}:{line}"
                    if not args or "${" in args[0]:
                        continue
                    if cmd in ("add_library", "add_executable") and "ALIAS" not in args:
                        targets.setdefault(args[0], Target(args[0], module, where))
                    elif cmd == "ambit_proto_library":
                        t = targets.setdefault(args[0], Target(args[0], None, where))
                        t.links.append(("protobuf::libprotobuf", where))
                        if "GRPC" in args:
                            t.links.append(("PkgConfig::GRPCPP", where))
                    elif cmd == "target_link_libraries" and args[0] in targets:
                        t = targets[args[0]]
                        t.links += [(a, where) for a in args[1:] if a not in KEYWORDS]
                    elif cmd in ("ambit_data_plane_binary", "ambit_control_plane_binary") \
                            and args[0] in targets:
                        targets[args[0]].side = "data" if "data" in cmd else "control"
                    elif cmd == "ambit_fuzz_target":
                        t = targets.setdefault("fuzz_" + args[0], Target("fuzz_" + args[0], None,
                                                                          where))
                        mode = None
                        for a in args[1:]:
                            if a in ("SIDE", "LIBS"):
                                mode = a
                            elif mode == "SIDE":
                                t.side = "data" if a.startswith("data") else "control"
                            elif mode == "LIBS":
                                t.links.append((a, where))
    return targets


def closure(targets, name, memo):
    """Every library in the link closure of target `name`: lib -> the targets that lead to it."""
    if name in memo:
        return memo[name]
    memo[name] = {}
    out = {}
    for lib, _ in targets[name].links:
        if lib in targets:
            # The target's own name counts too: `boringssl` is an INTERFACE target of paths.
            out.setdefault(lib, [name])
            for ext, via in closure(targets, lib, memo).items():
                out.setdefault(ext, [name] + via)
        else:
            out.setdefault(lib, [name])
    memo[name] = out
    return out


def check_links(root, rules, errors):
    targets = parse_cmake(root)
    memo = {}
    for name in sorted(targets):
        t = targets[name]
        libs = closure(targets, name, memo)
        grpc = sorted(l for l in libs if GRPC_LIBS.match(l))
        openssl = sorted(l for l in libs if OPENSSL_LIBS.match(l))
        boring = sorted(l for l in libs if BORINGSSL_LIBS.match(l))
        curl = sorted(l for l in libs if CURL_LIBS.match(l))

        def path(lib):
            return " -> ".join(libs[lib] + [lib])

        side = t.side or (rules.side.get(t.module) if t.module else None)
        bad = []
        if boring and (grpc or openssl):
            bad.append(f"links BoringSSL ({path(boring[0])}) and gRPC/OpenSSL "
                       f"({path((grpc or openssl)[0])}): they crash each other in one process")
        elif side == "data" and (grpc or openssl):
            bad.append(f"is data-plane code but links {path((grpc or openssl)[0])}")
        elif side == "control" and boring:
            bad.append(f"is control-plane code but links {path(boring[0])}")
        elif side == "any" and (boring or grpc or openssl):
            bad.append(f"is usable by both processes but links {path((boring or grpc or openssl)[0])}")
        if curl and side in ("data", "any"):
            bad.append(f"is {'data-plane code' if side == 'data' else 'usable by both processes'} "
                       f"but links libcurl ({path(curl[0])}): the API-server client is control-side")
        for b in bad:
            errors.append(f"{t.where}: target {name} {b}")
        if t.module is None or t.module not in rules.allowed:
            continue
        for lib, where in t.links:
            dep = targets.get(lib)
            if dep is None:
                continue
            group = dep.module or GROUP_TARGETS.get(lib)
            if group is None or group == t.module:
                continue
            if group not in rules.allowed[t.module]:
                errors.append(f"{where}: {name} (agent/{t.module}) links {lib} ({group}), which "
                              f"its row in {DOC} does not allow")


def check_map_complete(root, errors):
    try:
        with open(os.path.join(root, DOC), encoding="utf-8") as f:
            doc = f.read()
    except OSError:
        return
    named = set(re.findall(r"`([^`]+)`", doc))
    named |= {n.rstrip("/") for n in named}
    wanted = []
    for top in ("bpf", "tests", "bench"):
        base = os.path.join(root, top)
        wanted += [f"{top}/{d}" for d in sorted(os.listdir(base))
                   if os.path.isdir(os.path.join(base, d)) and not d.startswith(".")]
    for dirpath, _, filenames in os.walk(os.path.join(root, "proto")):
        if any(f.endswith(".proto") for f in filenames):
            wanted.append(os.path.relpath(dirpath, root))
    for d in sorted(wanted):
        if d not in named:
            errors.append(f"{d}/: not in the module map of {DOC}: say what it holds")


ANCHOR_REF = re.compile(r"ARCHITECTURE\.md#([A-Za-z0-9_-]+)")
# The design brief the project started from lives outside the repository; the map replaced it.
# (Spelled in pieces so that this line does not match itself.)
OUTSIDE_REF = re.compile("DESIGN" + r"\.md|\.\./" + "shared/")
TEXT_FILES = (".cc", ".h", ".c", ".py", ".sh", ".md", ".txt", ".cmake", ".proto", ".yaml")


def check_anchors(root, errors):
    """Every reference to a section of the map names an anchor the map defines."""
    try:
        with open(os.path.join(root, DOC), encoding="utf-8") as f:
            anchors = set(re.findall(r'<a id="([^"]+)"></a>', f.read()))
    except OSError:
        return
    paths = [os.path.join(root, n) for n in ("README.md", "Makefile") if
             os.path.isfile(os.path.join(root, n))]
    for top in ("agent", "bench", "bpf", "cmake", "docs", "proto", "scripts", "tests", ".ci"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("build"))
            paths += [os.path.join(dirpath, n) for n in sorted(filenames)
                      if n.endswith(TEXT_FILES) or n in ("CMakeLists.txt", "run")]
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, text in enumerate(f, 1):
                if OUTSIDE_REF.search(text):
                    errors.append(f"{os.path.relpath(path, root)}:{n}: refers to a document "
                                  f"outside the repository; cite a section of {DOC} instead")
                for anchor in ANCHOR_REF.findall(text):
                    if anchor not in anchors:
                        errors.append(f"{os.path.relpath(path, root)}:{n}: {DOC}#{anchor} is no "
                                      f"section of the map (anchors: <a id=...>)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."),
                        help="repository root (default: the one holding this script)")
    args = parser.parse_args()
    root = os.path.abspath(args.root)
    errors = []
    rules = parse_rules(root, errors)
    if rules.side:
        check_table(root, rules, errors)
        check_includes(root, rules, errors)
        check_links(root, rules, errors)
    check_map_complete(root, errors)
    check_anchors(root, errors)
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"check_deps: {len(errors)} violation(s) of the dependency rule in {DOC}",
              file=sys.stderr)
        return 1
    print(f"check_deps: {len(rules.side)} modules and header groups, no violation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
