"""One way to register gin names (textbooks.gin_utils): importing a verb's entry module registers every
configurable that verb's gin files bind, gin files import no Python module, a module imported after the config is
locked can still define configurables (gin_utils.configurable), and a renamed configurable keeps its old name as
an alias of the same configurable (gin_utils.register_alias)."""

import dataclasses
import glob
import json
import os
import re
import subprocess
import sys

import gin
import pytest

from textbooks import gin_utils

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")

# Each verb's entry module(s), and the experiments/ gin files that verb reads.
VERB_GIN_FILES = {
    "train": (["textbooks.train.trainer"],
              ["runs", "tiny", "phi1", "phi15", "models", "gpu", "tpu"]),
    "eval": (["textbooks.evaluate.suite"], ["eval"]),
    "curate": (["textbooks.curate.pipeline", "textbooks.curate.training"], ["curate"]),
    "generate": (["textbooks.synth.generate"], ["synth"]),
    "sweep": (["textbooks.mixopt.sweep"], ["sweeps/*_three_way.gin"]),
    "mixopt": (["textbooks.mixopt.optimize"], ["sweeps/*_mixopt.gin"]),
}

_PARSE_EACH = r"""
import importlib, json, sys
import gin
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
from textbooks import gin_utils
failures = {}
for path in json.loads(sys.argv[2]):
    gin.clear_config()
    try:
        gin_utils.parse_gin([path], finalize=False)
    except gin_utils.GinConfigError as e:
        failures[path] = str(e)
print(json.dumps(failures))
"""


def _gin_files(patterns):
    out = []
    for pattern in patterns:
        pattern = pattern if pattern.endswith(".gin") else os.path.join(pattern, "*.gin")
        out += sorted(glob.glob(os.path.join(EXPERIMENTS, pattern)))
    return out


def test_every_experiment_gin_file_belongs_to_a_verb():
    listed = {f for _, patterns in VERB_GIN_FILES.values() for f in _gin_files(patterns)}
    every = set(glob.glob(os.path.join(EXPERIMENTS, "**", "*.gin"), recursive=True))
    assert every - listed == set(), "add these gin files to VERB_GIN_FILES under the verb that reads them"


def test_gin_files_import_no_python_module():
    for path in glob.glob(os.path.join(EXPERIMENTS, "**", "*.gin"), recursive=True):
        with open(path) as f:
            imports = [line for line in f if re.match(r"\s*(import|from)\s+\w", line)]
        assert not imports, f"{path} imports {imports}; its verb's entry module registers what it binds"


@pytest.mark.parametrize("verb", sorted(VERB_GIN_FILES))
def test_the_entry_module_alone_registers_what_the_verbs_gin_files_bind(verb):
    modules, patterns = VERB_GIN_FILES[verb]
    files = _gin_files(patterns)
    assert files, f"no gin files for {verb}"
    # A fresh interpreter: in this one, other tests have imported every module already.
    proc = subprocess.run([sys.executable, "-c", _PARSE_EACH, json.dumps(modules), json.dumps(files)],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {}


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_configurable_works_after_the_config_is_locked(clean_gin):
    gin.finalize()
    with pytest.raises(RuntimeError, match="after the config was locked"):
        @gin.configurable
        def refused(x=1):
            return x

    @gin_utils.configurable
    def late(x=1):
        return x

    @gin_utils.configurable("late_named", denylist=["y"])
    def late_with_arguments(x=1, y=2):
        return x + y

    assert late() == 1 and late_with_arguments() == 3  # registered; no binding can name them now
    assert gin.config._inverse_lookup(late).selector.endswith("late")
    assert gin.config._inverse_lookup(late_with_arguments).selector.endswith("late_named")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class _RenamedSettings:
    limit: int = 1
    seed: int = 0


@gin.configurable
def _renamed_function(value: int = 0) -> int:
    return value


gin_utils.register_alias("_OldSettings", _RenamedSettings)
gin_utils.register_alias("_old_function", _renamed_function)


def test_an_alias_binds_the_same_configurable_as_the_new_name(clean_gin):
    gin.parse_config("_OldSettings.limit = 5\n_RenamedSettings.seed = 7\n_old_function.value = 3\n"
                     "_renamed_function.value = 4")
    assert _RenamedSettings() == _RenamedSettings(limit=5, seed=7)  # old and new names mixed: one settings
    assert _renamed_function() == 4  # the later binding wins, whatever name it used
    gin.parse_config("x/_old_function.value = 9")
    with gin.config_scope("x"):
        assert _renamed_function() == 9
    operative = gin.config_str()
    assert "_RenamedSettings.limit = 5" in operative and "_OldSettings" not in operative


def test_an_alias_works_in_references(clean_gin):
    gin.parse_config("_OldSettings.limit = 2\n_renamed_function.value = @_OldSettings()")
    assert _renamed_function() == _RenamedSettings(limit=2)


def test_alias_errors_name_the_problem():
    with pytest.raises(ValueError, match="not a gin configurable"):
        gin_utils.register_alias("_Whatever", dict)
    with pytest.raises(ValueError, match="already belongs to"):
        gin_utils.register_alias("_renamed_function", _RenamedSettings)


def test_the_renamed_project_configurables_keep_their_old_names(clean_gin):
    from textbooks.evaluate import suite
    from textbooks.train import hooks

    gin.parse_config("EvalConfig.eval_every = 11\nValidationConfig.num_batches = 3\nEvalSettings.limit = 4")
    assert (hooks.ValidationConfig().eval_every, hooks.ValidationConfig().num_batches) == (11, 3)
    assert suite.SuiteSettings().limit == 4
