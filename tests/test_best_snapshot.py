"""The best snapshot is kept: evaluate exports the curve's best epoch, not the last one.

A run whose last snapshot is deliberately worse: the 'real' folder is drawn by a generator W
(random weights, output bias pushed to a strong colour), and the snapshots written with the
training's own writer (src/snapshots.py) are epoch 10: W with its weights perturbed, epoch
20: W itself, epoch 30 (the last, also exported as generator.keras): a fresh generator of
another seed. The evaluate stage's SWD curve must rank epoch 20 best, write its weights as
generator_best.keras, name it in metrics.json, and do it again byte for byte.
"""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from conftest import REPO, tiny_raw
from src import best_snapshot, snapshots
from src import evaluate as ev
from src import generate
from src.atomic import load_arrays
from src.config import parse_params
from src.errors import UserError
from src.keras_file import save_model
from src.networks import build_generator, load_generator, variables_to_arrays
from src.sampling import generate_images

RULERS = REPO / "data" / "rulers"

EVALUATE = {"num_samples": 100, "batch_size": 50, "kid_subsets": 4, "kid_subset_size": 40, "bootstrap": 10,
            "swd_patches_per_image": 8, "swd_projections": 32, "curve_samples": 100, "inception_weights": "off"}


def _params(folder):
    return parse_params(tiny_raw(data={"folder": str(folder), "image_size": 16, "channels": 3},
                                 evaluate=EVALUATE))


def _generator(params, seed: int, colour=None, perturb: float = 0.0):
    keras.utils.set_random_seed(seed)
    model = build_generator(params.model, params.data)
    if colour is not None:
        model.layers[-2].bias.assign(np.asarray(colour, np.float32))  # the last Conv2DTranspose
    if perturb:
        rng = np.random.default_rng(seed)
        model.set_weights([w + rng.normal(0, perturb * (np.std(w) + 1e-3), w.shape).astype(w.dtype)
                           for w in model.get_weights()])
    return model


@pytest.fixture()
def run(tmp_path, monkeypatch):
    """outputs/ of a run whose last snapshot is worse than an earlier one; returns (outputs, params, good)."""
    params = _params(tmp_path)
    good = _generator(params, 0, colour=[1.5, -1.5, 0.5])
    real = generate_images(good, 200, params.model.latent_dim, seed=123, batch_size=100)
    monkeypatch.setattr(ev, "_open_shards", lambda d: ({"range": [-1, 1]}, [real[:120], real[120:]], None))

    out = tmp_path / "outputs"
    snapshots.save(out / "snapshots", 10, _generator(params, 0, colour=[1.5, -1.5, 0.5], perturb=1.0))
    snapshots.save(out / "snapshots", 20, good)
    last = _generator(params, 5)
    snapshots.save(out / "snapshots", 30, last)
    save_model(last, out / "generator.keras")
    return out, params, good


def test_evaluate_exports_the_best_epoch_not_the_last(run, tmp_path, monkeypatch):
    out, params, good = run
    metrics = ev.evaluate(params, outputs_dir=out, log=lambda m: None, rulers=RULERS)

    curve = dict(best_snapshot.parse_curve((out / "eval_curve.tsv").read_text())[1])
    assert list(curve) == [10, 20, 30]
    assert curve[20] < curve[10] and curve[20] < curve[30]  # the deliberately worse last snapshot
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["curve_metric"] == "swd"
    assert saved["best_epoch"] == 20 and saved["best_curve_score"] == curve[20]
    assert saved["final_epoch"] == 30 and saved["final_curve_score"] == curve[30]
    assert metrics == saved

    # the exported file holds epoch 20's weights, exactly
    exported = variables_to_arrays(load_generator(params, out / "generator_best.keras"), "g")
    snapshot = load_arrays(out / "snapshots" / "generator_epoch_0020.npz")
    assert sorted(exported) == sorted(snapshot)
    for key in snapshot:
        np.testing.assert_array_equal(exported[key], snapshot[key], err_msg=key)

    # same inputs, same bytes (another process would build its layers under other automatic names)
    first = {name: (out / name).read_bytes() for name in ("generator_best.keras", "metrics.json", "eval_curve.tsv")}
    keras.backend.clear_session()
    build_generator(params.model, params.data)  # shift Keras's layer-name counters
    ev.evaluate(params, outputs_dir=out, log=lambda m: None, rulers=RULERS)
    assert {name: (out / name).read_bytes() for name in first} == first

    # generate --generator best draws with epoch 20's weights; 'final' with the last epoch's
    monkeypatch.chdir(tmp_path)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps(tiny_raw(data={"folder": str(tmp_path), "image_size": 16, "channels": 3})))
    for choice, model in (("best", good), ("final", None)):
        generate.run(["--params", str(params_file), "--generator", choice, "--n", "4", "--seed", "3",
                      "--out", f"{choice}.npy"])
        if model is not None:
            want = generate_images(model, 4, params.model.latent_dim, 3, 4)
            from src.sampling import to_uint8
            np.testing.assert_array_equal(np.load(f"{choice}.npy"), to_uint8(want, params.data.value_range))
    assert not np.array_equal(np.load("best.npy"), np.load("final.npy"))


def test_without_write_nothing_is_exported(run):
    out, params, _ = run
    metrics = ev.evaluate(params, outputs_dir=out, write=False, log=lambda m: None, rulers=RULERS)
    assert metrics["best_epoch"] == 20 and not (out / "generator_best.keras").exists()


def test_choice_ties_go_to_the_later_epoch_and_bad_curves_are_user_errors(tmp_path):
    assert best_snapshot.choose([(1, 3.0), (2, 2.0), (3, 2.0)]) == (3, 2.0)
    metric, rows = best_snapshot.parse_curve("epoch\tfid\n5\t9.5\n10\t7.25\n15\t8\n")
    assert best_snapshot.summary(metric, rows) == {"curve_metric": "fid", "best_epoch": 10, "best_curve_score": 7.25,
                                                   "final_epoch": 15, "final_curve_score": 8.0}
    with pytest.raises(UserError, match="eval_curve.tsv: line 3"):
        best_snapshot.parse_curve("epoch\tswd\n1\t2.0\n2\tnan\n")
    with pytest.raises(UserError, match="eval_curve.tsv: expected a header"):
        best_snapshot.parse_curve("")
    params = _params(tmp_path)
    with pytest.raises(UserError, match="no generator snapshots"):
        best_snapshot.keep_best(params, "epoch\tswd\n", tmp_path / "snapshots", tmp_path / "best.keras")
    with pytest.raises(UserError, match="snapshot of epoch 4 is gone"):
        best_snapshot.keep_best(params, "epoch\tswd\n4\t1.0\n", tmp_path / "snapshots", tmp_path / "best.keras")


def test_the_best_snapshot_is_scored_as_the_final_generator_would_be(run):
    """metrics.json's "best" holds what evaluate measures when the best snapshot is the final
    generator: the same numbers, key for key, with no real-data floor; when the last snapshot
    is the best, "best" is the final generator's own figures."""
    out, params, _ = run
    metrics = ev.evaluate(params, outputs_dir=out, log=lambda m: None, rulers=RULERS)
    best = {key[len("best_"):]: value for key, value in metrics.items()
            if key.startswith("best_") and key not in ("best_epoch", "best_curve_score")}
    assert {"swd", "swd_ci95", "fd_random", "fd_random_ci95", "kd_random"} <= set(best)
    assert not [key for key in best if "_real" in key]
    assert best["swd"] < metrics["swd"] and best["fd_random"] < metrics["fd_random"]  # epoch 20 against the worse last

    (out / "generator.keras").unlink()
    save_model(load_generator(params, out / "generator_best.keras"), out / "generator.keras")
    for epoch in (10, 30):  # the best epoch is now the last snapshot, as the final generator
        (out / "snapshots" / f"generator_epoch_{epoch:04d}.npz").unlink()
    as_final = ev.evaluate(params, outputs_dir=out, write=False, log=lambda m: None, rulers=RULERS)
    assert as_final["best_epoch"] == as_final["final_epoch"] == 20
    assert best == {key: as_final[key] for key in best}
    assert best == {key: as_final["best_" + key] for key in best}

    off = parse_params(tiny_raw(data={"folder": str(out), "image_size": 16, "channels": 3},
                                evaluate={**EVALUATE, "score_best": False}))
    assert "best_swd" not in ev.evaluate(off, outputs_dir=out, write=False, log=lambda m: None, rulers=RULERS)


def test_score_snapshots_scores_each_snapshot_as_the_final_generator(run):
    """benchmarks/score_snapshots.py: the last snapshot's row is the final generator's
    metrics.json figures, the best one's row its best_* figures; a missing epoch is one line."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("score_snapshots", REPO / "benchmarks" / "score_snapshots.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out, params, _ = run
    metrics = ev.evaluate(params, outputs_dir=out, write=False, log=lambda m: None, rulers=RULERS)
    rows = dict(script.table(params, last=2, outputs=out, rulers=RULERS))
    assert list(rows) == [20, 30]
    for name in ("swd", "fd_random"):
        assert ev._round(rows[30][name][0]) == metrics[name]
        assert ev._round(rows[20][name][0]) == metrics["best_" + name]
    # More draws: the first is metrics.json's (the generator's and the floor's), the others
    # other splits and latents.
    drawn = dict(script.table(params, epochs=[30], outputs=out, rulers=RULERS, draws=3))[30]
    for name in ("swd", "fd_random"):
        assert ev._round(drawn[name][0]) == metrics[name]
        assert ev._round(drawn[name + "_real"][0]) == metrics[name + "_real"]
        assert len(set(drawn[name])) == 3 and len(set(drawn[name + "_real"])) == 3
    assert script._cell(drawn["swd"]).count("±") == 1
    assert list(dict(script.table(params, epochs=[10], outputs=out, rulers=RULERS))) == [10]
    with pytest.raises(UserError, match="--draws must be at least 1"):
        script.table(params, epochs=[10], outputs=out, rulers=RULERS, draws=0)
    with pytest.raises(UserError, match="no snapshot of epoch 40 .there are: 10, 20, 30"):
        script.table(params, epochs=[40], outputs=out, rulers=RULERS)


def test_evaluate_draws_reports_the_mean_over_splits_and_latents(run):
    """evaluate.draws 3: every figure of metrics.json (the final generator's, its floor's and
    the best snapshot's) is the mean of the same figure on 3 draws (draw k: measured_data
    with draw=k), its interval from the 3 values; the curve and the best epoch stay draw 0's."""
    from src.metrics.intervals import t975
    from src.metrics.registry import run_metrics
    out, params, _ = run
    one = ev.evaluate(params, outputs_dir=out, write=False, log=lambda m: None, rulers=RULERS)
    three = parse_params(tiny_raw(data={"folder": str(out), "image_size": 16, "channels": 3},
                                  evaluate={**EVALUATE, "draws": 3}))
    metrics = ev.evaluate(three, outputs_dir=out, log=lambda m: None, rulers=RULERS)
    assert metrics["draws"] == 3 and "draws" not in one
    assert metrics["best_epoch"] == one["best_epoch"] == 20
    assert metrics["best_curve_score"] == one["best_curve_score"]

    datas = [ev.measured_data(three, out, log=lambda m: None, rulers=RULERS, draw=k)[0] for k in range(3)]
    final = [run_metrics(data) for data in datas]
    best = [ev.score_generator(three, data, out / "snapshots" / "generator_epoch_0020.npz", k)
            for k, data in enumerate(datas)]
    for name in ("swd", "fd_random", "swd_real", "fd_random_real"):
        values = [m[name] for m in final]
        assert len(set(values)) == 3
        assert metrics[name] == ev._round(np.mean(values)) != one[name]
        cis = [m[name + "_ci95"] for m in final]
        half = max(t975(2) * np.std(values, ddof=1) / np.sqrt(3), np.mean([c["hi"] - v for c, v in zip(cis, values)]) / np.sqrt(3))
        want = {"lo": max(np.mean(values) - half, min(c["lo"] for c in cis)),
                "hi": min(np.mean(values) + half, max(c["hi"] for c in cis))}
        assert metrics[name + "_ci95"] == ev._rounded({k: float(v) for k, v in want.items()})
    for name in ("swd", "fd_random"):
        assert metrics["best_" + name] == ev._round(np.mean([b[name] for b in best]))
    assert json.loads((out / "metrics.json").read_text()) == metrics
    before = (out / "metrics.json").read_bytes()
    ev.evaluate(three, outputs_dir=out, log=lambda m: None, rulers=RULERS)
    assert (out / "metrics.json").read_bytes() == before  # the same bytes again

    with pytest.raises(UserError, match="evaluate.draws"):
        parse_params(tiny_raw(evaluate={**EVALUATE, "draws": 0}))
