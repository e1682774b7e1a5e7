"""deploy/image/Dockerfile without building an image: every shared library the binaries it
copies load (ldd, here, on the Debian 12 they are built on) belongs to a package (dpkg -S) that
the Dockerfile installs, directly or as a dependency (apt-cache depends --recurse). So a new
library linked into ambitd, say, fails here until the image installs its package.

Run: AMBIT_BUILD_DIR=build /usr/bin/python3 tests/deploy/test_image.py
"""

import os
import re
import subprocess
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DOCKERFILE = os.path.join(REPO, "deploy", "image", "Dockerfile")
BUILD_DIR = os.environ.get("AMBIT_BUILD_DIR", os.path.join(REPO, "build"))


def runtime_packages(text):
    m = re.search(r"# runtime-packages:begin.*?\n(.*?)# runtime-packages:end", text, re.S)
    if not m:
        raise AssertionError("Dockerfile has no runtime-packages:begin/end block")
    block = m.group(1).replace("\\\n", " ")
    words = block.split()
    start = words.index("--no-install-recommends") + 1
    packages = []
    for w in words[start:]:
        if w == "&&":
            break
        packages.append(w)
    return packages


def copied_binaries(text):
    """Paths under the build directory that the Dockerfile copies into the image."""
    m = re.search(r"^COPY ((?:\\\n|[^\n])*)$", text, re.M)
    if not m:
        raise AssertionError("Dockerfile copies nothing")
    words = m.group(1).replace("\\\n", " ").split()
    sources = words[:-1]
    out = []
    for s in sources:
        if not s.startswith("${BUILD_DIR}/"):
            raise AssertionError(f"COPY source {s} is not under ${{BUILD_DIR}}")
        out.append(s[len("${BUILD_DIR}/"):])
    return out


def loaded_libraries(binary):
    proc = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise AssertionError(f"ldd {binary}: {proc.stderr}")
    libs = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            raise AssertionError(f"{binary}: {line}")
        m = re.match(r"^\S+ => (/\S+) \(", line) or re.match(r"^(/\S+) \(", line)
        if m:
            libs.append(m.group(1))
    return libs


def owning_packages(paths):
    """{path: package} for each of `paths` some installed package has (dpkg -S, once for all),
    tried as dpkg knows it: before or after the /usr merge, through symlinks."""
    candidates = {}
    for path in paths:
        for p in (path, os.path.realpath(path)):
            for c in (p, p[len("/usr"):] if p.startswith("/usr/") else "/usr" + p):
                candidates.setdefault(c, set()).add(path)
    # dpkg -S exits 1 when some of them belong to nothing, which is expected here.
    proc = subprocess.run(["dpkg", "-S"] + sorted(candidates), capture_output=True, text=True,
                          timeout=300)
    owners = {}
    for line in proc.stdout.splitlines():
        if ": " not in line or line.startswith("diversion"):
            continue
        pkgs, found = line.split(": ", 1)
        pkg = pkgs.split(",")[0].strip().split(":")[0]
        for path in candidates.get(found.strip(), ()):
            owners.setdefault(path, pkg)
    return owners


def dependency_closure(packages):
    proc = subprocess.run(
        ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
         "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"] + packages,
        capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"apt-cache depends: {proc.stderr}")
    return {line.strip() for line in proc.stdout.splitlines()
            if line and not line[0].isspace() and not line.startswith("<")}


def uncovered(binaries, packages):
    """[(library, package or None)] the binaries load that `packages` do not bring."""
    closure = dependency_closure(packages)
    libs = sorted({lib for b in binaries for lib in loaded_libraries(b)})
    owners = owning_packages(libs)
    return [(lib, owners.get(lib)) for lib in libs if owners.get(lib) not in closure]


class ImageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(DOCKERFILE) as f:
            cls.text = f.read()
        cls.packages = runtime_packages(cls.text)
        cls.binaries = [os.path.join(BUILD_DIR, b) for b in copied_binaries(cls.text)]

    def test_copies_the_binaries_the_manifests_run(self):
        names = sorted(os.path.basename(b) for b in self.binaries)
        self.assertEqual(names,
                         ["ambit-cni", "ambit-tunnel", "ambit-waypoint", "ambitctl", "ambitd"])
        for b in self.binaries:
            self.assertTrue(os.access(b, os.X_OK), f"{b} is not built")
        self.assertIn("FROM debian:12", self.text)

    def test_runtime_packages_cover_every_loaded_library(self):
        self.assertEqual(uncovered(self.binaries, self.packages), [])

    def test_a_missing_package_is_named(self):
        packages = [p for p in self.packages if p != "android-libboringssl"]
        self.assertNotEqual(packages, self.packages)
        missing = uncovered(self.binaries, packages)
        self.assertTrue(missing)
        self.assertTrue(all(pkg == "android-libboringssl" for _, pkg in missing), missing)
        self.assertTrue(any("/android/libssl.so" in lib for lib, _ in missing), missing)


if __name__ == "__main__":
    unittest.main(verbosity=2)
