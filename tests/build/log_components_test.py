#!/usr/bin/python3
"""Every component the tree logs under is one `ambitctl log --component` accepts.

Reads log::kComponents from agent/common/log.h and every name a log line is written under in
agent/: AMBIT_LOG("name", ...) literals and the string constants passed to AMBIT_LOG (kComponent,
kLog, kAccessLog, ...). A name missing from the list could not have its level set by name, and
`ambitctl log --component <it>` would be refused as unknown. Also checks that the scanner finds
the names it must (so a change of spelling cannot make this test pass by finding nothing).
"""

import pathlib
import re
import sys
import unittest

REPO = pathlib.Path(__file__).resolve().parents[2]

LIST = re.compile(r"kComponents\[\]\s*=\s*\{(.*?)\};", re.S)
LITERAL = re.compile(r'AMBIT_LOG\(\s*"([^"]+)"')
CONSTANT_USE = re.compile(r"AMBIT_LOG\(\s*(k[A-Za-z]+)\s*,")
CONSTANT_DEF = r'\b{name}(?:\[\])?\s*=\s*"([^"]+)"'


def known():
    text = (REPO / "agent/common/log.h").read_text()
    m = LIST.search(text)
    if not m:
        raise AssertionError("agent/common/log.h: no kComponents[] = {...} list")
    return set(re.findall(r'"([^"]+)"', m.group(1)))


def used():
    out = {}
    for path in sorted((REPO / "agent").rglob("*")):
        if path.suffix not in (".cc", ".h"):
            continue
        text = path.read_text()
        rel = str(path.relative_to(REPO))
        for name in LITERAL.findall(text):
            out.setdefault(name, set()).add(rel)
        for const in set(CONSTANT_USE.findall(text)):
            for name in re.findall(CONSTANT_DEF.format(name=const), text):
                out.setdefault(name, set()).add(rel)
    return out


class LogComponentsTest(unittest.TestCase):

    def test_every_component_logged_is_known(self):
        names = known()
        for name, files in sorted(used().items()):
            self.assertIn(name, names,
                          f"{', '.join(sorted(files))} log under '{name}', which is not in "
                          f"log::kComponents (agent/common/log.h): add it there")

    def test_the_scanner_finds_what_it_must(self):
        found = used()
        for name in ("agent", "tunnel", "waypoint", "access", "ca"):
            self.assertIn(name, found)


if __name__ == "__main__":
    sys.exit(0 if unittest.main(exit=False).result.wasSuccessful() else 1)
