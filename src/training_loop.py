"""The GAN training loop, in the order it runs.

:func:`train` checks the data and sets up the strategy (:mod:`src.runtime` decides what a
multi-worker run's other workers write); :func:`_train` then goes through these parts, top
to bottom in this file:

1. the model: :func:`build_gan` makes the networks, optimizers and :class:`~src.gan.GAN`;
2. the resume (:func:`resume`): the checkpoint :func:`src.checkpoint.resume_point` picks
   (same fingerprint, not past the run), or a fresh start; files from past the resume
   point are dropped;
3. the data plan (:class:`DataPlan`): steps per epoch, chunks of ``train.steps_per_call``
   steps, and one input pipeline over every chunk left in the run;
4. the epoch loop (:meth:`Run.epoch`): compiled chunks, the non-finite guard, adaptive
   augmentation, stop signals;
5. the epoch's bookkeeping (:meth:`Run.end_epoch`): the log row, snapshot, checkpoint;
6. export (:meth:`Run.export`): the EMA generator as ``generator.keras``.

Everything that carries over from one chunk to the next is one :class:`RunState`: it is
what a checkpoint's ``meta`` records (the weights are the GAN's variables).
"""
from __future__ import annotations

import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from src import checkpoint, faults, runtime, snapshots
from src.atomic import remove_stale_temps, write_json, write_text
from src.augment import Augmenter, next_probability
from src.config import AdamParams, Params, to_dict
from src.dataset import ShardReader, class_names, open_shards
from src.errors import UserError
from src.gan import GAN, STEP_RESULTS
from src.keras_file import save_model
from src.losses import LossOptions, get_loss
from src.networks import build_discriminator, build_generator, build_reconstructor
from src.paths import TrainPaths
from src.pictures import make_grid
from src.sampling import grid_inputs, num_classes, run_generator, to_uint8
from src.train_log import TrainLog
from src.train_log import summary as train_log_summary

__all__ = ["GAN", "LOG_COLUMNS", "DataPlan", "NonFiniteLoss", "RunState", "TrainPaths", "build_gan", "train"]

# The epoch row of the train log: "epoch" is DVCLive's step; every other column is logged as a metric.
LOG_COLUMNS = ("epoch", "global_step", "d_loss", "g_loss", "d_acc_real", "d_acc_fake", "images_per_sec", "augment_p")
TENSORBOARD_OFF = ("TensorBoard event files of the train log are written in this folder when params.yaml sets "
                   "train.tensorboard: true.\n")
LIVE_GRID = (64, 8, 112)  # the train log's snapshot grids: images, columns, display pixels (fixed: not sample.*)

_say = tqdm.write  # messages that keep the progress bar intact


class NonFiniteLoss(UserError):
    pass


# ---------------------------------------------------------------------------- entry point
def train(params: Params, processed: Path, paths: TrainPaths) -> dict:
    """Train (or resume) the GAN described by ``params`` on the shards in ``processed``.

    Returns a summary dict (final epoch, last epoch's losses). Raises UserError on bad
    data, a non-finite loss or a stop request (after saving a checkpoint).
    """
    manifest, shards, labels = open_shards(processed, verify=True, with_labels=True)
    _check_shapes(params, manifest, processed)
    strategy = runtime.training_strategy(params.train)
    with runtime.worker_outputs(strategy, paths) as own_paths:  # a non-chief worker writes to scratch
        return _train(params, strategy, manifest, ShardReader(shards, labels), own_paths, paths.checkpoints)


def _train(params: Params, strategy: tf.distribute.Strategy, manifest: dict, reader: ShardReader, paths: TrainPaths,
           resume_from: Path) -> dict:
    """The body of :func:`train`: writes to ``paths``, resumes from ``resume_from``."""
    t = params.train
    runtime.configure(t, params.common.seed)
    if t.batch_size % strategy.num_replicas_in_sync:
        raise UserError(f"params key 'train.batch_size' must be a multiple of the {strategy.num_replicas_in_sync} "
                        f"replicas; got {t.batch_size}")
    env = runtime.environment(t, strategy)
    gan = build_gan(params, strategy, class_names(manifest))
    plan = DataPlan.make(params, reader.count)
    made_with = checkpoint.fingerprint(params, manifest)
    state, resumed = resume(params, gan, made_with, resume_from)
    plan.check_resume_point(state.step_in_epoch, paths.checkpoints)
    log = _prepare_outputs(params, paths, state.epoch, resumed, env)
    run = Run(params, gan, plan, paths, log, made_with)

    _say(f"train: {env['replicas']} replica(s) with {env['strategy']} on {', '.join(env['gpus']) or 'CPU'}; "
         f"XLA {'on' if t.jit_compile else 'off'}, precision {env['precision_policy']}; "
         f"epoch {state.epoch} of {t.epochs}, {plan.steps_per_epoch} steps of {t.batch_size} images each")
    batches = plan.batches(strategy, reader, state.epoch, state.step_in_epoch) if state.epoch < t.epochs else None
    with _StopRequest() as stop, _Progress(t.epochs * plan.steps_per_epoch, state.step) as progress:
        while state.epoch < t.epochs:
            steps, seconds = run.epoch(state, batches, stop, progress)
            run.end_epoch(state, steps, seconds, progress)
    return run.export(state)


# ---------------------------------------------------------------------------- 1. the model
def build_augmenter(params: Params) -> Augmenter | None:
    """The differentiable augmentation ``train.augment`` describes (None when its policy is empty)."""
    a = params.train.augment
    if not a.policy:
        return None
    always = not a.adaptive and a.probability >= 1.0  # p fixed at 1: the per-image choice left out
    return Augmenter(tuple(a.policy), params.data.value_range, a.translation_ratio, a.cutout_ratio, always=always)


def build_gan(params: Params, strategy: tf.distribute.Strategy | None = None, classes=()) -> GAN:
    """The :class:`GAN` that ``params`` describe, its variables made under ``strategy``'s scope;
    conditional on ``classes`` (the data's class names, by index) when there are any.

    Call it after :func:`src.runtime.configure` (seeds and precision policy apply at build
    time). The generator, the discriminator and the EMA copy are built in this order, so
    the same seed gives the same initial weights.
    """
    t = params.train
    strategy = strategy or tf.distribute.get_strategy()
    augmenter = build_augmenter(params)
    with strategy.scope():
        generator = build_generator(params.model, params.data, classes)
        discriminator = build_discriminator(params.model, params.data, len(classes))
        ema_generator = build_generator(params.model, params.data, classes)
        reconstructor = build_reconstructor(discriminator, params.model, params.data) if t.reconstruction > 0 else None
        g_opt = _optimizer(t.g_optimizer, t.mixed_precision)
        d_opt = _optimizer(t.d_optimizer, t.mixed_precision)
        loss = get_loss(t.loss, LossOptions.from_train(t))
    return GAN(discriminator, generator, params.model.latent_dim, d_optimizer=d_opt, g_optimizer=g_opt, loss=loss,
               batch_size=t.batch_size, seed=params.common.seed, ema_generator=ema_generator,
               ema_decay=t.ema.decay if t.ema.enabled else None, d_steps=t.d_steps,
               augmenter=augmenter, augment_p=t.augment.probability, mirror=t.mirror,
               jit_compile=t.jit_compile, strategy=strategy, reconstructor=reconstructor)


def rampdown_factor(step: int, total_steps: int, rampdown: float) -> float:
    """The learning rate's factor at ``step`` of ``total_steps``: 1 until the last ``rampdown``
    fraction of the steps, then falling linearly to 0 at the end (1 throughout for 0)."""
    if rampdown <= 0:
        return 1.0
    return min(1.0, max(0.0, (total_steps - step) / (rampdown * total_steps)))


def _optimizer(p: AdamParams, mixed_precision: str) -> keras.optimizers.Optimizer:
    opt = keras.optimizers.Adam(learning_rate=p.learning_rate, beta_1=p.beta_1, beta_2=p.beta_2)
    if mixed_precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


# ---------------------------------------------------------------------------- 2. resume decision
@dataclass
class RunState:
    """What carries over from one chunk to the next: exactly what a checkpoint's ``meta`` records.

    Random state needs no field: latent noise and augmentation draws come from
    ``(seed, step)``, the data order from ``(seed, epoch)``, and dropout's seed state is a
    variable of the discriminator (saved with the weights).
    """
    epoch: int = 0          # epochs finished
    step_in_epoch: int = 0  # steps done in the epoch under way
    step: int = 0           # steps done in the run
    sums: np.ndarray = field(default_factory=lambda: np.zeros(len(STEP_RESULTS)))  # the epoch's sums, STEP_RESULTS order
    augment_p: float = 0.0  # the augmentation probability (a float32 value: what the step reads)

    @classmethod
    def fresh(cls, params: Params) -> RunState:
        return cls(augment_p=float(np.float32(params.train.augment.probability)))

    @classmethod
    def from_meta(cls, meta: dict, params: Params) -> RunState:
        return cls(epoch=meta["epoch"], step_in_epoch=meta["step_in_epoch"], step=meta["step"],
                   sums=np.asarray(meta["sums"], dtype=np.float64),
                   augment_p=float(np.float32(meta.get("augment_p", params.train.augment.probability))))

    def meta(self, fingerprint: dict) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "step": self.step,
                "sums": self.sums.tolist(), "augment_p": self.augment_p, "fingerprint": fingerprint}

    def add_chunk(self, sums: dict[str, float], steps: int) -> None:
        self.sums += np.array([sums[name] for name in STEP_RESULTS])
        self.step += steps
        self.step_in_epoch += steps

    def close_epoch(self, steps_per_epoch: int) -> dict[str, float]:
        """Count the epoch as finished; return the means of :data:`~src.gan.STEP_RESULTS` by name."""
        means = dict(zip(STEP_RESULTS, self.sums / steps_per_epoch))
        self.epoch, self.step_in_epoch, self.sums = self.epoch + 1, 0, np.zeros(len(STEP_RESULTS))
        return means


def resume(params: Params, gan: GAN, made_with: dict, folder: Path) -> tuple[RunState, Path | None]:
    """Where this run starts: the checkpoint :func:`src.checkpoint.resume_point` picks in
    ``folder`` (its state loaded into ``gan``) and its path, or a fresh :class:`RunState` and None."""
    found = checkpoint.resume_point(folder, made_with, params.train.epochs, _say)
    if found is None:
        return RunState.fresh(params), None
    arrays, meta, path = found
    gan.load_state(arrays, str(path))
    state = RunState.from_meta(meta, params)
    gan.augment_p.assign(state.augment_p)
    _say(f"train: resuming from {path} (epoch {state.epoch}, step {state.step})")
    return (state, path) if state.step > 0 else (RunState.fresh(params), None)


def _prepare_outputs(params: Params, paths: TrainPaths, epoch: int, resumed: Path | None, env: dict) -> TrainLog:
    """Make the output folders match the resume point; open the train log there.

    A fresh start clears checkpoints and snapshots. A resumed one drops the files from past
    its checkpoint (a run with more epochs): the training below writes them again,
    identical, if it gets that far. Temporary files of a killed run go either way.
    """
    if resumed is None:
        for folder in (paths.checkpoints, paths.snapshots):
            shutil.rmtree(folder, ignore_errors=True)
    else:
        for old in checkpoint.list_checkpoints(paths.checkpoints):
            if old.name > resumed.name:
                old.unlink()
        snapshots.remove_after(paths.snapshots, epoch)
    tensorboard = paths.tensorboard or paths.log.parent / "tensorboard"
    shutil.rmtree(tensorboard, ignore_errors=True)  # rebuilt from the DVCLive log when switched on
    for folder in (paths.checkpoints, paths.snapshots, paths.log, tensorboard):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)  # a killed run's half-written checkpoint or snapshot
    if not params.train.tensorboard:  # an empty out makes DVC warn in every run's log
        write_text(tensorboard / "README.txt", TENSORBOARD_OFF)
    # Cut back to the resume point: epochs logged after the checkpoint are logged again.
    log = TrainLog(paths.log, epoch, tensorboard if params.train.tensorboard else None)
    write_json(paths.environment, env)
    write_json(paths.checkpoints / "config.json", {"params": to_dict(params), "environment": env})
    return log


# ---------------------------------------------------------------------------- 3. the data plan
def epoch_order(seed: int, epoch: int, count: int, needed: int) -> np.ndarray:
    """The image indices that epoch ``epoch`` uses, in order: fresh permutations from (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = [rng.permutation(count) for _ in range(math.ceil(needed / count))]
    return np.concatenate(order)[:needed]


@dataclass(frozen=True)
class DataPlan:
    """Which images each compiled call trains on.

    An epoch is ``steps_per_epoch`` steps of ``batch_size`` images, in the order
    :func:`epoch_order` draws from ``(seed, epoch)``, cut into ``chunks``: calls of
    ``train.steps_per_call`` steps (the last one shorter if it does not divide).
    """
    seed: int
    epochs: int
    count: int              # images in the shards
    steps_per_epoch: int
    batch_size: int         # global (all replicas)
    chunks: tuple[int, ...]  # the steps of each call of an epoch, in order

    @classmethod
    def make(cls, params: Params, count: int) -> DataPlan:
        t = params.train
        steps_per_epoch = t.steps_per_epoch or count // t.batch_size
        full, rest = divmod(steps_per_epoch, t.steps_per_call)
        chunks = (t.steps_per_call,) * full + ((rest,) if rest else ())
        return cls(params.common.seed, t.epochs, count, steps_per_epoch, t.batch_size, chunks)

    def chunk_at(self, step_in_epoch: int) -> int:
        """The steps of the call that starts at ``step_in_epoch``."""
        return self.chunks[int(np.searchsorted(np.cumsum(self.chunks), step_in_epoch, side="right"))]

    def check_resume_point(self, step_in_epoch: int, folder: Path) -> None:
        if step_in_epoch and step_in_epoch not in np.cumsum(self.chunks):
            raise UserError(f"{folder}: the checkpoint stopped mid-epoch at a step that train.steps_per_call "
                            "no longer divides; restore the value or delete the folder to start fresh")

    def rows(self, first_epoch: int, skip_steps: int, replicas: range, local_batch: int) -> Iterator[np.ndarray]:
        """The image indices of every call left in the run (from ``skip_steps`` into
        ``first_epoch``), one array per call and replica of ``replicas``, in the order the
        input pipeline yields them (consecutive elements go to consecutive local replicas)."""
        for epoch in range(first_epoch, self.epochs):
            order = epoch_order(self.seed, epoch, self.count, self.steps_per_epoch * self.batch_size)
            order = order.reshape(self.steps_per_epoch, self.batch_size)
            start = 0
            for n in self.chunks:
                if epoch > first_epoch or start >= skip_steps:
                    for r in replicas:
                        yield order[start:start + n, r * local_batch:(r + 1) * local_batch].reshape(-1)
                start += n

    def batches(self, strategy: tf.distribute.Strategy, reader: ShardReader, first_epoch: int,
                skip_steps: int) -> Iterator:
        """Every remaining call's images (with labels: ``(images, labels)``), in order, as one
        distributed input pipeline.

        One pipeline for the whole run (not one per epoch) keeps the prefetch buffer full
        across epoch boundaries. Epoch ``e`` draws its order from ``(seed, e)`` alone, so a
        resumed run reads exactly the batches an uninterrupted one would.
        """
        replicas_total = strategy.num_replicas_in_sync
        local_batch = self.batch_size // replicas_total
        shape = reader.shards[0].shape[1:]

        def dataset_fn(context: tf.distribute.InputContext):
            local = replicas_total // context.num_input_pipelines
            replicas = range(context.input_pipeline_id * local, (context.input_pipeline_id + 1) * local)
            def calls():
                for rows in self.rows(first_epoch, skip_steps, replicas, local_batch):
                    yield reader.gather(rows)

            def labelled_calls():
                for rows in self.rows(first_epoch, skip_steps, replicas, local_batch):
                    yield reader.gather(rows), reader.gather_labels(rows)

            spec = tf.TensorSpec((None,) + tuple(shape), tf.float32)
            if reader.labels is None:
                return tf.data.Dataset.from_generator(calls, output_signature=spec).prefetch(2)
            spec = (spec, tf.TensorSpec((None,), tf.int32))
            return tf.data.Dataset.from_generator(labelled_calls, output_signature=spec).prefetch(2)

        return iter(strategy.distribute_datasets_from_function(dataset_fn))


# ---------------------------------------------------------------------------- 4-6. the run
@dataclass
class Run:
    """The parts of one run that stay fixed while it trains; :class:`RunState` holds the rest."""
    params: Params
    gan: GAN
    plan: DataPlan
    paths: TrainPaths
    log: TrainLog
    fingerprint: dict

    # -- 4. the epoch loop ------------------------------------------------------------------
    def epoch(self, state: RunState, batches: Iterator, stop: _StopRequest, progress: _Progress) -> tuple[int, float]:
        """Train the rest of the epoch under way, one compiled call at a time; return the
        steps this process ran in it and the seconds they took."""
        started, steps_before = time.perf_counter(), state.step_in_epoch
        while state.step_in_epoch < self.plan.steps_per_epoch:
            n = self.plan.chunk_at(state.step_in_epoch)
            self._set_learning_rates(state.step)
            chunk_sums, bad = self.gan.train_chunk(next(batches), state.step, n)
            if bad >= 0:
                raise NonFiniteLoss(f"train: non-finite loss at epoch {state.epoch + 1}, step {bad} "
                                    f"(the last good checkpoint in {self.paths.checkpoints} is kept); "
                                    "try a lower learning rate or train.mixed_precision none")
            state.add_chunk(chunk_sums, n)
            self._adapt_augmentation(state, chunk_sums, n)
            progress.update(n)
            faults.point("chunk")
            if stop.signum is not None:
                path = self.save_checkpoint(state)
                _say(f"train: stopped by signal {stop.signum} at epoch {state.epoch + 1}, step {state.step}; "
                     f"checkpoint {path}; `dvc repro` resumes from there")
                raise SystemExit(128 + stop.signum)
        return state.step_in_epoch - steps_before, time.perf_counter() - started

    def _set_learning_rates(self, step: int) -> None:
        """The rates of the chunk that starts at ``step``: the params' own, times
        :func:`rampdown_factor` (a function of the step alone, so a resumed run uses the rates
        an uninterrupted one would, whatever rates its checkpoint holds)."""
        t = self.params.train
        f = rampdown_factor(step, t.epochs * self.plan.steps_per_epoch, t.lr_rampdown)
        self.gan.set_learning_rates(t.g_optimizer.learning_rate * f, t.d_optimizer.learning_rate * f)

    def _adapt_augmentation(self, state: RunState, chunk_sums: dict[str, float], n: int) -> None:
        a = self.params.train.augment
        if not (a.adaptive and self.gan.augmenter is not None):
            return
        # ADA: r_t = E[sign(D(real))] = 2 * (share of reals D calls real) - 1, over this call.
        r_t = 2.0 * chunk_sums["d_acc_real"] / n - 1.0
        p = next_probability(state.augment_p, r_t, a.target, n * self.plan.batch_size, a.speed_kimg * 1000.0)
        state.augment_p = float(np.float32(p))
        self.gan.augment_p.assign(state.augment_p)

    # -- 5. the epoch's bookkeeping ---------------------------------------------------------
    def end_epoch(self, state: RunState, steps: int, seconds: float, progress: _Progress) -> None:
        """Close the epoch: log its row, say it, then write the snapshot and checkpoint it is due."""
        t = self.params.train
        images_per_sec = steps * t.batch_size / max(seconds, 1e-9)
        means = state.close_epoch(self.plan.steps_per_epoch)
        epoch = state.epoch
        row = {"global_step": state.step, **{k: round(float(v), 6) for k, v in means.items()},
               "images_per_sec": round(images_per_sec, 1), "augment_p": round(state.augment_p, 6)}
        self.log.epoch(epoch, {k: row[k] for k in LOG_COLUMNS if k != "epoch"})
        eta = progress.eta(state.step)
        _say(f"epoch {epoch}/{t.epochs}: d_loss {means['d_loss']:.4f}, g_loss {means['g_loss']:.4f}, "
             f"d_acc real {means['d_acc_real']:.2f} fake {means['d_acc_fake']:.2f}, {images_per_sec:.0f} img/s, "
             + (f"augment p {state.augment_p:.3f}, " if self.gan.augmenter is not None else "") +
             f"eta {eta // 60}m{eta % 60:02d}s")
        if epoch % self.params.sample.every_epochs == 0 or epoch == t.epochs:
            ema_model = self.gan.sync_ema_model()
            snapshots.save(self.paths.snapshots, epoch, ema_model)
            self.log.image(epoch, _live_grid(self.params, ema_model))
        if epoch % t.checkpoint_every == 0 or epoch == t.epochs:
            self.save_checkpoint(state)

    def save_checkpoint(self, state: RunState) -> Path:
        return checkpoint.save(self.paths.checkpoints, self.gan.state_variables(), state.meta(self.fingerprint),
                               self.params.train.keep_checkpoints)

    # -- 6. export --------------------------------------------------------------------------
    def export(self, state: RunState) -> dict:
        """Write the EMA generator; return the run's summary (the last epoch's logged values)."""
        self.log.close()
        save_model(self.gan.sync_ema_model(), self.paths.generator)
        last = train_log_summary(self.paths.log)
        return {"epoch": state.epoch, "step": state.step,
                **{k: float(v) for k, v in last.items() if k not in ("epoch", "step", "global_step")}}


# ---------------------------------------------------------------------------- helpers
def _live_grid(params: Params, generator: keras.Model) -> np.ndarray:
    """The train log's picture of a snapshot: the fixed latent batch of the sample stage
    (``common.seed``), ``LIVE_GRID`` images in a grid (conditional: one row per class),
    enlarged to about 112 pixels each."""
    count, columns, pixels = LIVE_GRID
    z, labels = grid_inputs(count, columns, num_classes(generator), params.model.latent_dim, params.common.seed)
    images = to_uint8(np.asarray(run_generator(generator, z, labels)), params.data.value_range)
    return make_grid(images, columns, scale=max(1, -(-pixels // params.data.image_size)))


class _Progress:
    """The progress bar on a terminal, and the ETA of the epoch lines (for logs piped to a file)."""

    def __init__(self, total_steps: int, done: int):
        self.total, self.first, self.started = total_steps, done, time.perf_counter()
        self.bar = tqdm(total=total_steps, initial=done, unit="step", desc="train", file=sys.stderr,
                        disable=not sys.stderr.isatty(), dynamic_ncols=True)

    def update(self, steps: int) -> None:
        self.bar.update(steps)

    def eta(self, step: int) -> int:
        """Seconds left at this process's pace so far."""
        per_step = (time.perf_counter() - self.started) / max(step - self.first, 1)
        return int(per_step * (self.total - step))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


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
