"""Scale-out on JAX's own machinery: a 1-D device mesh over axis "data", shardings for
batches (split along "data") and for the training state (replicated, or FSDP-sharded
on each array's largest divisible axis), and multi-process start-up.

XLA inserts every collective; there is no hand-written communication here.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .errors import ConfigError, UsageError

AXIS = "data"


def make_mesh() -> Mesh:
    """A 1-D mesh over every visible device (all processes' devices)."""
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def check_batch(batch_size: int, grad_accum: int, mesh: Mesh) -> None:
    n = mesh.size
    micro = batch_size // grad_accum
    if micro % n:
        what = (f"train.batch_size={batch_size}" if grad_accum == 1 else
                f"the micro-batch train.batch_size/train.grad_accum={micro}")
        raise ConfigError(f"{what} is not divisible by the {n} devices; use a multiple of {n}")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape, n: int) -> P:
    """Shard the largest axis that divides by n devices; replicate if none does."""
    axes = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in axes:
        if shape[i] % n == 0 and shape[i] >= n:
            spec = [None] * len(shape)
            spec[i] = AXIS
            return P(*spec)
    return P()


def state_shardings(state_shapes, mesh: Mesh, *, fsdp: bool):
    """Shardings for a TrainState-shaped pytree (of arrays or ShapeDtypeStructs)."""
    if not fsdp:
        return jax.tree.map(lambda _: replicated(mesh), state_shapes)
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, mesh.size)), state_shapes)


def put_global(tree, sharding):
    """Host numpy arrays -> global jax.Arrays laid out by `sharding` (one sharding, or a
    matching tree of them). Every process passes the same full arrays and keeps only
    the pieces its own devices hold, so this works for one process or many."""
    if isinstance(sharding, NamedSharding):
        sharding = jax.tree.map(lambda _: sharding, tree)
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
                        tree, sharding)


def host_value(x) -> np.ndarray:
    """A jax.Array as numpy on this host, gathering pieces held by other processes."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def chunks_on_mesh(arrays: dict, chunk: int, mesh: Mesh):
    """Walk host arrays (same leading length) in fixed-size chunks, each split over the
    mesh along the batch, so one compiled function serves every chunk. The chunk is
    rounded up to a multiple of the device count and the last one is zero-padded.
    Yields (number of real rows, global arrays)."""
    chunk = -(-chunk // mesh.size) * mesh.size
    n = len(next(iter(arrays.values())))
    for i in range(0, n, chunk):
        part = {k: np.asarray(v[i:i + chunk]) for k, v in arrays.items()}
        m = len(next(iter(part.values())))
        if m < chunk:
            part = {k: np.concatenate([v, np.zeros((chunk - m,) + v.shape[1:], v.dtype)]) for k, v in part.items()}
        yield m, put_global(part, batch_sharding(mesh))


def bytes_per_device(tree) -> dict:
    """Bytes of `tree` held by each device (to report what FSDP saves)."""
    out: dict = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device.id] = out.get(shard.device.id, 0) + shard.data.nbytes
    return out


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not an integer") from None


COORDINATOR_TIMEOUT_S = 300  # jax.distributed.initialize's own default


def wait_for_coordinator(host: str, port: int, timeout: float = COORDINATOR_TIMEOUT_S) -> None:
    """Block until process 0's coordinator accepts TCP connections at host:port. JAX's
    own wait ends, when it times out, in a C++ abort (exit 134 and a stack trace); this
    one ends in a one-line error naming the address."""
    host = host.strip("[]")  # [::1]:1234
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=5).close()
            return
        except socket.gaierror as e:
            raise UsageError(f"--coordinator {host}:{port}: cannot resolve {host!r} ({e.strerror})") from None
        except OSError as e:
            if time.monotonic() >= deadline:
                raise UsageError(f"--coordinator {host}:{port}: nothing accepted a connection there within "
                                 f"{timeout:g} s ({e.strerror or e}); start process 0 with the same --coordinator, "
                                 "or check the host and port") from None
            time.sleep(0.5)


def port_is_free(port: int) -> bool:
    """Whether a server could listen on `port` on every interface, as process 0's
    coordinator does ([::]:port). SO_REUSEADDR, as the coordinator's server sets it: a
    connection of an earlier run still closing does not count as in use."""
    family, address = (socket.AF_INET6, "::") if socket.has_ipv6 else (socket.AF_INET, "0.0.0.0")
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def initialize_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None) -> bool:
    """Start jax.distributed from flags, else from the environment that JAX's
    launchers set (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
    Returns True if several processes take part. Must run before any JAX computation."""
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None:
        num_processes = _env_int("JAX_NUM_PROCESSES")
    if process_id is None:
        process_id = _env_int("JAX_PROCESS_ID")
    if not coordinator:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise UsageError("--num-processes/--process-id need --coordinator HOST:PORT")
        return False
    if num_processes is None or process_id is None:
        raise UsageError(f"--coordinator {coordinator} needs --num-processes and --process-id")
    if not 0 <= process_id < num_processes:
        raise UsageError(f"--process-id={process_id} must be in [0, --num-processes={num_processes})")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--coordinator {coordinator!r} is not HOST:PORT (a host name or address, a port 1-65535)")
    if process_id != 0:
        wait_for_coordinator(host, int(port))
    elif not port_is_free(int(port)):  # JAX's coordinator would fail to bind it and crash the process
        raise UsageError(f"--coordinator {coordinator}: port {port} is in use on this machine; give process 0 "
                         "and the others another port")
    # Collectives between CPU devices of different processes go through gloo; the
    # setting is ignored on GPU, where NCCL is used.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    term = signal.getsignal(signal.SIGTERM)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    # initialize installs a SIGTERM handler of its own (its preemption notifier, which only
    # logs the signal): put back the process's own, so that SIGTERM stops the run
    signal.signal(signal.SIGTERM, term)
    if jax.process_count() != num_processes:
        raise UsageError(f"--num-processes={num_processes}, but the coordinator {coordinator} started "
                         f"{jax.process_count()} processes: give every process the same --num-processes")
    return num_processes > 1


def is_main() -> bool:
    return jax.process_index() == 0
