"""Ahead-of-time compilation of the train step for a TPU topology, from any machine (MaxText's train_compile).

With the ``libtpu`` package installed, ``jax.experimental.topologies`` describes a TPU slice (e.g. 'v5e:16x16')
without having one; the train step is lowered and compiled for it with the run's mesh, rules, model, batch and
microbatches, and XLA's memory analysis tells whether it fits each chip's HBM before a job is launched::

    result = compile_for_topology("v5e:16x16", model_config=get_preset("phi-1.5").replace(dtype="bfloat16",
                                  remat_policy="full"), partitioning=PartitioningConfig(data=1, fsdp=-1),
                                  batch_size=1024, seq_len=2048)
    print(result.describe())

Run it in a process whose JAX may use the TPU backend (``JAX_PLATFORMS`` unset or '', and
``TPU_WORKER_HOSTNAMES=localhost`` quiets libtpu's search for a pod); the CPU backend of the process is not
needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from typing import Any, Sequence

import gin
import jax
import jax.numpy as jnp

from textbooks import gin_utils
from textbooks import partitioning as part
from textbooks.model.causal_lm import CausalLM
from textbooks.train import optimizer as opt_lib
from textbooks.train import state as state_lib
from textbooks.train import step as step_lib
from textbooks.train import trainer  # also registers the configurables the run gin files bind
from textbooks.train.data import role_names
from textbooks.train.synthetic import FEATURES

GIB = 1 << 30
# HBM per chip.
HBM_BYTES = {"v4": 32 * GIB, "v5e": 16 * GIB, "v5litepod": 16 * GIB, "v5p": 95 * GIB, "v6e": 32 * GIB}


@dataclasses.dataclass
class AotResult:
    """Per-chip memory of a compiled train step (bytes) and what was compiled."""

    topology: str
    num_chips: int
    mesh: dict[str, int]
    batch_size: int
    seq_len: int
    microbatches: int
    remat_policy: str
    dtype: str
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    hbm_bytes: int | None
    compile_seconds: float
    expected_argument_bytes: int = 0  # the state's and batch's shards, computed from their shardings
    num_slices: int = 1
    replica_spans_slices: bool = False  # the replica mesh axis is the DCN axis (one slice per index)

    @property
    def total_bytes(self) -> int:
        """Peak bytes a chip holds: arguments + outputs not aliased to them (donated) + temporaries + code."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.hbm_bytes is None else self.total_bytes <= self.hbm_bytes

    def describe(self) -> str:
        hbm = f" of {self.hbm_bytes / GIB:.1f} GiB HBM ({100 * self.total_bytes / self.hbm_bytes:.0f}%)" \
            if self.hbm_bytes else ""
        slices = f" x {self.num_slices} slices" if self.num_slices > 1 else ""
        return (f"{self.topology}{slices} ({self.num_chips} chips), mesh {self.mesh}, batch {self.batch_size} x "
                f"{self.seq_len}, microbatches {self.microbatches}, remat {self.remat_policy!r}, {self.dtype}: "
                f"per chip {self.total_bytes / GIB:.2f} GiB{hbm} = arguments {self.argument_bytes / GIB:.2f} + "
                f"outputs {self.output_bytes / GIB:.2f} - donated {self.alias_bytes / GIB:.2f} + temporaries "
                f"{self.temp_bytes / GIB:.2f} + code {self.code_bytes / GIB:.3f} GiB (compiled in "
                f"{self.compile_seconds:.0f} s)")


def topology_devices(topology: str, num_slices: int = 1) -> list[Any]:
    """The devices of ``num_slices`` TPU slices of ``topology`` such as 'v5e:2x2' or 'v5p:4x4x4' (needs libtpu)."""
    from jax.experimental import topologies

    kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
    return list(topologies.get_topology_desc(platform="tpu", topology_name=topology, **kwargs).devices)


def _replica_is_dcn(mesh: Any) -> bool:
    """True when each ``replica`` index holds exactly one slice and different indices different slices."""
    slices = [{getattr(d, "slice_index", 0) for d in mesh.devices[r].flat} for r in range(mesh.shape["replica"])]
    return all(len(s) == 1 for s in slices) and len(set.union(*slices)) == len(slices)


def _hbm(topology: str) -> int | None:
    return HBM_BYTES.get(topology.split(":")[0].lower())


def compile_for_topology(topology: str, *, model_config: Any, partitioning: part.PartitioningConfig,
                         batch_size: int, seq_len: int, microbatches: int = 1,
                         optimizer: opt_lib.OptimizerConfig | None = None, train_steps: int = 1000,
                         num_slices: int = 1, compiler_options: dict[str, Any] | None = None) -> AotResult:
    """Lowers and compiles the train step for ``topology`` and returns its per-chip memory.

    Raises:
        ValueError: the mesh or batch does not fit the topology's devices.
    """
    devices = topology_devices(topology, num_slices)
    mesh = part.make_mesh(partitioning, devices)
    rules = partitioning.logical_axis_rules
    model = CausalLM(model_config)
    tx, schedule = opt_lib.make_optimizer(optimizer or opt_lib.OptimizerConfig(), train_steps)
    state = state_lib.sharded_abstract_state(model, tx, mesh, rules)
    shardings = state_lib.state_shardings(model, tx, mesh, rules)
    batch_sharding = part.batch_sharding(mesh, rules)
    batch = {k: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.float32 if k == "decoder_loss_weights" else jnp.int32,
                                     sharding=batch_sharding) for k in FEATURES}
    step = step_lib.compile_train_step(
        step_lib.make_train_step(model, tx, schedule, num_roles=len(role_names()), microbatches=microbatches,
                                 rules=rules),
        shardings, mesh, rules, compiler_options=compiler_options)
    expected_args = sum(_shard_bytes(x) for x in jax.tree_util.tree_leaves(state)) + \
        sum(_shard_bytes(x) for x in batch.values())
    t = time.time()
    with jax.set_mesh(mesh):
        compiled = step.lower(state, batch).compile()
    seconds = time.time() - t
    mem = compiled.memory_analysis()
    return AotResult(
        topology=topology, num_chips=len(devices), mesh=dict(mesh.shape), batch_size=batch_size, seq_len=seq_len,
        microbatches=microbatches, remat_policy=model_config.remat_policy, dtype=model_config.dtype,
        argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes), hbm_bytes=_hbm(topology), compile_seconds=seconds,
        expected_argument_bytes=int(expected_args), num_slices=num_slices,
        replica_spans_slices=num_slices > 1 and _replica_is_dcn(mesh))


def _shard_bytes(x: jax.ShapeDtypeStruct) -> int:
    return math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize


def compile_from_gin(topology: str, num_slices: int = 1) -> AotResult:
    """Compiles the train step that the parsed gin config's ``train`` would run, for ``topology``."""
    bindings = gin.get_bindings(trainer.train)
    steps = bindings.get("train_steps")
    return compile_for_topology(
        topology, model_config=bindings["model_config"],
        partitioning=bindings.get("partitioning") or part.PartitioningConfig(),
        batch_size=bindings["batch_size"], seq_len=int(bindings["task_feature_lengths"]["targets"]),
        microbatches=bindings.get("microbatches", 1), optimizer=bindings.get("optimizer"),
        train_steps=steps if isinstance(steps, int) else 1000, num_slices=num_slices,
        compiler_options=dict(bindings["compiler_options"]) if bindings.get("compiler_options") else None)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m textbooks.train.aot --topology=v5e:16x16 --gin_file=phi15/phi15.gin --gin_file=tpu/phi15_v5e256.gin [--json]``."""
    parser = argparse.ArgumentParser(prog="python -m textbooks.train.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", required=True, help="TPU topology, e.g. v5e:16x16, v5p:4x4x4")
    parser.add_argument("--num_slices", type=int, default=1, help="slices joined over DCN (multi-slice)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    gin_utils.add_gin_arguments(parser)
    args, extra = parser.parse_known_args(argv)
    flag_bindings, rest = gin_utils.split_gin_flags(extra)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    # Data, length and location do not change the compiled step; the required macros get placeholders.
    placeholders = ["MODEL_DIR = '/unused'", "MIXTURE_OR_TASK_NAME = None", "TRAIN_STEPS = 1000"]
    gin_utils.parse_gin(args.gin_file, placeholders + list(args.gin_bindings) + flag_bindings,
                        args.gin_search_path, finalize=False)
    result = compile_from_gin(args.topology, args.num_slices)
    if args.json:
        print(json.dumps(dict(dataclasses.asdict(result), total_bytes=result.total_bytes, fits=result.fits)))
    else:
        print(result.describe())
    return 0 if result.fits is not False else 1


if __name__ == "__main__":
    sys.exit(main())
