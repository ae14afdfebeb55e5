"""The GAN training loop: data feeding, the compiled train step, EMA, checkpoints, logging.

Read top to bottom: :func:`train` sets up the runtime and the data, builds a
:class:`GAN`, resumes from the newest matching checkpoint, then runs epochs of compiled
chunks of steps, logging each epoch and saving checkpoints and generator snapshots.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from src import checkpoint, faults, runtime
from src.augment import Augmenter, next_probability
from src.atomic import remove_stale_temps, save_arrays, write_json
from src.config import Params, to_dict
from src.dataset import open_shards
from src.errors import UserError
from src.keras_file import save_model
from src.losses import get_loss, gradient_penalty
from src.networks import assign_from_arrays, build_discriminator, build_generator, variables_to_arrays
from src.render import make_grid
from src.sampling import latents, to_uint8
from src.train_log import TrainLog
from src.train_log import summary as train_log_summary

# The epoch row of the train log: "epoch" is DVCLive's step; every other column is logged as a metric.
LOG_COLUMNS = ("epoch", "global_step", "d_loss", "g_loss", "d_acc_real", "d_acc_fake", "images_per_sec", "augment_p")
LIVE_GRID = (64, 8, 112)  # the train log's snapshot grids: images, columns, display pixels (fixed: not sample.*)
_SUMS = ("d_loss", "g_loss", "d_acc_real", "d_acc_fake")


@dataclass(frozen=True)
class TrainPaths:
    """Everything the train stage writes (the ``outs`` of the stage in ``dvc.yaml``)."""
    checkpoints: Path
    snapshots: Path
    log: Path            # the DVCLive folder: metrics.json, plots/metrics/<column>.tsv, plots/images/grid/
    generator: Path      # the exported EMA generator (.keras, same weights -> same bytes)
    environment: Path    # JSON: versions, devices, switches
    tensorboard: Path | None = None  # TensorBoard event files (train.tensorboard); None: next to ``log``


class NonFiniteLoss(UserError):
    pass


# ---------------------------------------------------------------------------- data
class ShardReader:
    """Random access to images spread over memory-mapped shards (never all in memory)."""

    def __init__(self, shards: list[np.ndarray]):
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])
        self.count = int(self.starts[-1])

    def gather(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices),) + self.shards[0].shape[1:], dtype=np.float32)
        which = np.searchsorted(self.starts, indices, side="right") - 1
        for s in np.unique(which):
            mask = which == s
            local = indices[mask] - self.starts[s]
            order = np.argsort(local)  # sorted reads are sequential reads on the memory map
            rows = np.empty(len(local), dtype=np.intp)
            rows[order] = np.arange(len(local))
            out[mask] = self.shards[s][local[order]][rows]
        return out


def epoch_order(seed: int, epoch: int, count: int, needed: int) -> np.ndarray:
    """The image indices that epoch ``epoch`` uses, in order: fresh permutations from (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = [rng.permutation(count) for _ in range(math.ceil(needed / count))]
    return np.concatenate(order)[:needed]


# ---------------------------------------------------------------------------- the model pair
class GAN:
    """Generator, discriminator, EMA weights and both optimizers, with a compiled step."""

    def __init__(self, params: Params, strategy: tf.distribute.Strategy):
        self.params = params
        self.strategy = strategy
        self.replicas = strategy.num_replicas_in_sync
        t = params.train
        self.loss = get_loss(t.loss, t.label_smoothing)
        self.augmenter = Augmenter(tuple(t.augment.policy), params.data.value_range) if t.augment.policy else None
        with strategy.scope():
            self.generator = build_generator(params.model, params.data)
            self.discriminator = build_discriminator(params.model, params.data)
            self.ema_generator = build_generator(params.model, params.data)
            self.g_opt = self._optimizer(t.g_optimizer)
            self.d_opt = self._optimizer(t.d_optimizer)
            self.g_opt.build(self.generator.trainable_variables)
            self.d_opt.build(self.discriminator.trainable_variables)
            # Plain tf.Variables so that replicas may update them in step (each computes the same value).
            self.ema = [tf.Variable(v.value, trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                        for v in self.generator.trainable_variables]
            # The augmentation probability: read by the step, set between compiled calls.
            self.augment_p = tf.Variable(t.augment.probability, trainable=False, dtype=tf.float32,
                                         aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.seed = params.common.seed
        self._chunk_fn = None

    def _optimizer(self, p) -> keras.optimizers.Optimizer:
        opt = keras.optimizers.Adam(learning_rate=p.learning_rate, beta_1=p.beta_1, beta_2=p.beta_2)
        if self.params.train.mixed_precision == "mixed_float16":
            opt = keras.optimizers.LossScaleOptimizer(opt)
        return opt

    # -- one step (replica context) -------------------------------------------------------
    def _noise(self, step, purpose: int, batch):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        seed = tf.random.experimental.stateless_fold_in(seed, purpose * 4096 + tf.cast(replica, tf.int64))
        return seed if batch is None else tf.random.stateless_normal([batch, self.params.model.latent_dim], seed=seed)

    def _augment(self, images, step, purpose: int):
        """What D sees: ``images`` augmented with draws from (seed, step, purpose, replica)."""
        if self.augmenter is None:
            return images
        return self.augmenter(images, self.augment_p, self._noise(step, purpose, None))

    def _d_loss(self, real, fake, real_logits, fake_logits, step):
        loss = self.loss.d_loss(real_logits, fake_logits)
        if self.loss.uses_gradient_penalty:
            loss += self.params.train.gp_weight * gradient_penalty(
                self.discriminator, real, fake, self._noise(step, 2, None))
        return loss

    def d_step(self, real, step):
        """Update the discriminator only."""
        z = self._noise(step, 1, tf.shape(real)[0])
        real = self._augment(real, step, 3)
        fake = self._augment(self.generator(z, training=True), step, 4)
        with tf.GradientTape() as tape:
            real_logits = self.discriminator(real, training=True)
            fake_logits = self.discriminator(fake, training=True)
            d_loss = self._d_loss(real, fake, real_logits, fake_logits, step)
            scaled = self.d_opt.scale_loss(d_loss / self.replicas)
        d_vars = self.discriminator.trainable_variables
        self.d_opt.apply_gradients(zip(tape.gradient(scaled, d_vars), d_vars))
        return d_loss, tf.constant(0.0), real_logits, fake_logits

    def joint_step(self, real, step):
        """Update both networks from one forward pass (the original two-tape step).

        Each tape differentiates only its own network's variables, so the discriminator's
        update never touches the generator and the other way round.
        """
        z = self._noise(step, 1, tf.shape(real)[0])
        real = self._augment(real, step, 3)
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            fake = self._augment(self.generator(z, training=True), step, 4)  # G's gradient flows through
            real_logits = self.discriminator(real, training=True)
            fake_logits = self.discriminator(fake, training=True)
            d_loss = self._d_loss(real, fake, real_logits, fake_logits, step)
            g_loss = self.loss.g_loss(fake_logits)
            d_scaled = self.d_opt.scale_loss(d_loss / self.replicas)
            g_scaled = self.g_opt.scale_loss(g_loss / self.replicas)
        d_vars = self.discriminator.trainable_variables
        g_vars = self.generator.trainable_variables
        d_grads = d_tape.gradient(d_scaled, d_vars)
        g_grads = g_tape.gradient(g_scaled, g_vars)
        self.d_opt.apply_gradients(zip(d_grads, d_vars))
        self.g_opt.apply_gradients(zip(g_grads, g_vars))
        self._update_ema(step)
        return d_loss, g_loss, real_logits, fake_logits

    def _update_ema(self, step):
        ema = self.params.train.ema
        if not ema.enabled:
            return
        # Warm-up: early on, the average follows the weights closely (as tf.train.ExponentialMovingAverage).
        s = tf.cast(step, tf.float32)
        decay = tf.minimum(ema.decay, (1.0 + s) / (10.0 + s))
        for avg, var in zip(self.ema, self.generator.trainable_variables):
            avg.assign(decay * avg + (1.0 - decay) * tf.cast(var.value, avg.dtype))

    def _one_step(self, real, step, g_step=None):
        """One step on one real batch: a joint update, or a discriminator-only one when
        ``train.d_steps`` > 1 and this is not the d_steps-th step. ``g_step`` is given
        (a Python bool) when the loop is unrolled, so no sync point sits inside a tf.cond."""
        d_steps = self.params.train.d_steps
        if d_steps == 1 or g_step is True:
            return self.joint_step(real, step)
        if g_step is False:
            return self.d_step(real, step)
        return tf.cond((step + 1) % d_steps == 0,
                       lambda: self.joint_step(real, step), lambda: self.d_step(real, step))

    def _replica_chunk(self, images, start_step, static_steps):
        """Run the steps of one chunk over ``images`` of shape (k * b, H, W, C); return sums.

        With one replica the steps run in a ``tf.range`` loop (one small graph, any k).
        With several, gradient all-reduces may not sit inside graph control flow, so the
        ``static_steps`` steps are unrolled instead.
        """
        b = self.params.train.batch_size // self.replicas
        images = tf.reshape(images, tf.concat([[-1, b], tf.shape(images)[1:]], axis=0))
        dtype = self.discriminator.compute_dtype
        sums = tf.zeros([4], tf.float32)
        first_bad = tf.constant(-1, tf.int64)
        if static_steps is None:
            indices, g_steps = tf.range(tf.shape(images, out_type=tf.int64)[0]), None
        else:
            indices = range(static_steps)
            g_steps = [(i + 1) % self.params.train.d_steps == 0 for i in indices]
        for i in indices:
            step = start_step + i
            g_step = None if g_steps is None else g_steps[i]
            d_loss, g_loss, real_logits, fake_logits = self._one_step(tf.cast(images[i], dtype), step, g_step)
            values = tf.stack([tf.cast(d_loss, tf.float32), tf.cast(g_loss, tf.float32),
                               tf.reduce_mean(tf.cast(real_logits > 0, tf.float32)),
                               tf.reduce_mean(tf.cast(fake_logits < 0, tf.float32))])
            finite = tf.reduce_all(tf.math.is_finite(values[:2]))
            first_bad = tf.where((first_bad < 0) & ~finite, step, first_bad)
            sums += values
        return sums, first_bad

    def train_chunk(self, dist_images, start_step: int, steps: int | None = None):
        """Run one chunk of ``steps`` steps on every replica.

        Returns the mean over replicas of the summed (d_loss, g_loss, d_acc_real,
        d_acc_fake), and the first step with a non-finite loss (-1 if none).
        """
        if self._chunk_fn is None:
            def chunk(images, start, static_steps):
                sums, bad = self.strategy.run(self._replica_chunk, args=(images, start, static_steps))
                first_bad = tf.reduce_max(tf.stack(self.strategy.experimental_local_results(bad)))
                return self.strategy.reduce(tf.distribute.ReduceOp.MEAN, sums, axis=None), first_bad
            self._chunk_fn = tf.function(chunk, jit_compile=self.params.train.jit_compile, reduce_retracing=True)
        static_steps = steps if self.replicas > 1 else None
        sums, bad = self._chunk_fn(dist_images, tf.constant(start_step, tf.int64), static_steps)
        return sums.numpy(), int(bad.numpy())

    # -- state ------------------------------------------------------------------------------
    def sync_ema_model(self) -> keras.Model:
        """The EMA generator as a Keras model: averaged weights, BatchNorm statistics copied."""
        source = self.ema if self.params.train.ema.enabled else self.generator.trainable_variables
        trainable = {id(v): i for i, v in enumerate(self.generator.trainable_variables)}
        for var, target in zip(self.generator.variables, self.ema_generator.variables):
            i = trainable.get(id(var))
            value = source[i] if i is not None else var
            target.assign(value.numpy() if hasattr(value, "numpy") else value)
        return self.ema_generator

    def state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {}
        arrays.update(variables_to_arrays(self.generator, "g"))
        arrays.update(variables_to_arrays(self.discriminator, "d"))
        arrays.update({f"ema.{i:03d}": np.asarray(v.numpy()) for i, v in enumerate(self.ema)})
        arrays.update({f"gopt.{i:03d}": np.asarray(v.numpy()) for i, v in enumerate(self.g_opt.variables)})
        arrays.update({f"dopt.{i:03d}": np.asarray(v.numpy()) for i, v in enumerate(self.d_opt.variables)})
        return arrays

    def load_state(self, arrays: dict[str, np.ndarray], source: str) -> None:
        assign_from_arrays(self.generator.variables, arrays, "g", source)
        assign_from_arrays(self.discriminator.variables, arrays, "d", source)
        assign_from_arrays(self.ema, arrays, "ema", source)
        assign_from_arrays(self.g_opt.variables, arrays, "gopt", source)
        assign_from_arrays(self.d_opt.variables, arrays, "dopt", source)


# ---------------------------------------------------------------------------- helpers
def fingerprint(params: Params, manifest: dict) -> dict:
    """Everything that shapes the training trajectory; a change means a fresh start.

    ``train.epochs`` is left out on purpose: raising it continues a finished run, which
    gives the same weights as one run to the new count. How often checkpoints are kept
    and the sample schedule do not change the weights either.
    """
    train = {k: v for k, v in to_dict(params.train).items()
             if k not in ("epochs", "checkpoint_every", "keep_checkpoints", "worker_timeout", "tensorboard")}
    shards = [s["sha256"] for s in manifest["shards"]]
    data = {k: v for k, v in to_dict(params.data).items() if k in ("image_size", "channels", "range")}
    return {"common": to_dict(params.common), "data": data, "model": to_dict(params.model),
            "train": train, "shards": shards}


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, name + ".")
        elif a != b:
            keys.append("data shards" if name == "shards" else name)
    return keys


def _live_grid(params: Params, generator: keras.Model) -> np.ndarray:
    """The train log's picture of a snapshot: the fixed latent batch of the sample stage
    (``common.seed``), ``LIVE_GRID`` images in a grid, enlarged to about 112 pixels each."""
    count, columns, pixels = LIVE_GRID
    z = latents(count, params.model.latent_dim, params.common.seed)
    images = to_uint8(np.asarray(generator(z, training=False)), params.data.value_range)
    return make_grid(images, columns, scale=max(1, -(-pixels // params.data.image_size)))


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next chunk boundary."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _check_shapes(params: Params, manifest: dict, processed: Path) -> None:
    d = params.data
    expected = [d.image_size, d.image_size, d.channels]
    if list(manifest["shape"]) != expected or [float(x) for x in manifest["range"]] != list(d.value_range):
        raise UserError(f"{processed / 'manifest.json'}: shards are {manifest['shape']} in {manifest['range']} "
                        f"but params.yaml says {expected} in {list(d.range)}; rerun the preprocess stage")
    if params.train.batch_size > manifest["count"]:
        raise UserError(f"params key 'train.batch_size' must be <= the number of images ({manifest['count']}); "
                        f"got {params.train.batch_size}")


# ---------------------------------------------------------------------------- the loop
def train(params: Params, processed: Path, paths: TrainPaths) -> dict:
    """Train (or resume) the GAN described by ``params`` on the shards in ``processed``.

    Returns a summary dict (final epoch, last epoch's losses). Raises UserError on bad
    data, a non-finite loss or a stop request (after saving a checkpoint).
    """
    t = params.train
    manifest, shards = open_shards(processed, verify=True)
    _check_shapes(params, manifest, processed)
    # The first TensorFlow call: a multi-worker strategy must be set up before any other op.
    strategy = runtime.make_strategy(t.strategy, t.worker_timeout)
    if t.jit_compile and runtime.workers(strategy) > 1 and not tf.config.list_logical_devices("GPU"):
        raise UserError("params key 'train.jit_compile' must be false for multi-worker training on CPUs "
                        "(TensorFlow's XLA has no collectives for CPU devices); GPU workers may keep it true")
    try:
        if runtime.is_chief(strategy):
            return _train(params, strategy, manifest, shards, paths, paths.checkpoints)
        # A non-chief worker computes what the chief does (it takes part in every exchange)
        # but writes nothing of the outputs: its copies go to a scratch folder, removed at the
        # end (and at the next start, after a kill). It resumes from the shared checkpoints.
        task = strategy.cluster_resolver
        where = hashlib.sha256(str(paths.checkpoints.resolve()).encode()).hexdigest()[:12]
        scratch = Path(tempfile.gettempdir()) / f"gan-train-{task.task_type}{task.task_id}-{where}"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            own = TrainPaths(**{f.name: None if getattr(paths, f.name) is None else scratch / getattr(paths, f.name).name
                                for f in dataclasses.fields(TrainPaths)})
            return _train(params, strategy, manifest, shards, own, paths.checkpoints)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except _LOST_WORKER as exc:
        if runtime.workers(strategy) < 2:
            raise
        detail = (re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(exc)).strip().splitlines() or [""])[0][:160]
        raise UserError(f"train: lost contact with another worker ({type(exc).__name__}: {detail}); "
                        "restart every worker: `dvc repro` on the chief resumes from the newest checkpoint "
                        f"in {paths.checkpoints}") from None


# What a collective exchange raises when a peer is gone or does not answer within train.worker_timeout.
_LOST_WORKER = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                tf.errors.AbortedError)


def _train(params: Params, strategy: tf.distribute.Strategy, manifest: dict, shards: list, paths: TrainPaths,
           resume_from: Path) -> dict:
    """The body of :func:`train`: writes to ``paths``, resumes from ``resume_from``."""
    t = params.train
    runtime.configure(t, params.common.seed)
    if t.batch_size % strategy.num_replicas_in_sync:
        raise UserError(f"params key 'train.batch_size' must be a multiple of the {strategy.num_replicas_in_sync} "
                        f"replicas; got {t.batch_size}")
    env = runtime.environment(t, strategy)
    gan = GAN(params, strategy)
    reader = ShardReader(shards)
    steps_per_epoch = t.steps_per_epoch or reader.count // t.batch_size
    print = tqdm.write  # keep the progress bar intact

    # -- resume or start fresh ------------------------------------------------------------
    new_print = fingerprint(params, manifest)
    epoch, step_in_epoch, step, sums = 0, 0, 0, np.zeros(4)
    found = checkpoint.load_latest(resume_from, max_epoch=t.epochs)
    if found is not None:
        arrays, meta, path = found
        changed = _changed_keys(meta["fingerprint"], new_print)
        if changed:
            print(f"train: params changed since {path} ({', '.join(changed[:6])}); starting fresh")
        elif meta["epoch"] == t.epochs and meta["step_in_epoch"]:
            print(f"train: {path} is past train.epochs={t.epochs}; starting fresh")
        else:
            gan.load_state(arrays, str(path))
            epoch, step_in_epoch, step = meta["epoch"], meta["step_in_epoch"], meta["step"]
            sums = np.asarray(meta["sums"], dtype=np.float64)
            gan.augment_p.assign(meta.get("augment_p", t.augment.probability))
            print(f"train: resuming from {path} (epoch {epoch}, step {step})")
        if epoch == 0 and step == 0:
            found = None
    if found is None:
        for folder in (paths.checkpoints, paths.snapshots):
            shutil.rmtree(folder, ignore_errors=True)
    else:
        # Files from past the resume point (a run with more epochs) are not this run's: the
        # training below writes them again, identical, if it gets that far.
        for old in checkpoint.list_checkpoints(paths.checkpoints):
            if old.name > found[2].name:
                old.unlink()
        for old in paths.snapshots.glob("generator_epoch_*.npz"):
            if int(old.stem.rsplit("_", 1)[1]) > epoch:
                old.unlink()
    tensorboard = paths.tensorboard or paths.log.parent / "tensorboard"
    shutil.rmtree(tensorboard, ignore_errors=True)  # rebuilt from the DVCLive log when switched on
    for folder in (paths.checkpoints, paths.snapshots, paths.log, tensorboard):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)  # a killed run's half-written checkpoint or snapshot
    # Cut back to the resume point: epochs logged after the checkpoint are logged again below.
    log = TrainLog(paths.log, epoch, tensorboard if t.tensorboard else None)
    write_json(paths.environment, env)
    write_json(paths.checkpoints / "config.json", {"params": to_dict(params), "environment": env})

    def save_checkpoint():
        meta = {"epoch": epoch, "step_in_epoch": step_in_epoch, "step": step, "sums": sums.tolist(),
                "augment_p": float(gan.augment_p.numpy()), "fingerprint": new_print}
        return checkpoint.save(paths.checkpoints, gan.state_arrays(), meta, t.keep_checkpoints)

    # -- the epochs ---------------------------------------------------------------------------
    k = t.steps_per_call
    chunk_steps = []  # the steps of each chunk of the epoch
    remaining = steps_per_epoch
    while remaining > 0:
        chunk_steps.append(min(k, remaining))
        remaining -= chunk_steps[-1]
    shape = (params.data.image_size, params.data.image_size, params.data.channels)
    local_batch = t.batch_size // strategy.num_replicas_in_sync

    def run_dataset(first_epoch: int, skip_steps: int):
        """Every remaining chunk of the run, in order, as one input pipeline.

        One pipeline for the whole run (not one per epoch) keeps the prefetch buffer full
        across epoch boundaries. Epoch ``e`` draws its order from ``(seed, e)`` alone, so a
        resumed run reads exactly the batches an uninterrupted one would.
        """
        def dataset_fn(context: tf.distribute.InputContext):
            local = strategy.num_replicas_in_sync // context.num_input_pipelines
            replicas = range(context.input_pipeline_id * local, (context.input_pipeline_id + 1) * local)

            def chunks():
                for epoch_index in range(first_epoch, t.epochs):
                    order = epoch_order(params.common.seed, epoch_index, reader.count, steps_per_epoch * t.batch_size)
                    order = order.reshape(steps_per_epoch, t.batch_size)
                    start = 0
                    for n in chunk_steps:
                        if epoch_index > first_epoch or start >= skip_steps:
                            for r in replicas:  # consecutive elements go to consecutive local replicas
                                rows = order[start:start + n, r * local_batch:(r + 1) * local_batch]
                                yield reader.gather(rows.reshape(-1))
                        start += n

            spec = tf.TensorSpec((None,) + shape, tf.float32)
            return tf.data.Dataset.from_generator(chunks, output_signature=spec).prefetch(2)

        return iter(strategy.distribute_datasets_from_function(dataset_fn))

    if step_in_epoch and step_in_epoch not in np.cumsum(chunk_steps):
        raise UserError(f"{paths.checkpoints}: the checkpoint stopped mid-epoch at a step that train.steps_per_call "
                        "no longer divides; restore the value or delete the folder to start fresh")
    total_steps = t.epochs * steps_per_epoch
    # A live bar on a terminal; in logs (dvc repro piped to a file) the epoch lines carry the ETA.
    bar = tqdm(total=total_steps, initial=step, unit="step", desc="train", file=sys.stderr,
               disable=not sys.stderr.isatty(), dynamic_ncols=True)
    print(f"train: {env['replicas']} replica(s) with {env['strategy']} on {', '.join(env['gpus']) or 'CPU'}; "
          f"XLA {'on' if t.jit_compile else 'off'}, precision {t.mixed_precision}; "
          f"epoch {epoch} of {t.epochs}, {steps_per_epoch} steps of {t.batch_size} images each")
    run_started, run_first_step = time.perf_counter(), step
    last_row = None
    batches = run_dataset(epoch, step_in_epoch) if epoch < t.epochs else None
    with _StopRequest() as stop, bar:
        while epoch < t.epochs:
            started = time.perf_counter()
            steps_before = step_in_epoch
            while step_in_epoch < steps_per_epoch:
                dist_images = next(batches)
                n = chunk_steps[int(np.searchsorted(np.cumsum(chunk_steps), step_in_epoch, side="right"))]
                chunk_sums, bad = gan.train_chunk(dist_images, step, n)
                if bad >= 0:
                    raise NonFiniteLoss(f"train: non-finite loss at epoch {epoch + 1}, step {bad} "
                                        f"(the last good checkpoint in {paths.checkpoints} is kept); "
                                        "try a lower learning rate or train.mixed_precision none")
                sums += chunk_sums
                if t.augment.adaptive and gan.augmenter is not None:
                    # ADA: r_t = E[sign(D(real))] = 2 * (share of reals D calls real) - 1, over this call.
                    r_t = 2.0 * chunk_sums[2] / n - 1.0
                    gan.augment_p.assign(next_probability(float(gan.augment_p.numpy()), r_t, t.augment.target,
                                                          n * t.batch_size, t.augment.speed_kimg * 1000.0))
                step += n
                step_in_epoch += n
                bar.update(n)
                faults.point("chunk")
                if stop.signum is not None:
                    path = save_checkpoint()
                    print(f"train: stopped by signal {stop.signum} at epoch {epoch + 1}, step {step}; "
                          f"checkpoint {path}; `dvc repro` resumes from there")
                    raise SystemExit(128 + stop.signum)
            seconds = time.perf_counter() - started
            images_per_sec = (step_in_epoch - steps_before) * t.batch_size / max(seconds, 1e-9)
            means = sums / steps_per_epoch
            epoch += 1
            augment_p = float(gan.augment_p.numpy())
            row = dict(zip(LOG_COLUMNS, [epoch, step] + [round(float(v), 6) for v in means]
                           + [round(images_per_sec, 1), round(augment_p, 6)]))
            log.epoch(epoch, {k: v for k, v in row.items() if k != "epoch"})
            last_row = row
            per_step = (time.perf_counter() - run_started) / max(step - run_first_step, 1)
            eta = int(per_step * (total_steps - step))
            print(f"epoch {epoch}/{t.epochs}: d_loss {means[0]:.4f}, g_loss {means[1]:.4f}, "
                  f"d_acc real {means[2]:.2f} fake {means[3]:.2f}, {images_per_sec:.0f} img/s, "
                  + (f"augment p {augment_p:.3f}, " if gan.augmenter is not None else "") +
                  f"eta {eta // 60}m{eta % 60:02d}s")
            step_in_epoch, sums = 0, np.zeros(4)
            if epoch % params.sample.every_epochs == 0 or epoch == t.epochs:
                snapshot = paths.snapshots / f"generator_epoch_{epoch:04d}.npz"
                ema_model = gan.sync_ema_model()
                save_arrays(snapshot, variables_to_arrays(ema_model, "g"))
                log.image(epoch, _live_grid(params, ema_model))
            if epoch % t.checkpoint_every == 0 or epoch == t.epochs:
                save_checkpoint()
    log.close()
    save_model(gan.sync_ema_model(), paths.generator)
    if last_row is None:  # nothing left to train: the last epoch's values from the log
        last_row = train_log_summary(paths.log)
    return {"epoch": epoch, "step": step,
            **{k: float(v) for k, v in last_row.items() if k not in ("epoch", "step", "global_step")}}
