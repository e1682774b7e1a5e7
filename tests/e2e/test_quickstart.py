"""End to end: the README's quick start works as written.

The shell blocks between `<!-- quickstart:begin -->` and `<!-- quickstart:end -->` in README.md
run as they are, in order, in one bash (with the build's binaries on PATH and the repository as
the working directory, as the section says), and the cleanup block between
`<!-- quickstart:cleanup:begin -->` and `<!-- quickstart:cleanup:end -->` always runs after them,
also when one fails. Each plain block that follows a shell block is what the section tells a
user they will see: every one of its lines must match a line of that shell block's output, in
order (`...` stands for anything, runs of spaces for any spacing). So the README cannot drift from
what works.

Afterwards nothing may be left: no network namespace, cgroup, BPF pin or process of the quick
start. Anything left is removed here and fails the test.
"""

import os
import re
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import (_become_subreaper, _reap_orphans, build_dir, cgroup2_mount,  # noqa: E402
                      require_root, run)

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
README = os.path.join(REPO, "README.md")
# What the quick start creates, by the names it gives them (the test removes only these).
NETNS = ("qs-web", "qs-api", "qs-wire")
INSTANCE = "quickstart"
CGROUP = os.path.join(cgroup2_mount(), "ambit-quickstart")
MARK = "@@quickstart-block"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


def region(text, begin, end):
    start = text.index(f"<!-- {begin} -->")
    stop = text.index(f"<!-- {end} -->", start)
    return text[start:stop]


def blocks(text):
    """[(language, body)] of the fenced blocks of text, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def pattern(line):
    """A regex for one expected line: `...` is anything, spaces are any spacing."""
    parts = [r"\s+".join(re.escape(w) for w in part.split()) for part in line.split("...")]
    return re.compile(r"\s*" + ".*".join(parts) + r"\s*$")


def leftovers():
    """What of the quick start still exists."""
    found = []
    names = run("ip", "netns", "list", check=False).stdout.split()
    found += [f"netns {n}" for n in NETNS if n in names]
    if os.path.exists(CGROUP):
        found.append(f"cgroup {CGROUP}")
    if os.path.exists(f"/sys/fs/bpf/ambit/{INSTANCE}"):
        found.append(f"pins /sys/fs/bpf/ambit/{INSTANCE}")
    if os.path.exists(f"/var/lib/ambit/{INSTANCE}"):
        found.append(f"CA state /var/lib/ambit/{INSTANCE}")
    return found


def remove_leftovers():
    """Removes what a failed run of the quick start left: the processes in its cgroup (only the
    quick start's own run there), its agent's pins and state, its namespaces and cgroups."""
    for sub in ("web", "api", ""):
        procs = os.path.join(CGROUP, sub, "cgroup.procs")
        if os.path.exists(procs):
            with open(procs) as f:
                for pid in f.read().split():
                    run("kill", "-9", pid, check=False)
    ambitd = str(build_dir() / "agent/main/ambitd")
    lock = f"/run/lock/ambit/{INSTANCE}.lock"
    if os.path.exists(lock):
        with open(lock) as f:
            pid = f.read().strip()
        if pid.isdigit() and os.path.exists(f"/proc/{pid}/cmdline"):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"quickstart" in f.read():  # the quick start's agent, not another's
                    run("kill", pid, check=False)
                    time.sleep(2)
    run(ambitd, "--cleanup", "--force", "--instance", INSTANCE, check=False)
    for n in NETNS:
        run("ip", "netns", "del", n, check=False)
    for sub in ("web", "api", ""):
        path = os.path.join(CGROUP, sub)
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)
    run("rm", "-rf", f"/var/lib/ambit/{INSTANCE}", check=False)


class QuickStartTest(unittest.TestCase):
    def setUp(self):
        require_root()
        _become_subreaper()  # ambit-tunnel outlives its agent until the clean-up stops it
        self.addCleanup(_reap_orphans)
        if leftovers():
            remove_leftovers()  # an interrupted earlier run of this test
        self.assertEqual(leftovers(), [])

    def test_readme_quick_start(self):
        with open(README) as f:
            text = f.read()
        main = blocks(region(text, "quickstart:begin", "quickstart:end"))
        cleanup = blocks(region(text, "quickstart:cleanup:begin", "quickstart:cleanup:end"))
        self.assertEqual([lang for lang, _ in cleanup], ["sh"], cleanup)
        shell = [body for lang, body in main if lang == "sh"]
        self.assertGreaterEqual(len(shell), 3, "the quick start lost its commands")

        # The expected output of each shell block: the plain blocks up to the next shell block.
        expected = {}
        index = -1
        for lang, body in main:
            if lang == "sh":
                index += 1
            elif lang == "":
                self.assertGreaterEqual(index, 0, "an output block before any command")
                expected.setdefault(index, []).extend(l for l in body.splitlines() if l.strip())
        self.assertTrue(expected, "the quick start shows no output to check")

        build = build_dir()
        script = ["set -e",
                  f"export PATH={build}/agent/main:{build}/agent/cli:$PATH",
                  # Killed by the test's timeout: still clean up.
                  "trap 'exit 143' TERM INT",
                  "cleanup() { set +e; echo " + MARK + " cleanup",
                  cleanup[0][1].rstrip(),
                  "}",
                  "trap cleanup EXIT"]
        for i, body in enumerate(shell):
            script += [f"echo {MARK} {i}", body.rstrip()]
        try:
            # timeout(1) sends TERM first, so the trap still cleans up.
            proc = subprocess.run(["timeout", "200", "bash", "-c", "\n".join(script)], cwd=REPO,
                                  text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240)
            out, code = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            code = "timeout"
        left = leftovers()
        if left:
            remove_leftovers()
        self.assertEqual(code, 0, f"the quick start failed:\n{out}")
        self.assertEqual(left, [], f"the quick start's clean-up left these:\n{out}")

        outputs = {}
        current = None
        for line in out.splitlines():
            if line.startswith(MARK + " "):
                current = line.split()[1]
                continue
            if current is not None:
                outputs.setdefault(current, []).append(line)
        for i, lines in expected.items():
            got = outputs.get(str(i), [])
            at = 0
            for want in lines:
                p = pattern(want)
                while at < len(got) and not p.match(got[at]):
                    at += 1
                self.assertLess(at, len(got),
                                f"block {i}: README says a user sees {want!r}; the commands "
                                f"printed (from the last line matched on):\n" + "\n".join(got))
                at += 1


if __name__ == "__main__":
    unittest.main()
