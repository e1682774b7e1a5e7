"""Runs one unittest name and fails if any test was skipped or none ran: CI must never pass a
root-only test by skipping it."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
suite = unittest.defaultTestLoader.loadTestsFromNames(sys.argv[1:])
result = unittest.TextTestRunner(verbosity=2).run(suite)
if result.skipped:
    print(f"FAIL: {len(result.skipped)} test(s) skipped; end-to-end tests must run, not skip")
    sys.exit(1)
if result.testsRun == 0:
    print("FAIL: no test ran")
    sys.exit(1)
sys.exit(0 if result.wasSuccessful() else 1)
