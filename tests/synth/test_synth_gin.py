"""The shipped experiments/synth/*.gin files parse, name real templates and topic sets, and bind generate()."""

import glob
import os

import gin
import pytest

from textbooks import gin_utils
from textbooks.synth import generate as generate_lib  # noqa: F401 - registers the configurables
from textbooks.synth import templates, topics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_FILES = sorted(f for f in glob.glob(os.path.join(REPO, "experiments", "synth", "*.gin"))
                   )


def test_there_are_run_files():
    names = {os.path.basename(f) for f in RUN_FILES}
    assert {"code_textbooks.gin", "nlp_textbooks.gin", "exercises.gin", "web_seeded.gin", "smoke_local.gin"} <= names


@pytest.mark.parametrize("path", RUN_FILES, ids=os.path.basename)
def test_gin_file_binds_generate(path):
    gin_utils.parse_gin([path], finalize=False)
    assert gin.query_parameter("TEACHER_ENDPOINT/macro.value").startswith("http://127.0.0.1")
    template_set = templates.load_templates(list(gin.query_parameter("generate.templates")))
    weights = gin.query_parameter("generate.template_weights") if "template_weights" in open(path).read() else None
    assert not weights or set(weights) <= set(template_set.templates)
    topics_file = gin.query_parameter("generate.topics_file") if "topics_file" in open(path).read() else "code"
    if topics_file is not None:
        assert len(topics.TopicTree.load(topics_file)) > 10
    else:
        assert all(t.seeded for t in template_set.templates.values())
    assert gin.query_parameter("generate.num_samples") > 0
