"""End to end: the real ambitctl binary (issue 3, SPIFFE IDs and visibility).

Needs no root and no running agent: `id parse`, `version`, help and usage errors are offline.
Run: AMBIT_BUILD_DIR=/work/main/build python3 -m unittest -v test_cli
"""

import json
import os
import subprocess
import unittest

BUILD_DIR = os.environ.get("AMBIT_BUILD_DIR", "/work/main/build")
AMBITCTL = os.path.join(BUILD_DIR, "agent", "cli", "ambitctl")


def ambitctl(*args):
    """Runs ambitctl with args; returns (exit code, stdout, stderr)."""
    proc = subprocess.run([AMBITCTL, *args], capture_output=True, text=True, timeout=30,
                          check=False)
    return proc.returncode, proc.stdout, proc.stderr


class CliTest(unittest.TestCase):

    def setUp(self):
        self.assertTrue(os.access(AMBITCTL, os.X_OK), f"{AMBITCTL} not built")

    def parse_json(self, spiffe_id):
        code, out, err = ambitctl("id", "parse", spiffe_id, "-o", "json")
        return code, json.loads(out), err

    def test_istio_id_json(self):
        code, doc, err = self.parse_json("spiffe://cluster.local/ns/bookinfo/sa/ratings")
        self.assertEqual(code, 0, err)
        self.assertEqual(err, "")
        self.assertEqual(doc, {
            "valid": True,
            "trustDomain": "cluster.local",
            "path": "/ns/bookinfo/sa/ratings",
            "namespace": "bookinfo",
            "serviceAccount": "ratings",
        })
        # Keys come out in a fixed, readable order.
        self.assertEqual(list(doc), ["valid", "trustDomain", "path", "namespace",
                                     "serviceAccount"])

    def test_non_istio_id_json(self):
        code, doc, _ = self.parse_json("spiffe://staging.example.com/payments/web-fe")
        self.assertEqual(code, 0)
        self.assertEqual(doc, {"valid": True, "trustDomain": "staging.example.com",
                               "path": "/payments/web-fe"})
        code, doc, _ = self.parse_json("spiffe://example.org")
        self.assertEqual(code, 0)
        self.assertEqual(doc, {"valid": True, "trustDomain": "example.org", "path": ""})
        # Istio's shape with an extra segment is a valid SPIFFE ID but not an Istio identity.
        code, doc, _ = self.parse_json("spiffe://cluster.local/ns/a/sa/b/c")
        self.assertEqual(code, 0)
        self.assertNotIn("namespace", doc)
        self.assertNotIn("serviceAccount", doc)

    def test_invalid_ids_exit_1_with_reason(self):
        cases = {
            "SPIFFE://cluster.local/ns/a/sa/b":
                "scheme 'SPIFFE' must be written in lowercase: 'spiffe'",
            "https://cluster.local/ns/a/sa/b": "scheme must be 'spiffe', not 'https'",
            "spiffe:cluster.local": "missing '//' after 'spiffe:'",
            "spiffe:///ns/a": "trust domain is empty",
            "spiffe://Cluster.local/ns/a":
                "trust domain contains invalid character 'C' at position 9: only lowercase "
                "letters, digits, '.', '-' and '_' are allowed",
            "spiffe://cluster.local:15012/ns/a":
                "trust domain must not contain a port (':' at position 22)",
            "spiffe://admin@cluster.local/ns/a":
                "trust domain must not contain user info ('@' at position 14)",
            "spiffe://cluster.local/ns/a?x=1":
                "SPIFFE ID must not have a query ('?' at position 27)",
            "spiffe://cluster.local/ns/a#f":
                "SPIFFE ID must not have a fragment ('#' at position 27)",
            "spiffe://cluster.local/ns/%61":
                "path must not contain percent-encoded characters ('%' at position 26)",
            "spiffe://cluster.local/ns//sa/b":
                "path contains an empty segment ('//' at position 25)",
            "spiffe://cluster.local/ns/a/":
                "path must not end with '/' (position 27)",
            "spiffe://cluster.local/ns/../sa/b":
                "path contains a relative segment '..' at position 26",
            "spiffe://cluster.local/ns/a b":
                "path contains invalid character ' ' at position 27",
            "spiffe://cluster.local/" + "a" * 2026:
                "SPIFFE ID is 2049 bytes long; at most 2048 are allowed",
            "spiffe://" + "t" * 256: "trust domain is 256 bytes long; at most 255 are allowed",
        }
        for spiffe_id, reason in cases.items():
            with self.subTest(spiffe_id=spiffe_id[:60]):
                code, doc, err = self.parse_json(spiffe_id)
                self.assertEqual(code, 1)
                self.assertEqual(err, "")
                self.assertIs(doc["valid"], False)
                self.assertIn(reason, doc["error"])
                self.assertEqual(set(doc), {"valid", "error"})

    def test_yaml_output(self):
        code, out, err = ambitctl("id", "parse", "spiffe://cluster.local/ns/default/sa/web",
                                  "-o", "yaml")
        self.assertEqual(code, 0, err)
        self.assertEqual(out, "valid: true\n"
                              "trustDomain: cluster.local\n"
                              "path: /ns/default/sa/web\n"
                              "namespace: default\n"
                              "serviceAccount: web\n")
        code, out, _ = ambitctl("id", "parse", "-oyaml", "spiffe://x/a/./b")
        self.assertEqual(code, 1)
        self.assertEqual(out, "valid: false\nerror: \"path contains a relative segment '.' at "
                              "position 13: '.' and '..' are not allowed\"\n")

    def test_table_output(self):
        code, out, err = ambitctl("id", "parse", "spiffe://cluster.local/ns/default/sa/web")
        self.assertEqual(code, 0, err)
        self.assertEqual(out, "Valid:            true\n"
                              "Trust domain:     cluster.local\n"
                              "Path:             /ns/default/sa/web\n"
                              "Namespace:        default\n"
                              "Service account:  web\n")
        code, out, _ = ambitctl("id", "parse", "--output=table", "spiffe://Bad")
        self.assertEqual(code, 1)
        self.assertIn("Valid:  false\n", out)
        self.assertIn("Error:  trust domain contains invalid character 'B' at position 9", out)

    def test_version(self):
        code, out, err = ambitctl("version", "--client", "-o", "json")
        self.assertEqual(code, 0, err)
        self.assertRegex(json.loads(out)["clientVersion"], r"^\d+\.\d+\.\d+")
        self.assertNotIn("agentVersion", json.loads(out))
        code, out, _ = ambitctl("version", "--client")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("Client version:"), out)

    def test_version_without_an_agent(self):
        # The client's version is printed, then the failure to ask the agent: exit 1.
        missing = "/tmp/ambit-test-no-agent.sock"
        code, out, err = ambitctl("version", "--admin-socket", missing, "-o", "json")
        self.assertEqual(code, 1, err)
        doc = json.loads(out)
        self.assertRegex(doc["clientVersion"], r"^\d+\.\d+\.\d+")
        self.assertIsNone(doc["agentVersion"])
        self.assertEqual(doc["agentSocket"], missing)
        self.assertIn("ambitd is not running here", doc["agentError"])
        self.assertIn(missing, err)

    def test_help_on_every_level(self):
        for args in (["--help"], ["-h"], ["help"], ["id", "--help"], ["help", "id"],
                     ["id", "parse", "--help"], ["version", "-h"]):
            with self.subTest(args=args):
                code, out, err = ambitctl(*args)
                self.assertEqual(code, 0, err)
                self.assertEqual(err, "")
                self.assertIn("Usage:\n", out)
                self.assertIn("--admin-socket PATH", out)
                self.assertIn("/run/ambit/admin.sock", out)
        _, top, _ = ambitctl("--help")
        self.assertIn("ambitctl <command> [flags]", top)
        self.assertRegex(top, r"\n  id +Work with SPIFFE IDs\n")
        self.assertRegex(top, r"\n  version +Print the ambitctl and ambitd versions\n")
        _, leaf, _ = ambitctl("id", "parse", "--help")
        self.assertIn("ambitctl id parse ID [flags]", leaf)
        self.assertIn("-o, --output FORMAT", leaf)
        self.assertIn("Examples:\n", leaf)

    def test_usage_errors_exit_2(self):
        cases = [
            (["frobnicate"], "ambitctl: unknown command 'frobnicate'"),
            (["id", "frobnicate"], "ambitctl id: unknown command 'frobnicate'"),
            ([], "ambitctl: missing command"),
            (["id"], "ambitctl id: missing command"),
            (["id", "parse"], "ambitctl id parse: missing argument"),
            (["id", "parse", "spiffe://a", "spiffe://b"],
             "ambitctl id parse: unexpected argument 'spiffe://b'"),
            (["id", "parse", "spiffe://a", "-o", "xml"], "unknown output format 'xml'"),
            (["version", "--frob"], "ambitctl version: unknown flag '--frob'"),
        ]
        for args, message in cases:
            with self.subTest(args=args):
                code, out, err = ambitctl(*args)
                self.assertEqual(code, 2)
                self.assertEqual(out, "")
                self.assertIn(message, err)
                self.assertIn("Usage:\n", err)

    def complete_bash(self, line):
        """What bash completes for `line` (the word under the cursor is the last, maybe ""),
        with the script `ambitctl completion bash` prints sourced as a user would."""
        words = line.split(" ")
        script = (f'source <("{AMBITCTL}" completion bash) || exit 3\n'
                  f'COMP_WORDS=({" ".join(repr(w) for w in words)}); '
                  f'COMP_CWORD={len(words) - 1}; COMP_LINE={line!r}; COMP_POINT={len(line)}\n'
                  '_ambitctl; printf "%s\\n" "${COMPREPLY[@]}"\n'
                  'complete -p ambitctl >&2\n')
        proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", script],
                              capture_output=True, text=True, timeout=30, check=False)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("complete -F _ambitctl ambitctl", proc.stderr)
        return [w for w in proc.stdout.split("\n") if w]

    def test_bash_completion(self):
        self.assertEqual(self.complete_bash("ambitctl wor"), ["workloads"])
        self.assertEqual(sorted(self.complete_bash("ambitctl c")),
                         ["certs", "check", "completion", "config-dump", "connections"])
        # A command's own flags and the global ones; the command is found past other flags.
        self.assertEqual(sorted(self.complete_bash("ambitctl -o json workloads --a")),
                         ["--address", "--admin-socket", "--all-namespaces"])
        self.assertEqual(sorted(self.complete_bash("ambitctl check --no")), ["--no-ext-authz", "--now"])
        self.assertEqual(self.complete_bash("ambitctl dataplane r"), ["roll"])
        self.assertEqual(sorted(self.complete_bash("ambitctl workloads -o ")),
                         ["json", "table", "wide", "yaml"])
        # A flag's value is not taken for a command: `--instance roll` stays at the root.
        self.assertEqual(self.complete_bash("ambitctl --instance dataplane wor"), ["workloads"])
        self.assertEqual(self.complete_bash("ambitctl id parse --xyz"), [])

    def test_zsh_and_fish_completion_parse(self):
        for shell, check in (("zsh", ["zsh", "-n"]), ("fish", ["fish", "--no-execute"])):
            with self.subTest(shell=shell):
                code, out, err = ambitctl("completion", shell)
                self.assertEqual(code, 0, err)
                self.assertIn("workloads", out)
                proc = subprocess.run(check, input=out, capture_output=True, text=True,
                                      timeout=30, check=False)
                self.assertEqual(proc.returncode, 0, proc.stderr)
        # zsh: loaded into a completion system, the function completes a command.
        code, script, _ = ambitctl("completion", "zsh")
        probe = (script + "\nwords=(ambitctl dataplane r); CURRENT=3; PREFIX=r\n"
                 "compadd() { shift; print -l -- \"$@\"; }\n_ambitctl\n")
        proc = subprocess.run(["zsh", "-f", "-c", probe], capture_output=True, text=True,
                              timeout=30, check=False)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("roll", proc.stdout.split())
        # fish: the completions it would offer.
        proc = subprocess.run(["fish", "--no-config", "-c",
                               f"{AMBITCTL} completion fish | source; "
                               "complete -C 'ambitctl dataplane '; complete -C 'ambitctl wor'"],
                              capture_output=True, text=True, timeout=30, check=False)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("roll", proc.stdout.split())
        self.assertIn("workloads", proc.stdout.split())
        code, _, err = ambitctl("completion", "tcsh")
        self.assertEqual(code, 1)
        self.assertIn("bash, zsh or fish", err)

    def test_instance_names_the_socket_ambitd_uses(self):
        # No agent of that instance runs: the error names the socket ambitd would have made.
        for args, env in ((["--instance", "ambit-test-none"], {}),
                          ([], {"AMBIT_INSTANCE": "ambit-test-none"}),
                          (["--instance", "ambit-test-none"], {"AMBIT_INSTANCE": "other"})):
            with self.subTest(args=args, env=env):
                proc = subprocess.run([AMBITCTL, "status", *args], capture_output=True,
                                      text=True, timeout=30, check=False,
                                      env={**os.environ, **env})
                self.assertEqual(proc.returncode, 1, proc.stderr)
                self.assertIn("no admin socket at /run/ambit/ambit-test-none/admin.sock",
                              proc.stderr)
        proc = subprocess.run([AMBITCTL, "status"], capture_output=True, text=True, timeout=30,
                              check=False, env={**os.environ, "AMBIT_ADMIN_SOCKET": "/tmp/x.sock"})
        self.assertIn("no admin socket at /tmp/x.sock", proc.stderr)
        code, _, err = ambitctl("status", "--instance", "../etc")
        self.assertEqual(code, 2)
        self.assertIn("--instance '../etc' is not an instance name", err)

    def test_admin_socket_flag_is_accepted(self):
        code, _, err = ambitctl("--admin-socket", "/tmp/ambit-test.sock", "version", "--client")
        self.assertEqual(code, 0, err)
        code, _, err = ambitctl("version", "--client", "--admin-socket=/tmp/ambit-test.sock")
        self.assertEqual(code, 0, err)


if __name__ == "__main__":
    unittest.main()
