"""float16 training is refused before anything is built, naming the gin key and the fix; bfloat16 and float32
train (bfloat16 is the TPU-native stand-in for the phi papers' fp16 with loss scaling)."""

import optax
import pytest

from textbooks import partitioning as part
from textbooks.model.causal_lm import CausalLM
from textbooks.train import state as state_lib
from textbooks.train import step as step_lib


def test_float16_training_is_refused_with_the_key_and_the_fix(tiny_config):
    model = CausalLM(tiny_config.replace(dtype="float16"))
    tx = optax.sgd(0.1)
    for build in (lambda: step_lib.make_train_step(model, tx, optax.constant_schedule(0.1), num_roles=1),
                  lambda: state_lib.state_shardings(model, tx, part.make_mesh(part.PartitioningConfig()),
                                                    part.DEFAULT_LOGICAL_AXIS_RULES)):
        with pytest.raises(ValueError) as e:
            build()
        msg = str(e.value)
        assert "model_config.dtype = 'float16'" in msg and "model_config.dtype = 'bfloat16'" in msg
        assert "loss scaling" in msg


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_float32_and_bfloat16_build(tiny_config, dtype):
    model = CausalLM(tiny_config.replace(dtype=dtype))
    state_lib.check_training_precision(model.config)
    assert callable(step_lib.make_train_step(model, optax.sgd(0.1), optax.constant_schedule(0.1), num_roles=1))
