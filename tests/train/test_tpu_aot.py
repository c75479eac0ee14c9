"""Ahead-of-time compilation of a CPU-size train step for a TPU v5e 2x2 slice (needs the libtpu package)."""

import json
import os
import subprocess
import sys

import pytest

from train_support import REPO, tiny_gin

pytestmark = pytest.mark.slow


def _aot(tmp_path, *args):
    pytest.importorskip("libtpu")
    gin_file = tiny_gin(tmp_path, batch=16, seq=64)
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    # Let JAX load the TPU plugin (no TPU is needed for a topology description); another process may hold
    # libtpu's lock file, which does not matter without a chip.
    env.update(JAX_PLATFORMS="", TPU_WORKER_HOSTNAMES="localhost", ALLOW_MULTIPLE_LIBTPU_LOAD="1",
               TF_CPP_MIN_LOG_LEVEL="2")
    # TPU-friendly widths (multiples of 128), so that tile padding stays small next to the real bytes.
    cmd = [sys.executable, "-m", "textbooks.train.aot", f"--gin_file={gin_file}", "--json",
           "--gin.model_config.hidden_size=256", "--gin.model_config.num_heads=2",
           "--gin.model_config.intermediate_size=512", "--gin.model_config.dtype='bfloat16'",
           "--gin.model_config.remat_policy='full'", *args]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tiny_config_compiles_for_two_v5e_2x2_slices_and_fits(tmp_path):
    result = _aot(tmp_path, "--topology=v5e:2x2", "--num_slices=2", "--gin.PartitioningConfig.replica=2",
                  "--gin.PartitioningConfig.data=2", "--gin.PartitioningConfig.fsdp=2", "--gin.train.microbatches=2")
    assert result["num_chips"] == 8 and result["mesh"] == {"replica": 2, "data": 2, "fsdp": 2, "tensor": 1}
    assert result["replica_spans_slices"]  # the hybrid mesh puts the replica axis across slices (DCN)
    assert result["microbatches"] == 2 and result["remat_policy"] == "full" and result["dtype"] == "bfloat16"
    # XLA's per-chip argument bytes are the shards of the state and batch that the rules produce (plus a
    # little TPU tile padding of the 1-D arrays); state left whole would take twice as much.
    assert result["expected_argument_bytes"] <= result["argument_bytes"] < 1.1 * result["expected_argument_bytes"]
    assert result["alias_bytes"] > 0  # the state is donated and updated in place
    assert result["fits"] and 0 < result["total_bytes"] < result["hbm_bytes"] == 16 * 2**30
