"""Test modules are imported by their basename (the test folders are not packages), so two test files with one
name in different folders make pytest refuse the second at collection ("import file mismatch")."""

import collections
import os

TESTS = os.path.dirname(os.path.abspath(__file__))


def test_every_test_module_has_its_own_basename():
    paths = collections.defaultdict(list)
    for folder, _, names in os.walk(TESTS):
        for name in names:
            if name.startswith("test_") and name.endswith(".py"):
                paths[name].append(os.path.relpath(os.path.join(folder, name), TESTS))
    clashes = {name: sorted(found) for name, found in paths.items() if len(found) > 1}
    assert not clashes, f"rename one of each: {clashes}"
