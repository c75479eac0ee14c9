"""Device meshes, logical-axis rules and shardings: how a run is laid out over its devices.

The mesh has four named axes, outermost first:

* ``replica``: pure data parallelism across slices (the DCN axis of a multi-slice run),
* ``data``: data parallelism inside a slice,
* ``fsdp``: data parallelism whose parameters and optimizer state are split too (ZeRO-3 style),
* ``tensor``: tensor (model) parallelism over heads, MLP width and vocabulary.

One size may be -1; it is filled from the device count. Model code names array dimensions with logical names
(``batch, length, embed, heads, kv, mlp, vocab, layers``); :data:`DEFAULT_LOGICAL_AXIS_RULES` maps them to mesh
axes and is plain data, overridable from gin (``PartitioningConfig.logical_axis_rules``). Rules are applied in
order and a mesh axis is used at most once per array, so an activation ``(batch, length, embed)`` takes
``fsdp`` for its batch and leaves ``embed`` whole, while a parameter ``(embed, mlp)`` is split over ``fsdp`` and
``tensor``.

Multi-host: :func:`initialize_distributed` joins the processes, :func:`data_shard_info` tells each process
which slice of the global batch it reads, and :func:`make_global_batch` assembles the global arrays from
per-process numpy batches.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES: tuple[str, ...] = ("replica", "data", "fsdp", "tensor")
# The mesh axes a batch is split over (data parallelism of every kind).
DATA_AXES: tuple[str, ...] = ("replica", "data", "fsdp")

LogicalRules = tuple[tuple[str, Any], ...]

# Order matters: earlier rules win, and a mesh axis already used by an array is skipped.
DEFAULT_LOGICAL_AXIS_RULES: LogicalRules = (
    ("batch", DATA_AXES),
    ("length", None),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("embed", "fsdp"),
    ("layers", None),
)

# Environment variables read by initialize_distributed when no argument is given.
ENV_COORDINATOR = "TEXTBOOKS_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "TEXTBOOKS_NUM_PROCESSES"
ENV_PROCESS_ID = "TEXTBOOKS_PROCESS_ID"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PartitioningConfig:
    """Mesh shape and logical-axis rules of a run.

    Attributes:
        replica: size of the ``replica`` axis; with several slices it is the number of slices (DCN).
        data: size of the ``data`` axis (data parallelism inside a slice).
        fsdp: size of the ``fsdp`` axis (data parallelism with parameters and optimizer state split).
        tensor: size of the ``tensor`` axis (tensor parallelism).
        logical_axis_rules: ``((logical_name, mesh_axes), ...)`` in priority order.
        allow_split_physical_axes: let the mesh builder split physical TPU axes across mesh axes.
    One of the four sizes may be -1: it becomes ``num_devices // product(others)``.
    """

    replica: int = 1
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    logical_axis_rules: LogicalRules = DEFAULT_LOGICAL_AXIS_RULES
    allow_split_physical_axes: bool = False

    def __post_init__(self):
        sizes = self.sizes()
        bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or isinstance(v, bool) or
               (v < 1 and v != -1)}
        if bad:
            raise ValueError(f"PartitioningConfig: mesh axis sizes must be positive integers or -1, got {bad}")
        if sum(v == -1 for v in sizes.values()) > 1:
            raise ValueError(f"PartitioningConfig: at most one mesh axis may be -1, got {sizes}")
        rules = tuple(tuple(r) for r in self.logical_axis_rules)
        for rule in rules:
            if len(rule) != 2 or not isinstance(rule[0], str):
                raise ValueError(f"PartitioningConfig.logical_axis_rules: each rule is (logical_name, mesh_axes); "
                                 f"got {rule!r}")
            for axis in jax.tree_util.tree_leaves(rule[1]):
                if axis not in MESH_AXES:
                    raise ValueError(f"PartitioningConfig.logical_axis_rules: rule {rule!r} names mesh axis "
                                     f"{axis!r}; mesh axes are {MESH_AXES}")
        object.__setattr__(self, "logical_axis_rules", rules)

    def sizes(self) -> dict[str, int]:
        """The configured axis sizes (possibly with one -1), keyed by axis name."""
        return {"replica": self.replica, "data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}

    def mesh_shape(self, num_devices: int) -> dict[str, int]:
        """Returns the axis sizes with -1 filled so that their product is ``num_devices``.

        Raises:
            ValueError: the sizes cannot multiply to ``num_devices``.
        """
        sizes = self.sizes()
        known = math.prod(v for v in sizes.values() if v != -1)
        if -1 in sizes.values():
            if num_devices % known:
                raise ValueError(f"cannot fill the -1 mesh axis: {num_devices} devices are not divisible by the "
                                 f"product {known} of the other axes {sizes}")
            sizes = {k: (num_devices // known if v == -1 else v) for k, v in sizes.items()}
        if math.prod(sizes.values()) != num_devices:
            raise ValueError(f"mesh {sizes} has {math.prod(sizes.values())} devices but {num_devices} are "
                             f"available; set one axis to -1 or make the product match")
        return sizes


def _num_slices(devices: Sequence[Any]) -> int:
    return len({getattr(d, "slice_index", 0) for d in devices})


def make_mesh(config: PartitioningConfig, devices: Sequence[Any] | None = None) -> Mesh:
    """Builds the ``(replica, data, fsdp, tensor)`` mesh for ``config`` over ``devices`` (default: all).

    With devices from several slices (``device.slice_index``), the ``replica`` axis spans the slices over DCN
    and the other axes stay inside a slice (a hybrid mesh).

    Raises:
        ValueError: the mesh does not fit the devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = config.mesh_shape(len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    slices = _num_slices(devices)
    if slices > 1:
        from jax.experimental import mesh_utils

        if sizes["replica"] % slices:
            raise ValueError(f"{slices} slices need the replica axis ({sizes['replica']}) to be a multiple of "
                             f"the slice count; set PartitioningConfig.replica")
        dcn = (slices, 1, 1, 1)
        ici = (sizes["replica"] // slices,) + shape[1:]
        grid = mesh_utils.create_hybrid_device_mesh(
            ici, dcn, devices, allow_split_physical_axes=config.allow_split_physical_axes)
        return Mesh(grid, MESH_AXES, axis_types=axis_types)
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def describe_mesh(mesh: Mesh) -> str:
    """A one-line description such as ``replica=1 data=2 fsdp=4 tensor=1 (8 devices, 1 process)``."""
    sizes = " ".join(f"{k}={v}" for k, v in mesh.shape.items())
    procs = len({d.process_index for d in mesh.devices.flat})
    return f"{sizes} ({mesh.devices.size} {mesh.devices.flat[0].platform} devices, {procs} process(es))"


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules: LogicalRules) -> Any:
    """Maps a tree of logical ``PartitionSpec``s to a tree of ``NamedSharding``s on ``mesh``."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def check_divisible(shapes: Any, shardings: Any, what: str = "parameter") -> None:
    """Checks that every array of ``shapes`` (a tree of objects with ``.shape``) splits evenly under its
    ``NamedSharding`` in ``shardings`` (the same tree).

    Raises:
        ValueError: naming each array, its shape and the mesh axes a dimension does not divide into, and the
            settings that would fix it (e.g. a model with 2 key/value heads cannot split them 8 ways over
            ``tensor``).
    """
    problems = []
    leaves = jax.tree_util.tree_leaves_with_path(shapes)
    for (path, leaf), sharding in zip(leaves, jax.tree_util.tree_leaves(shardings)):
        for dim, (size, axes) in enumerate(zip(leaf.shape, sharding.spec)):
            names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
            parts = math.prod(sharding.mesh.shape[n] for n in names)
            if size % parts:
                problems.append(f"{jax.tree_util.keystr(path)} {tuple(leaf.shape)}: dimension {dim} ({size}) over "
                                f"mesh axes {'x'.join(names)} ({parts} ways)")
    if problems:
        raise ValueError(f"{len(problems)} {what}(s) cannot be split evenly on this mesh: " + "; ".join(problems[:8])
                         + ("; ..." if len(problems) > 8 else "") + ". Choose PartitioningConfig sizes that divide "
                         "them (e.g. tensor no larger than the model's key/value heads) or a model whose sizes "
                         "they divide")


def logical_sharding(names: Sequence[str | None], mesh: Mesh, rules: LogicalRules) -> NamedSharding:
    """The ``NamedSharding`` of one array whose dimensions have logical ``names``."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(tuple(names), list(rules)))


def replicated(mesh: Mesh) -> NamedSharding:
    """A sharding that keeps a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, rules: LogicalRules) -> NamedSharding:
    """The sharding of ``[batch, length]`` input arrays."""
    return logical_sharding(("batch", "length"), mesh, rules)


@dataclasses.dataclass(frozen=True)
class DataShardInfo:
    """Which part of the global batch this process reads.

    Attributes:
        index: this process's shard of the data (seqio ``ShardInfo.index``).
        num_shards: how many distinct shards the processes read (``ShardInfo.num_shards``); processes that
            hold the same batch rows (e.g. tensor parallelism across hosts) read the same shard.
        per_process_batch_size: rows of the global batch this process supplies.
    """

    index: int
    num_shards: int
    per_process_batch_size: int


def data_shard_info(mesh: Mesh, global_batch_size: int, rules: LogicalRules,
                    process_index: int | None = None) -> DataShardInfo:
    """Derives this process's data shard from how the batch dimension is split over ``mesh``.

    Raises:
        ValueError: the global batch is not divisible by the data-parallel mesh size, or a process's rows are
            not one contiguous block.
    """
    sharding = batch_sharding(mesh, rules)
    spec = sharding.spec[0] if len(sharding.spec) else None
    axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
    ways = math.prod(mesh.shape[a] for a in axes)
    if global_batch_size % ways:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the data-parallel mesh size "
                         f"{ways} ({' x '.join(f'{a}={mesh.shape[a]}' for a in axes)}); change batch_size or "
                         f"the mesh")
    process_index = jax.process_index() if process_index is None else process_index
    rows_by_process: dict[int, set[int]] = {}
    for device, index in sharding.devices_indices_map((global_batch_size, 1)).items():
        start, stop, _ = index[0].indices(global_batch_size)
        rows_by_process.setdefault(device.process_index, set()).update(range(start, stop))
    blocks = {}
    for p, rows in rows_by_process.items():
        lo, hi = min(rows), max(rows) + 1
        if len(rows) != hi - lo:
            raise ValueError(f"process {p} holds non-contiguous batch rows; build the mesh so that each "
                             f"process's devices are adjacent along the data axes")
        blocks[p] = (lo, hi)
    starts = sorted({b for b in blocks.values()})
    size = blocks[process_index][1] - blocks[process_index][0]
    if any(hi - lo != size for lo, hi in starts):
        raise ValueError(f"processes hold different numbers of batch rows: {blocks}")
    return DataShardInfo(index=starts.index(blocks[process_index]), num_shards=len(starts),
                         per_process_batch_size=size)


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh, rules: LogicalRules,
                      global_batch_size: int) -> dict[str, jax.Array]:
    """Assembles global ``jax.Array``s from this process's rows of each ``[batch, ...]`` feature.

    Raises:
        ValueError: a feature has the wrong number of rows for this process.
    """
    out = {}
    for name, value in local_batch.items():
        value = np.asarray(value)
        names = ("batch",) + ("length",) * (value.ndim > 1) + (None,) * max(value.ndim - 2, 0)
        sharding = logical_sharding(names, mesh, rules)
        out[name] = jax.make_array_from_process_local_data(sharding, value,
                                                           (global_batch_size,) + value.shape[1:])
    return out


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, auto: bool = False) -> bool:
    """Joins this process to a multi-process JAX run, before any other JAX call.

    Arguments not given are read from ``$TEXTBOOKS_COORDINATOR_ADDRESS``, ``$TEXTBOOKS_NUM_PROCESSES`` and
    ``$TEXTBOOKS_PROCESS_ID``. Without a coordinator address, ``auto=True`` lets JAX detect the cluster
    (TPU pods, SLURM, Open MPI); otherwise nothing happens (a single-process run).

    Returns:
        True if ``jax.distributed.initialize`` was called.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise ValueError(f"a coordinator address ({coordinator_address}) needs --num_processes and "
                             f"--process_id (or ${ENV_NUM_PROCESSES} / ${ENV_PROCESS_ID})")
        log.info("joining %d processes at %s as process %d", num_processes, coordinator_address, process_id)
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
        return True
    if auto:
        jax.distributed.initialize()
        return True
    return False
