"""Every verb's flags accept `_` and `-` between words, whichever spelling the verb declares."""

import pytest

from textbooks import cli


def _parse(argv):
    parser = cli.build_parser()
    args, extra = parser.parse_known_args(cli.normalize_flag_spelling(parser, argv))
    return args, extra


@pytest.mark.parametrize("flag", ["--from-hf", "--from_hf"])
def test_convert_takes_both_spellings(flag):
    args, extra = _parse(["convert", flag, "hf_dir", "--out", "o", "--max_shard_gb", "2", "--scan_layers"])
    assert args.from_hf == "hf_dir" and args.max_shard_gb == 2.0 and args.scan_layers and not extra


@pytest.mark.parametrize("flag", ["--model_dir", "--model-dir"])
def test_train_takes_both_spellings_and_leaves_gin_bindings_alone(flag):
    args, extra = _parse(["train", f"{flag}=run", "--gin-file=a.gin", "--gin.TRAIN_STEPS=5", "--log-level", "DEBUG"])
    assert args.model_dir == "run" and args.gin_file == ["a.gin"] and args.log_level == "DEBUG"
    assert extra == ["--gin.TRAIN_STEPS=5"]


def test_every_verb_and_flag_parses_in_the_other_spelling():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for verb, verb_parser in sub.choices.items():
        for option in verb_parser._option_string_actions:
            if not option.startswith("--") or ("_" not in option and "-" not in option[2:]):
                continue
            other = option[:2] + (option[2:].replace("_", "-") if "_" in option else option[2:].replace("-", "_"))
            if other in verb_parser._option_string_actions:  # the verb declares both spellings itself
                assert verb_parser._option_string_actions[other] is verb_parser._option_string_actions[option]
                continue
            assert cli.normalize_flag_spelling(parser, [verb, other]) == [verb, option], (verb, other)
