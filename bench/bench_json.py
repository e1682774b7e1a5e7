"""What every benchmark driver does last: its result document written as indented JSON (under
bench/results/ by default), and the path said on stdout."""

import json
import pathlib


def write_result(result, path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
