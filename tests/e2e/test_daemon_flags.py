"""End to end: the daemons' command lines as people meet them (issue 21), on the real binaries.

`--version` prints "<binary> <version>" and exits 0; `--help` and `--helpfull` exit 0 and show the
flags with dashes, as the README writes them, and no build path; every flag the README shows is
accepted by a binary as written. Needs no root and no running agent.
Run: AMBIT_BUILD_DIR=build python3 -m unittest -v test_daemon_flags
"""

import os
import re
import subprocess
import unittest

BUILD_DIR = os.environ.get("AMBIT_BUILD_DIR", "/work/main/build")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DAEMONS = {
    "ambitd": os.path.join(BUILD_DIR, "agent", "main", "ambitd"),
    "ambit-tunnel": os.path.join(BUILD_DIR, "agent", "main", "ambit-tunnel"),
    "ambit-waypoint": os.path.join(BUILD_DIR, "agent", "main", "ambit-waypoint"),
    "ambit-cni": os.path.join(BUILD_DIR, "agent", "main", "ambit-cni"),
}
AMBITCTL = os.path.join(BUILD_DIR, "agent", "cli", "ambitctl")
VERSION = re.compile(r"^\d+\.\d+\.\d+(\+\S+)?$")
# Flags of other tools the README shows next to ours (kubectl's; curl's in the quick start).
OTHER_TOOLS = {"from-file", "set", "retry", "retry-all-errors"}
# Every daemon's help and version flags (agent/common/daemon_flags.h; the tests above run them).
USAGE_FLAGS = {"help", "helpshort", "helpfull", "version", "only-check-args"}


def run(*args):
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def help_flags(text):
    return set(re.findall(r"^\s+--([A-Za-z0-9_-]+) \(", text, re.MULTILINE))


def ambitctl_flags():
    """Every flag of every ambitctl command, from the bash completion (the command tree)."""
    code, out, err = run(AMBITCTL, "completion", "bash")
    assert code == 0, err
    valued = re.search(r"^_ambitctl_valued='([^']*)'", out, re.MULTILINE).group(1).split()
    flags = set(re.findall(r"--([a-z][a-z0-9-]*)", out)) | {v[2:] for v in valued}
    return flags


class DaemonFlagsTest(unittest.TestCase):

    def setUp(self):
        for path in [*DAEMONS.values(), AMBITCTL]:
            self.assertTrue(os.access(path, os.X_OK), f"{path} not built")

    def test_version_exits_0_with_the_release(self):
        code, out, err = run(AMBITCTL, "version", "--client", "-o", "json")
        self.assertEqual(code, 0, err)
        client = re.search(r'"clientVersion": "([^"]+)"', out).group(1)
        self.assertRegex(client, VERSION)
        for name, path in DAEMONS.items():
            with self.subTest(binary=name):
                code, out, err = run(path, "--version")
                self.assertEqual(code, 0, err)
                self.assertEqual(out, f"{name} {client}\n")  # one release for every binary
                self.assertNotIn("NDEBUG", out + err)

    def test_help_exits_0_with_dashed_flags_and_no_build_path(self):
        for name, path in DAEMONS.items():
            for flag in ("--help", "-h", "--helpshort", "--helpfull"):
                with self.subTest(binary=name, flag=flag):
                    code, out, err = run(path, flag)
                    self.assertEqual(code, 0, err)
                    self.assertTrue(out.startswith(f"{name}: "), out[:200])
                    flags = help_flags(out)
                    self.assertGreater(len(flags), 3 if name == "ambit-cni" else 8, out[:500])
                    self.assertEqual({f for f in flags if "_" in f}, set())
                    self.assertNotIn(ROOT, out)
                    self.assertNotIn(BUILD_DIR, out)
                    self.assertNotRegex(out, r"Flags from /")
                    self.assertIn("  Flags from agent/", out)
        _, out, _ = run(DAEMONS["ambitd"], "--help")
        self.assertIn("    --config-dir (", out)
        self.assertNotIn("--flagfile", out)  # abseil's own flags: --helpfull only
        _, full, _ = run(DAEMONS["ambitd"], "--helpfull")
        self.assertIn("    --flagfile (", full)

    def test_both_spellings_are_accepted_and_unknown_flags_refused(self):
        ambitd = DAEMONS["ambitd"]
        for args in (["--config-dir=/nonexistent", "--log-level=warn"],
                     ["--config_dir=/nonexistent", "--log_level", "warn"]):
            with self.subTest(args=args):
                code, out, err = run(ambitd, *args, "--only-check-args")
                self.assertEqual(code, 0, out + err)
        code, out, err = run(ambitd, "--no-such-flag", "--only-check-args")
        self.assertNotEqual(code, 0)
        self.assertIn("no_such_flag", out + err)

    def test_every_flag_the_readme_shows_is_accepted_as_written(self):
        with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        shown = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)", readme))
        self.assertIn("config-dir", shown)
        accepted = set(ambitctl_flags()) | OTHER_TOOLS | USAGE_FLAGS
        for name, path in DAEMONS.items():
            code, out, err = run(path, "--helpfull")
            self.assertEqual(code, 0, err)
            accepted |= help_flags(out)
        self.assertEqual(sorted(shown - accepted), [],
                         "flags in README.md that no ambit binary accepts as written")
        # Accepted as written: each daemon takes its own flags with dashes. A value abseil must
        # parse is given as its default, from the help line; switches bare.
        for name, path in DAEMONS.items():
            code, out, _ = run(path, "--helpfull")
            own = {m.group(1): m.group(2) for m in re.finditer(
                r"^    --([a-z0-9-]+) \(.*?\); default: (.*);$", out, re.MULTILINE)}
            args = []
            for flag in sorted(shown & set(own)):
                default = own[flag].strip('"')
                args.append(f"--{flag}" if default in ("true", "false") else f"--{flag}={default}")
            if not args:
                continue
            with self.subTest(binary=name):
                code, out, err = run(path, *args, "--only-check-args")
                self.assertEqual(code, 0, f"{name} {' '.join(args)}: {out}{err}")


if __name__ == "__main__":
    unittest.main()
