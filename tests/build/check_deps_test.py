#!/usr/bin/env python3
"""scripts/check_deps.py passes on the tree as it is and reports each kind of violation of the
module dependency rule (docs/ARCHITECTURE.md#dependency-rule) when one is planted in a copy."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "scripts", "check_deps.py")
COPIED = ("agent", "bench", "bpf", "cmake", "docs", "proto", "tests")


def run(root):
    p = subprocess.run([sys.executable, SCRIPT, "--root", root], capture_output=True, text=True,
                       timeout=120)
    return p.returncode, p.stdout + p.stderr


class CheckDepsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="check_deps_test.")
        cls.pristine = os.path.join(cls.tmp, "pristine")
        for d in COPIED:
            shutil.copytree(os.path.join(ROOT, d), os.path.join(cls.pristine, d),
                            ignore=shutil.ignore_patterns("build*", "__pycache__", "results"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.root = os.path.join(self.tmp, self.id().rsplit(".", 1)[-1])
        shutil.copytree(self.pristine, self.root, symlinks=True)

    def tearDown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def edit(self, rel, old, new):
        path = os.path.join(self.root, rel)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        self.assertIn(old, text, f"{rel} no longer holds the text this test edits")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new, 1))

    def append(self, rel, text):
        with open(os.path.join(self.root, rel), "a", encoding="utf-8") as f:
            f.write(text)

    def assertViolation(self, *needles):
        code, out = run(self.root)
        self.assertEqual(code, 1, out)
        for n in needles:
            self.assertIn(n, out)

    def test_real_tree_passes(self):
        code, out = run(ROOT)
        self.assertEqual(code, 0, out)
        self.assertIn("no violation", out)

    def test_include_outside_the_row(self):
        # A leaf module reaching up into the agent's control loop.
        self.append("agent/identity/spiffe_id.cc", '\n#include "agent/node/agent.h"\n')
        self.assertViolation("agent/identity/spiffe_id.cc:", "agent/node/agent.h (node)",
                             "does not allow")

    def test_data_plane_includes_grpc(self):
        self.append("agent/tunnel/worker.cc", "\n#include <grpcpp/grpcpp.h>\n")
        self.assertViolation("agent/tunnel/worker.cc:", "includes <grpcpp/grpcpp.h>")

    def test_any_module_includes_tls(self):
        self.append("agent/authz/engine.cc", "\n#include <openssl/ssl.h>\n")
        self.assertViolation("agent/authz/engine.cc:", "(any) includes <openssl/ssl.h>")

    def test_agent_includes_tests(self):
        self.append("agent/common/log.cc", '\n#include "tests/fakes/fake_signer.h"\n')
        self.assertViolation("agent/common/log.cc:", "never depends on tests/ or bench/")

    def test_test_file_mixes_sides(self):
        # Legal for a test to include any module, but not both halves of the split at once.
        self.append("tests/unit/tls/keys_test.cc", '\n#include "agent/ca/certificate_authority.h"\n')
        self.assertViolation("tests/unit/tls/keys_test.cc:", "one file, one side")

    def test_data_target_links_grpc(self):
        self.edit("agent/hbone/CMakeLists.txt", "target_link_libraries(ambit_hbone PUBLIC",
                  "target_link_libraries(ambit_hbone PUBLIC ambit_admin_grpc")
        self.assertViolation("target ambit_hbone", "links BoringSSL",
                             "ambit_admin_grpc -> PkgConfig::GRPCPP")

    def test_data_target_links_curl_through_kube(self):
        # The API-server client is control-side: libcurl must never reach the tunnel.
        self.edit("agent/tunnel/CMakeLists.txt", "PRIVATE nlohmann_json::nlohmann_json",
                  "PRIVATE nlohmann_json::nlohmann_json ambit_kube")
        self.assertViolation("target ambit_tunnel", "links libcurl",
                             "ambit_kube -> CURL::libcurl")

    def test_data_plane_includes_curl(self):
        self.append("agent/tunnel/worker.cc", "\n#include <curl/curl.h>\n")
        self.assertViolation("agent/tunnel/worker.cc:", "includes <curl/curl.h>")

    def test_control_target_links_boringssl_transitively(self):
        self.edit("agent/supervisor/CMakeLists.txt",
                  "target_link_libraries(ambit_supervisor PUBLIC",
                  "target_link_libraries(ambit_supervisor PUBLIC ambit_tls")
        self.assertViolation("target ambit_supervisor", "ambit_tls -> boringssl")

    def test_test_binary_links_both(self):
        self.edit("tests/unit/tls/CMakeLists.txt",
                  "target_link_libraries(tls_keys_test PRIVATE ambit_tls",
                  "target_link_libraries(tls_keys_test PRIVATE ambit_tls ambit_ca")
        self.assertViolation("target tls_keys_test links BoringSSL",
                             "crash each other in one process")

    def test_link_outside_the_row(self):
        self.edit("agent/config/CMakeLists.txt", "target_link_libraries(ambit_config PUBLIC",
                  "target_link_libraries(ambit_config PUBLIC ambit_enroll")
        self.assertViolation("ambit_config (agent/config) links ambit_enroll (enroll)")

    def test_new_module_without_a_row(self):
        os.makedirs(os.path.join(self.root, "agent", "unmapped_module"))
        self.assertViolation("agent/unmapped_module/: module has no row")

    def test_row_crossing_sides(self):
        self.edit("docs/ARCHITECTURE.md", "| `hbone` | data | `common`",
                  "| `hbone` | data | `ca` `common`")
        self.assertViolation("hbone (data) may not depend on ca (control)")

    def test_directory_missing_from_the_map(self):
        os.makedirs(os.path.join(self.root, "tests", "chaos"))
        self.assertViolation("tests/chaos/: not in the module map")

    def test_missing_table(self):
        self.edit("docs/ARCHITECTURE.md", "<!-- module-rules:begin", "<!-- rules moved")
        self.assertViolation("no rule table")

    def test_dangling_section_reference(self):
        self.append("agent/common/log.cc", "\n// See docs/ARCHITECTURE.md#no-such-section.\n")
        self.assertViolation("agent/common/log.cc:", "#no-such-section")

    def test_reference_outside_the_repo(self):
        self.append("agent/tunnel/worker.cc", "\n// See " + "DESIGN" + ".md section 1.\n")
        self.assertViolation("agent/tunnel/worker.cc:", "outside the repository")


if __name__ == "__main__":
    unittest.main()
