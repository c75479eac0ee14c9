"""The data layer stands on its own: importing it loads nothing above it, and no TensorFlow for local files."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ABOVE = ("mixtures", "textbooks.tokens", "textbooks.inputs", "textbooks.vocab", "textbooks.model",
         "textbooks.evaluate", "textbooks.train", "textbooks.corpora", "tensorflow", "seqio")


def test_importing_the_data_layer_loads_nothing_above_it(tmp_path):
    code = f"""
import json, sys
import textbooks.data
from textbooks.data import counts, files, manifest, paths, records, roles
records.write_shards([records.Record(id="a", text="x", role="web_raw", source="s", license="l", split="train")],
                     {str(tmp_path)!r}, "train")
assert [r.id for r in records.read_split({str(tmp_path)!r}, "train")] == ["a"]
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("mixtures", "textbooks", "tensorflow",
                                                                      "seqio"))))
"""
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("TEXTBOOKS_FORCE_GFILE", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "textbooks.data.records" in loaded
    assert [m for m in loaded if any(m == a or m.startswith(a + ".") for a in ABOVE)] == []
