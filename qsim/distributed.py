"""Ray for work that outgrows one machine: `qsim run --ray` shards the evaluation windows over workers.

The driver resolves the model and builds (or reads from its cache) the
artifact once; both go into Ray's object store, so every worker reads the
same bytes by reference. Each worker runs `evaluate` on a contiguous shard of
windows and returns one accumulator per window; the driver merges them in
window order, which is exactly the float additions of a single-process run.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket

from qsim.errors import QsimError

LOCAL = "local"  # `--ray` without an address: a new Ray on this machine's cores
PROBE_TIMEOUT_S = 5.0  # ray.init retries an unreachable address for minutes; a TCP probe answers in seconds


def _ray():
    try:
        import ray
    except ImportError:
        raise QsimError("--ray: ray is not installed (pip install -e '.[scale]')") from None
    return ray


def _probe(address: str) -> None:
    """Fail in one line when nothing listens at HOST:PORT (ray:// client addresses included)."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise QsimError(f"--ray {address}: not an address of the form HOST:PORT (or ray://HOST:PORT, auto)")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise QsimError(f"--ray {address}: no Ray cluster reachable ({exc.strerror or exc})") from None


def connect(address: str = LOCAL) -> None:
    """Start a local Ray with os.cpu_count() CPUs, or join the cluster at `address` ("auto": the running one).

    A session that already has Ray initialised (a test's, a notebook's) is used as it is.
    """
    ray = _ray()
    if address not in (LOCAL, "auto"):
        _probe(address)
    if ray.is_initialized():
        return
    quiet = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address == LOCAL:
        ray.init(num_cpus=os.cpu_count(), **quiet)
        return
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise QsimError(f"--ray {address}: {str(exc).splitlines()[0]}") from None


def blas_threads() -> int:
    """The threads this process's OpenBLAS runs on (its own rule: the first variable set, at most the cores)."""
    cores = len(os.sched_getaffinity(0))
    for var in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        v = os.environ.get(var, "")
        if v.isdigit() and int(v) > 0:
            return min(int(v), cores)
    return cores


def remote(fn):
    """`fn` as a one-CPU Ray task whose BLAS runs on as many threads as the driver's.

    The float model's sums come out differently from OpenBLAS with one thread
    than with two (mamba-tiny: nats/token 1.03307662 against 1.03307657, and
    the quamba numerics, which round those floats, move further), and Ray
    starts its workers with one; pinned, a worker computes what the driver would.
    """
    env = {"OPENBLAS_NUM_THREADS": str(blas_threads())}
    return _ray().remote(num_cpus=1, runtime_env={"env_vars": env})(fn)


def gather(refs: list) -> list:
    """ray.get that turns a worker's QsimError back into the one-line error it was."""
    ray = _ray()
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, QsimError):
            raise QsimError(str(exc.cause)) from None
        raise


def split(n: int, parts: int) -> list[range]:
    """n windows as `parts` contiguous shards, sizes differing by at most one (the larger ones first)."""
    size, extra = divmod(n, parts)
    bounds = [0]
    for k in range(parts):
        bounds.append(bounds[-1] + size + (k < extra))
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


def run_on_ray(opts, address: str = LOCAL) -> dict:
    """`qsim run` with the windows sharded over Ray workers; figures equal the plain run's.

    One shard per CPU of the cluster, at most one per window. The report's
    `tokens_per_s` are per worker-second: the shards' evaluation times are summed.
    """
    from qsim.run import evaluate, prepare, report

    if opts.executor == "cuda":
        raise QsimError("--ray with --executor cuda: the workers are given CPUs only; run the CUDA executor without --ray")
    connect(address)
    ray = _ray()
    p = prepare(opts)
    n = min(len(p.windows), max(1, int(ray.cluster_resources().get("CPU", 1))))
    lm, qm = ray.put(p.lm), ray.put(p.qm)
    task = remote(evaluate)
    refs = [task.remote(lm, qm, p.bits, p.windows[r.start : r.stop], p.opts.executor)
            for r in split(len(p.windows), n)]
    accs, timing = [], {}
    for shard_accs, shard_timing in gather(refs):  # shard order is window order
        accs += shard_accs
        for k, v in shard_timing.items():
            timing[k] = timing.get(k, 0.0) + v
    out = report(p, accs, timing)
    out["ray"] = {"address": address, "shards": n}
    return out
