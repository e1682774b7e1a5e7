#pragma once

// Converts the YAML of one configuration file into model objects. Two kinds of file:
//  - Kubernetes objects (`kubectl get -o yaml` output, or hand-written manifests): one or more
//    documents separated by `---`, each an object or a `kind: List` with `items:`. Pod, Namespace,
//    Service, the ConfigMap `istio` (whose data.mesh holds a MeshConfig, as Istio stores it) and
//    PeerAuthentication (security.istio.io/v1 and v1beta1, validated as istiod does: unknown
//    spec fields, bad modes and ports, portLevelMtls without a selector are errors) and
//    AuthorizationPolicy (v1 and v1beta1, validated as istiod's ValidateAuthorizationPolicy, then
//    authz::Compile; the istio.io/dry-run annotation), RequestAuthentication (v1 and v1beta1,
//    validated as istiod's ValidateRequestAuthentication; inline jwks parsed) and Gateway
//    (gateway.networking.k8s.io/v1 and v1beta1: its class and labels, for waypoints; see
//    state/waypoint.h) are read; other
//    kinds are reported as warnings and ignored.
//  - a mesh file (`mesh.yaml` / `mesh.yml`): Istio's MeshConfig, e.g. `trustDomain: example.org`,
//    rootNamespace, extensionProviders (envoyExtAuthzHttp/envoyExtAuthzGrpc with Istio's fields)
//    and pathNormalization.
// Each object is validated on its own: a bad one is reported with its file, object and field and
// left out, the others still apply. Thread-safe: no shared state.

#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "agent/authn/model.h"
#include "agent/authz/model.h"
#include "agent/authz/peer_authentication.h"
#include "agent/config/error.h"
#include "agent/state/model.h"

namespace YAML {
class Node;
class Exception;
}  // namespace YAML

namespace ambit::config {

// How error messages name what a YAML node holds: "a map", "a list", "'text'", "nothing".
std::string YamlTypeName(const YAML::Node& node);

// What a parse failure means, without its position: "nesting too deep: ..." when the text nests
// maps and lists deeper than yaml-cpp's depth guard allows (its parser recurses per level; the
// guard, checked while parsing, is what keeps a hostile file from exhausting the stack), else
// "not valid YAML: <parser message>".
std::string YamlParseError(const YAML::Exception& e);

using ConfigObject = std::variant<state::Pod, state::Namespace, state::Service, state::MeshConfig,
                                  authz::PeerAuthentication, authz::Policy,
                                  authn::RequestAuthentication, state::Gateway>;

struct ParsedObject {
  // What identifies the object across files and reloads: "Pod default/web", "Namespace prod",
  // "Service default/web", "MeshConfig", "PeerAuthentication foo/default",
  // "AuthorizationPolicy foo/allow-sleep", "RequestAuthentication foo/jwt".
  std::string id;
  ConfigObject object;
};

struct ParsedFile {
  std::vector<ParsedObject> objects;      // the valid objects, in file order
  std::vector<std::string> rejected_ids;  // ids of objects present in the file but invalid
  std::vector<ConfigError> errors;        // errors and warnings, in file order
  bool unparseable = false;               // not YAML at all: nothing in the file applies
};

// True for the file names that hold a MeshConfig: mesh.yaml, mesh.yml.
bool IsMeshFileName(std::string_view file_name);

// Parses one file's content. file_name (without directory) goes into errors and source_file, and
// selects the mesh format (IsMeshFileName) or Kubernetes objects.
ParsedFile ParseConfigFile(std::string_view file_name, std::string_view content);

// The two formats, regardless of the file name.
ParsedFile ParseKubeYaml(std::string_view file_name, std::string_view content);
ParsedFile ParseMeshYaml(std::string_view file_name, std::string_view content);

}  // namespace ambit::config
