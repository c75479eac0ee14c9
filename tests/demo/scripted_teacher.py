"""A scripted OpenAI-compatible teacher for the demo's tests: tests/serve/fault_server.py's server (127.0.0.1,
faults on demand) answering like the small-teacher templates ask: prose sections, sections with a ```python
block, and exercises whose own check() passes or fails as planted."""

import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serve"))
from fault_server import FaultServer, answer_text  # noqa: E402,F401 - FaultServer is re-exported

MODEL = "scripted-teacher"


class ScriptedTeacher:
    """Template-shaped answers; an exercise fails its own check() when its sampling seed is divisible by 3."""

    def __init__(self):
        self.planted = {}  # function name -> passes

    def __call__(self, prompt: str, seed) -> str:
        prose = answer_text(prompt, seed, 70)
        name = re.search(r"the exercise for this function: (\w+)\(", prompt)
        if name:
            fn, passes = name.group(1), seed % 3 != 0
            self.planted[fn] = passes
            words = prose.split()[1:13]
            return (f"```python\ndef {fn}(x):\n    \"\"\"{' '.join(words)}.\"\"\"\n    return x + {len(words)}\n\n\n"
                    f"def check():\n    assert {fn}(1) == {len(words) + 1 if passes else 0}\n"
                    f"    assert {fn}(0) == {len(words)}\n```")
        if "```python" in prompt:
            return f"{prose}\n\n```python\nvalues = [{seed}, 2, 3]\nprint(sum(values))\n```\n\n{prose}"
        return prose
