"""Where and how training runs: determinism, mixed precision, devices and strategies, and
the multi-worker wrapper (:func:`worker_outputs`: who writes the outputs, what a lost peer means).

``strategy: auto`` picks, in order: several workers in ``TF_CONFIG`` ->
MultiWorkerMirroredStrategy; several GPUs -> MirroredStrategy; one GPU -> OneDeviceStrategy
on it; otherwise TensorFlow's default strategy (the CPU).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import keras
import tensorflow as tf

from src.config import TrainParams
from src.determinism import make_deterministic
from src.errors import UserError
from src.paths import TrainPaths

# What a collective exchange raises when a peer is gone or does not answer within train.worker_timeout.
_LOST_WORKER = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                tf.errors.AbortedError)


def configure(train: TrainParams, seed: int) -> str:
    """Seed every generator, switch on op determinism and set the precision policy; return
    the policy's name (``auto`` resolved for this machine).

    Must run before any model is built (the precision policy applies at build time).
    """
    make_deterministic(seed, ops=train.deterministic)
    policy = precision_policy(train.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    return policy


M_TOP_PAD = -2  # glibc's mallopt parameter (malloc.h)
_top_pad_mb = 0  # what retain_freed_memory last set in this process (0: glibc's defaults)


def retain_freed_memory(top_pad_mb: int) -> bool:
    """Keep ``top_pad_mb`` MB of freed memory in the process (glibc's ``M_TOP_PAD``) instead of
    handing it back to the OS; return whether the setting took (Linux with glibc only).

    A train step allocates and frees its activations and gradients afresh. With glibc's
    defaults much of that memory goes back to the OS at every free and is faulted in again
    at the next step: on 2 cores the folder-fast preset spent a third of its CPU time in the
    kernel and trained at about 65 img/s instead of 100 (docs/roofline.md). The padding
    changes where memory comes from, never a computed value: runs give the same bytes.
    0 leaves glibc's defaults (calling ``mallopt`` at all would switch off its adaptive
    thresholds).
    """
    global _top_pad_mb
    if top_pad_mb <= 0 or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        taken = bool(ctypes.CDLL(None).mallopt(M_TOP_PAD, int(top_pad_mb) << 20))
    except (OSError, AttributeError):
        return False
    _top_pad_mb = int(top_pad_mb) if taken else _top_pad_mb
    return taken


def set_cpu_threads(intra_op: int, inter_op: int) -> None:
    """Size TensorFlow's CPU thread pools (``train.intra_op_threads``, ``train.inter_op_threads``;
    0 leaves TensorFlow's choice, one thread per core).

    The small convolutions of a 32-pixel GAN split badly over cores: on 2 cores, one thread
    per op with two ops side by side trains the folder-fast preset about 13% faster than
    TensorFlow's default (docs/own-images.md). TensorFlow fixes its pools
    when it starts, so this must run before its first op; called later (a second run in
    one process, as the tests do), a request that differs from the pools in place is a
    UserError rather than silently ignored.
    """
    threading = tf.config.threading
    wanted = {"intra_op_threads": intra_op, "inter_op_threads": inter_op}
    current = {"intra_op_threads": threading.get_intra_op_parallelism_threads(),
               "inter_op_threads": threading.get_inter_op_parallelism_threads()}
    if all(current[k] == v for k, v in wanted.items() if v):
        return
    try:
        if intra_op:
            threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        key = next(k for k, v in wanted.items() if v and current[k] != v)
        raise UserError(f"params key 'train.{key}' is {wanted[key]}, but TensorFlow already started in this "
                        f"process with {current[key] or 'its default'}: thread pools are fixed at start-up") from None


MATRIX_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_info() -> dict:
    """The CPU's model name and the /proc/cpuinfo flags that decide speed and precision here
    (Linux; elsewhere the platform's processor string and no flags)."""
    model, flags = None, []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(), "cores": os.cpu_count(), "matrix_flags": [f for f in MATRIX_FLAGS if f in flags]}


def native_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX-BF16: AMD Zen 4,
    Intel Cooper Lake, Sapphire Rapids and later). Read from /proc/cpuinfo (Linux); elsewhere False."""
    flags = cpu_info()["matrix_flags"]
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precision_policy(mixed_precision: str) -> str:
    """The Keras policy that ``train.mixed_precision`` names on this machine.

    ``auto``: bfloat16 compute (float32 weights) on a CPU-only machine whose CPU has native
    bfloat16, where it trains about 1.3x faster (docs/own-images.md); float32
    everywhere else, GPUs included (on a GPU choose ``mixed_float16`` yourself). Without a
    GPU or native bfloat16, ``mixed_bfloat16`` runs at half float32's speed (AVX-512) or
    aborts inside oneDNN (AVX2), so it stops here with one line instead.
    """
    if mixed_precision == "none":
        return "float32"
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    if mixed_precision == "auto":
        return "mixed_bfloat16" if not on_gpu and native_bfloat16() else "float32"
    if mixed_precision == "mixed_bfloat16" and not on_gpu and not native_bfloat16():
        raise UserError("params key 'train.mixed_precision' is mixed_bfloat16, but this machine has no GPU and its "
                        "CPU no native bfloat16 (avx512_bf16/amx_bf16): it would run slower than float32 or "
                        "abort; use auto or none")
    return mixed_precision


def _workers_in_tf_config() -> int:
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except json.JSONDecodeError:
        raise UserError("TF_CONFIG is set but is not valid JSON") from None
    return sum(len(v) for k, v in cluster.items() if k in ("worker", "chief"))


def make_strategy(name: str, worker_timeout: float = 0) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy that ``train.strategy`` names.

    Must run before TensorFlow does anything else in the process: the multi-worker
    strategy configures collective ops, which TensorFlow allows only at start-up.
    ``worker_timeout`` (seconds, 0 = none) bounds how long a worker waits for the others
    in one exchange, so a dead worker ends the run with an error instead of a hang.
    """
    if name == "multi_worker" or (name == "auto" and _workers_in_tf_config() > 1):
        if _workers_in_tf_config() < 1:
            raise UserError("params key 'train.strategy' is multi_worker but TF_CONFIG names no workers")
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=worker_timeout or None)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if len(gpus) > 1:
            name = "mirrored"
        elif len(gpus) == 1:
            name = "one_device"
        else:
            name = "default"
    if name == "mirrored":
        # All GPUs; on a machine without one, every logical CPU device (how the tests run it).
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def training_strategy(train: TrainParams) -> tf.distribute.Strategy:
    """The first TensorFlow calls of a training run: thread pools and a multi-worker strategy
    are fixed at start-up. XLA with several CPU workers is refused (no CPU collectives)."""
    retain_freed_memory(train.malloc_top_pad_mb)
    set_cpu_threads(train.intra_op_threads, train.inter_op_threads)
    strategy = make_strategy(train.strategy, train.worker_timeout)
    if train.jit_compile and workers(strategy) > 1 and not tf.config.list_logical_devices("GPU"):
        raise UserError("params key 'train.jit_compile' must be false for multi-worker training on CPUs "
                        "(TensorFlow's XLA has no collectives for CPU devices); GPU workers may keep it true")
    return strategy


@contextlib.contextmanager
def worker_outputs(strategy: tf.distribute.Strategy, paths: TrainPaths) -> Iterator[TrainPaths]:
    """The paths this process trains into: ``paths`` on the chief (and in a single-process
    run); on another worker of a multi-worker run, scratch copies removed at the end (and at
    the next start, after a kill). Every worker resumes from the shared ``paths.checkpoints``.

    A non-chief worker computes what the chief does (it takes part in every exchange) but
    writes nothing of the outputs. A peer lost during the run becomes one UserError line
    that says how to resume.
    """
    try:
        if is_chief(strategy):
            yield paths
            return
        task = strategy.cluster_resolver
        where = hashlib.sha256(str(paths.checkpoints.resolve()).encode()).hexdigest()[:12]
        scratch = Path(tempfile.gettempdir()) / f"gan-train-{task.task_type}{task.task_id}-{where}"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            yield TrainPaths(**{f.name: None if getattr(paths, f.name) is None else scratch / getattr(paths, f.name).name
                                for f in dataclasses.fields(TrainPaths)})
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except _LOST_WORKER as exc:
        if workers(strategy) < 2:
            raise
        detail = (re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(exc)).strip().splitlines() or [""])[0][:160]
        raise UserError(f"train: lost contact with another worker ({type(exc).__name__}: {detail}); "
                        "restart every worker: `dvc repro` on the chief resumes from the newest checkpoint "
                        f"in {paths.checkpoints}") from None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the outputs: always, except on a multi-worker
    strategy's non-chief workers (TF_CONFIG task ``chief``, or ``worker`` 0 when no chief)."""
    return bool(strategy.extended.should_checkpoint)


def workers(strategy: tf.distribute.Strategy) -> int:
    """How many processes train together (1 unless multi-worker)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return _workers_in_tf_config()
    return 1


def environment(train: TrainParams, strategy: tf.distribute.Strategy) -> dict:
    """What a teammate needs to tell why two runs differ."""
    return {
        "workers": workers(strategy),
        "cpu": cpu_info(),
        "tensorflow": tf.__version__,
        # the build: tensorflow-cpu or the CUDA one, and oneDNN (TF_ENABLE_ONEDNN_OPTS, on by default)
        "tensorflow_build": {"cuda": tf.test.is_built_with_cuda(),
                             "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0"},
        "keras": keras.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "gpus": [d.name for d in tf.config.list_logical_devices("GPU")],
        # MultiWorkerMirroredStrategy's class is named CollectiveAllReduceStrategy: say the documented name.
        "strategy": "MultiWorkerMirroredStrategy" if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        else type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "jit_compile": train.jit_compile,
        "mixed_precision": train.mixed_precision,
        "precision_policy": keras.mixed_precision.global_policy().name,
        "deterministic": train.deterministic,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "malloc_top_pad_mb": _top_pad_mb,  # what training_strategy set, not asked again
    }
