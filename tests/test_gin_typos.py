"""A mistyped gin macro on a command line is an error (exit 2) naming the closest names, for every verb that
takes gin bindings; macros the composed files define or reference (also through includes) are accepted."""

import gin
import pytest

from textbooks import cli, gin_utils
from textbooks.train import trainer


@pytest.fixture
def no_real_work(monkeypatch):
    """Makes each verb's real work fail loudly: a test passes only if the configuration error comes first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the verb went on to run although a gin binding was mistyped")

    from textbooks import demo
    from textbooks.evaluate import suite
    from textbooks.mixopt import optimize
    from textbooks.mixopt import sweep

    monkeypatch.setattr(trainer, "train", refuse)
    monkeypatch.setattr(suite, "evaluate", refuse)
    monkeypatch.setattr(sweep, "sweep", refuse)
    monkeypatch.setattr(optimize, "mixopt", refuse)
    monkeypatch.setattr(demo, "run_demo", refuse)


def _error(capsys, argv):
    rc = cli.main(argv)
    return rc, capsys.readouterr().err


def test_train_rejects_a_mistyped_macro_and_names_the_right_one(tmp_path, capsys, no_real_work):
    rc, err = _error(capsys, ["train", "--gin_file=tiny/phi15_web.gin", "--gin.TRAIN_STEP=5",
                              f"--model_dir={tmp_path / 'run'}"])
    assert rc == 2
    assert "TRAIN_STEP = 5" in err and "did you mean TRAIN_STEPS" in err
    assert not (tmp_path / "run").exists()


def test_train_still_rejects_a_mistyped_parameter(tmp_path, capsys, no_real_work):
    rc, err = _error(capsys, ["train", "--gin_file=tiny/phi15_web.gin", "--gin.OptimizerConfig.learnig_rate=1e-3",
                              f"--model_dir={tmp_path / 'run'}"])
    assert rc == 2 and "learnig_rate" in err


def test_gin_bindings_flag_is_checked_too(tmp_path, capsys, no_real_work):
    rc, err = _error(capsys, ["train", "--gin_file=tiny/phi15_web.gin", "--gin_bindings=BATCH_SIZES = 4",
                              f"--model_dir={tmp_path / 'run'}"])
    assert rc == 2 and "did you mean BATCH_SIZE" in err


def test_eval_rejects_a_mistyped_macro(tmp_path, capsys, no_real_work):
    rc, err = _error(capsys, ["eval", "--checkpoint", str(tmp_path / "none"), "--gin_file=eval/quick.gin",
                              "--gin.SuiteSettings.limit=3", "--gin.LIMIT=3"])
    assert rc == 2 and "macro LIMIT" in err


def test_sweep_rejects_a_mistyped_macro(tmp_path, capsys, no_real_work):
    rc, err = _error(capsys, ["sweep", "--gin_file=sweeps/tiny_three_way.gin", "--sweep_dir", str(tmp_path / "sw"),
                              "--dry_run", "--gin.COMPONENT=['web_filtered', 'code_filtered']"])
    assert rc == 2 and "did you mean COMPONENTS" in err


def test_mixopt_and_demo_reject_an_unused_macro(tmp_path, capsys, no_real_work):
    rc, err = _error(capsys, ["mixopt", "--sweep_dir", str(tmp_path), "--target", "loss", "--gin.MAX_L1=0.5"])
    assert rc == 2 and "macro MAX_L1" in err and "none was given" in err
    rc, err = _error(capsys, ["demo", "--out", str(tmp_path / "demo"), "--gin.STEPS=5"])
    assert rc == 2 and "macro STEPS" in err


def test_macros_defined_or_referenced_in_included_files_are_known(tmp_path):
    (tmp_path / "inner.gin").write_text("train.seed = %RUN_SEED\n")
    (tmp_path / "outer.gin").write_text("include 'runs/pretrain.gin'\ninclude 'inner.gin'\nSPARE_KNOB = 1\n")
    outer = str(tmp_path / "outer.gin")
    base = ["MIXTURE_OR_TASK_NAME = None", "TRAIN_STEPS = 5", "MODEL_DIR = '/tmp/x'"]
    # Referenced only as %RUN_SEED in an included file; defined but never read (SPARE_KNOB): both accepted.
    gin_utils.parse_gin([outer], base + ["RUN_SEED = 7", "SPARE_KNOB = 2"], [str(tmp_path)], check_macros=True)
    bound = gin.get_bindings("train")
    assert bound["seed"] == 7 and bound["train_steps"] == 5
    gin.clear_config()
    # A binding may define a macro that another binding reads.
    gin_utils.parse_gin([outer], base + ["RUN_SEED = 1", "MY_STEPS = 9", "train.train_steps = %MY_STEPS"],
                        [str(tmp_path)], check_macros=True)
    assert gin.get_bindings("train")["train_steps"] == 9
    gin.clear_config()
    with pytest.raises(gin_utils.GinConfigError, match=r"macro RUN_SED\b.*did you mean RUN_SEED"):
        gin_utils.parse_gin([outer], base + ["RUN_SEED = 1", "RUN_SED = 7"], [str(tmp_path)], check_macros=True)


def test_library_callers_may_bind_optional_macros():
    # INIT_FROM is read by runs/finetune.gin only; without check_macros, bindings shared across file sets pass.
    gin_utils.parse_gin(["runs/pretrain.gin"], ["MIXTURE_OR_TASK_NAME = None", "TRAIN_STEPS = 5",
                                                "MODEL_DIR = '/tmp/x'", "INIT_FROM = '/tmp/y'"])
    gin.clear_config()
    with pytest.raises(gin_utils.GinConfigError, match="macro INIT_FROM"):
        gin_utils.parse_gin(["runs/pretrain.gin"], ["MIXTURE_OR_TASK_NAME = None", "TRAIN_STEPS = 5",
                                                    "MODEL_DIR = '/tmp/x'", "INIT_FROM = '/tmp/y'"],
                            check_macros=True)


def test_nearest_names_ignores_case():
    assert gin_utils.nearest_names("train_steps", ["TRAIN_STEPS", "BATCH_SIZE"]) == ["TRAIN_STEPS"]
    assert gin_utils.nearest_names("zzz", ["TRAIN_STEPS"]) == []


def test_curate_rejects_a_mistyped_binding_with_exit_2(capsys, monkeypatch):
    import textbooks.curate.pipeline as curate_pipeline

    monkeypatch.setattr(curate_pipeline, "curate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    rc, err = _error(capsys, ["curate", "--gin_file=curate/tiny.gin", "--gin.curate.rolee='web_raw'"])
    assert rc == 2 and "rolee" in err and "Traceback" not in err
    rc, err = _error(capsys, ["curate"])
    assert rc == 2 and "--gin_file" in err


def test_serve_takes_gin_bindings_and_rejects_a_mistyped_one_before_loading(tmp_path, capsys, monkeypatch):
    from textbooks.serve import engine

    seen = {}

    def load_engine(*args, **kwargs):
        seen["prompt_tokens"] = engine.WarmupConfig().prompt_tokens
        raise ValueError("stop here: the binding was applied")

    monkeypatch.setattr(engine, "load_engine", load_engine)
    rc, err = _error(capsys, ["serve", "--checkpoint", str(tmp_path), "--log_level", "INFO", "--gin.WarmupConfig.prompt_token=256"])
    assert rc == 2 and "doesn't have a parameter named 'prompt_token'" in err and not seen
    gin.clear_config()
    rc, err = _error(capsys, ["serve", "--checkpoint", str(tmp_path), "--log_level", "INFO", "--gin.WarmupConfig.prompt_tokens=256"])
    assert rc == 2 and "stop here" in err and seen == {"prompt_tokens": 256}
