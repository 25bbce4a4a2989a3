"""Tests of compare_schedules.py: a tiny run of both schedules through the real loading code, its
outputs, that only the schedule differs between the two runs, resume after SIGKILL, which stored results
--resume may reuse, the x_T statistics on the CPU in float64, a NaN loss, bad input.

    pytest -q test_compare_schedules.py          # offline, about a minute on an idle 2-core CPU
"""
import json
import math
import os
import shutil

import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

import compare_schedules as cs
from conftest import assert_png, kill_when_written, one_line_error, run_script

TINY = ["--T", "20", "--channels", "8", "8", "8", "--device", "cpu"]
RUN = [*TINY, "--epochs", "2", "--n-samples", "8"]  # the smoke run, also the reference for resume
# in-process runs that need no reference: T = 4, one step of 128 digits, the grid only
QUICK = ["--T", "4", "--channels", "8", "8", "8", "--device", "cpu", "--limit", "128", "--epochs", "1",
         "--n-samples", "0"]
SAVE_RUN_KEYS = {"script", "config", "epoch", "model", "ema", "opt", "loss_history", "rng"}  # ddpm_time.py's ckpt.pt


def load(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread for this module's runs (its processes included): on a busy 2-core machine two threads
    spin against the other jobs and made a training step of these tiny models 4x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smoke(one_thread, tiny_mnist, tmp_path_factory):
    """One run of both schedules on the tiny IDX files, the script copied alone into an empty folder; several
    tests read its outputs."""
    out, alone = tmp_path_factory.mktemp("compare"), tmp_path_factory.mktemp("compare_alone")
    r = run_script("compare_schedules.py", "--data-dir", tiny_mnist, "--out-dir", out, *RUN, alone=alone)
    assert os.listdir(alone) == ["compare_schedules.py"]
    return out, r.stdout


def test_figures_open(smoke):
    out, _ = smoke
    for name in ("schedules.png", "forward.png", "samples.png"):
        assert_png(out / name)
        with Image.open(out / name) as im:
            assert min(im.size) > 100


def test_samples_per_schedule(smoke):
    out, _ = smoke
    for name in ("linear", "cosine"):
        s = load(out / name / "samples.pt")
        assert s["y"] is None and s["x"].shape == (8, 1, 28, 28) and s["x"].dtype == torch.float32
        assert s["x"].min() >= 0 and s["x"].max() <= 1 and s["x"].std() > 0.05
        assert s["config"]["schedule"] == name and s["epoch"] == 2  # the flags and epoch that made them
    assert not torch.equal(load(out / "linear" / "samples.pt")["x"], load(out / "cosine" / "samples.pt")["x"])


def test_results_table(smoke):
    out, stdout = smoke
    res = json.loads((out / "results.json").read_text())
    assert [r["schedule"] for r in res["rows"]] == ["linear", "cosine"]
    for r in res["rows"]:
        assert all(math.isfinite(v) for v in r.values() if not isinstance(v, str)), r
        ab_T = cs.make_schedule(20, r["schedule"], "cpu")["alpha_bar"][-1]
        assert r["sqrt_alpha_bar_T"] == pytest.approx(ab_T.sqrt().item(), rel=1e-6)
        assert r["final_loss"] > 0 and r["train_s"] > 0 and r["sample_s"] > 0 and 0 <= r["sample_ink"] <= 1
    lin, cos = res["rows"]
    assert lin["prior_kl"] > 100 and cos["prior_kl"] < 0.01  # at T = 20 linear keeps 0.90 of the digit
    # x_T's mean along the unit mean digit: 0 for pure noise (where sampling starts), far from it for linear at
    # T = 20, indistinguishable for cosine
    assert lin["xT_proj"] > 3 and abs(cos["xT_proj"]) < 0.05
    assert {line.split()[0] for line in stdout.splitlines() if line.startswith(("linear ", "cosine "))} \
        == {"linear", "cosine"}  # the printed table has both rows
    flags = res["config"]  # the flags that made the numbers
    assert (flags["T"], flags["epochs"], flags["sampler"], flags["n_samples"], flags["seed"]) == (20, 2, "ddpm", 8, 0)


def test_checkpoints_use_ddpm_time_format(smoke):
    out, _ = smoke
    for name in ("linear", "cosine"):
        ckpt = load(out / name / "ckpt.pt")
        assert set(ckpt) == SAVE_RUN_KEYS and ckpt["script"] == "compare_schedules" and ckpt["epoch"] == 2
        assert ckpt["config"]["schedule"] == name and ckpt["config"]["T"] == 20
        assert len(ckpt["loss_history"]) == 2 * 4  # 512 digits / 128 = 4 steps per epoch
        result = load(out / name / "result.pt")
        assert result["grid"].shape == (64, 1, 28, 28) and result["grid"].dtype == torch.uint8
        assert result["flags"]["epoch"] == 2 and result["flags"]["sampler"] == "ddpm" and result["train_s"] > 0
        for f in ("ckpt.pt", "result.pt", "samples.pt"):
            assert not os.path.exists(out / name / (f + ".tmp"))
    assert not os.path.exists(out / "results.json.tmp")


def test_start_gap_formulas():
    """L_T in closed form against torch.distributions, summed over the 784 pixels, to float64 precision; x_T's mean
    along the unit mean digit against the mean of 20,000 x_T drawn by q_sample (noise part: 0 +- 1 / sqrt(20,000))."""
    sched = cs.make_schedule(300, "linear", "cpu")
    x0 = torch.rand(4, 1, 28, 28)
    gap = cs.start_gap(x0, sched["alpha_bar"][-1])
    ab = sched["alpha_bar"][-1].double()
    q = torch.distributions.Normal(ab.sqrt() * x0.double(), (1 - ab).sqrt())
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    assert gap["prior_kl"] == pytest.approx(kl.mean().item(), rel=1e-10)  # float32: off by ~1e-7
    x = x0.repeat(5000, 1, 1, 1)
    x_T = cs.q_sample(x, torch.full((len(x),), 300), torch.randn(x.shape, generator=torch.Generator().manual_seed(0)),
                      sched)
    u = x0.mean(0).flatten() / x0.mean(0).norm()
    assert gap["xT_proj"] == pytest.approx((x_T.flatten(1) @ u).mean().item(), abs=0.03)  # 4 sigma


def tensors(x):
    """Every tensor in x, a tensor or a (nested) tuple, list or dict."""
    if torch.is_tensor(x):
        return [x]
    items = x.values() if isinstance(x, dict) else x if isinstance(x, (tuple, list)) else []
    return [t for item in items for t in tensors(item)]


class Float64Ops(TorchDispatchMode):
    """Records (where, device) of every op that makes a float64 tensor; `where` is set by the spies below."""

    def __init__(self):
        super().__init__()
        self.where = "elsewhere"
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                self.seen.add((self.where, t.device.type))
        return out


def test_statistics_run_on_the_cpu_in_float64(tiny_mnist, tmp_path, monkeypatch):
    """mps has no float64: it may appear only in make_schedule (on the CPU, by design) and in the x_T
    statistics and plots, which must get CPU tensors. Training and sampling make no float64 at all."""
    mode = Float64Ops()

    def spy(name, fn):
        def wrapped(*a, **kw):
            if name != "make_schedule":  # the statistics and their plots get CPU tensors only
                assert all(t.device.type == "cpu" for t in tensors(a)), name
            before = mode.where
            mode.where = name
            try:
                return fn(*a, **kw)
            finally:
                mode.where = before
        return wrapped
    for name in ("make_schedule", "start_gap", "plot_schedules", "plot_forward"):
        monkeypatch.setattr(cs, name, spy(name, getattr(cs, name)))
    with mode:
        cs.main(["--data-dir", tiny_mnist, "--out-dir", str(tmp_path), *QUICK, "--schedules", "linear"])
    assert ("start_gap", "cpu") in mode.seen  # L_T is computed in float64
    assert mode.seen <= {(w, "cpu") for w in ("make_schedule", "start_gap", "plot_schedules")}, mode.seen


def test_only_the_schedule_differs(tiny_mnist, tmp_path, monkeypatch):
    """With make_schedule forced to give linear for every name, the two runs must end bit-identical:
    same initial weights, batch order, t and eps draws, sampler noise. Run in-process to patch it."""
    real = cs.make_schedule
    monkeypatch.setattr(cs, "make_schedule", lambda T, kind, device: real(T, "linear", device))
    cs.main(["--data-dir", tiny_mnist, "--out-dir", str(tmp_path), *QUICK, "--limit", "256"])  # 2 batches: their order
    a, b = (load(tmp_path / name / "ckpt.pt") for name in ("linear", "cosine"))
    assert torch.equal(a["loss_history"], b["loss_history"])
    assert torch.equal(load(tmp_path / "linear" / "result.pt")["grid"], load(tmp_path / "cosine" / "result.pt")["grid"])
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    assert not os.path.exists(tmp_path / "linear" / "samples.pt")  # --n-samples 0: grids only


def test_one_schedule(tiny_mnist, tmp_path, capsys):
    cs.main(["--data-dir", tiny_mnist, "--out-dir", str(tmp_path), *QUICK, "--n-samples", "4", "--schedules", "linear"])
    res = json.loads((tmp_path / "results.json").read_text())
    assert [row["schedule"] for row in res["rows"]] == ["linear"] and not os.path.exists(tmp_path / "cosine")
    assert os.path.isfile(tmp_path / "samples.png") and "linear: 64 digits sampled" in capsys.readouterr().out


@pytest.mark.slow
def test_killed_run_resumes_without_retraining(smoke, tiny_mnist, tmp_path):
    """SIGKILL while the second schedule trains; --resume must keep the first as it is and end with the
    second bit-identical to the uninterrupted smoke run."""
    out = tmp_path / "killed"
    kill_when_written("compare_schedules.py", ["--data-dir", tiny_mnist, "--out-dir", out, *RUN],
                      out / "cosine" / "ckpt.pt")
    assert load(out / "cosine" / "ckpt.pt")["epoch"] == 1 and not (out / "results.json").exists()
    linear_before = [(out / "linear" / f).read_bytes() for f in ("ckpt.pt", "result.pt")]
    samples_mtime = os.path.getmtime(out / "linear" / "samples.pt")

    r = run_script("compare_schedules.py", "--data-dir", tiny_mnist, "--out-dir", out, *RUN, "--resume")
    assert "linear: finished earlier, not retrained" in r.stdout
    assert f"loaded {out / 'cosine'}/ckpt.pt: 1 epochs done" in r.stdout
    assert "epoch 1/2" not in r.stderr  # no progress bar of a first epoch: linear trained nothing, cosine epoch 2 only
    assert [(out / "linear" / f).read_bytes() for f in ("ckpt.pt", "result.pt")] == linear_before
    assert os.path.getmtime(out / "linear" / "samples.pt") == samples_mtime
    ref, got = (load(d / "cosine" / "ckpt.pt") for d in (smoke[0], out))
    assert got["epoch"] == 2 and torch.equal(ref["loss_history"], got["loss_history"])
    for k in ref["ema"]:
        assert torch.equal(ref["ema"][k], got["ema"][k]), f"ema.{k} differs after resume"
    assert torch.equal(load(smoke[0] / "cosine" / "samples.pt")["x"], load(out / "cosine" / "samples.pt")["x"])


def test_resume_samples_again_when_a_sampling_flag_changed(smoke, tiny_mnist, tmp_path, capsys):
    """The stored samples are reused only if every flag behind them is the same; the training flags not
    given (here --epochs) come from the checkpoints, and nothing is retrained."""
    out = tmp_path / "copy"
    shutil.copytree(smoke[0], out)
    ckpts = {name: (out / name / "ckpt.pt").read_bytes() for name in ("linear", "cosine")}
    argv = ["--data-dir", tiny_mnist, "--out-dir", str(out), *TINY, "--resume", "--sampler", "ddim", "--steps", "2"]

    cs.main([*argv, "--n-samples", "8"])  # another sampler: both schedules sampled again
    stdout, stderr = capsys.readouterr()
    assert "finished earlier" not in stdout and "epoch 1/2" not in stderr and "epoch 2/2" not in stderr
    ddim = {}
    for name in ("linear", "cosine"):
        assert (out / name / "ckpt.pt").read_bytes() == ckpts[name]
        ddim[name] = load(out / name / "samples.pt")
        assert ddim[name]["config"]["sampler"] == "ddim" and ddim[name]["config"]["steps"] == 2
        assert not torch.equal(ddim[name]["x"], load(smoke[0] / name / "samples.pt")["x"])
        assert load(out / name / "result.pt")["flags"]["sampler"] == "ddim"
    res = json.loads((out / "results.json").read_text())
    assert (res["config"]["sampler"], res["config"]["steps"], res["config"]["epochs"]) == ("ddim", 2, 2)

    cs.main([*argv, "--n-samples", "4"])  # fewer samples: sampled again, the same first 4 (the same x_T)
    assert "finished earlier" not in capsys.readouterr().out
    for name in ("linear", "cosine"):
        assert torch.equal(load(out / name / "samples.pt")["x"], ddim[name]["x"][:4])
    assert json.loads((out / "results.json").read_text())["config"]["n_samples"] == 4

    mtime = os.path.getmtime(out / "linear" / "samples.pt")
    cs.main([*argv, "--n-samples", "4"])  # the same flags: reused, nothing sampled
    stdout = capsys.readouterr().out
    assert "linear: finished earlier" in stdout and "cosine: finished earlier" in stdout
    assert "sampled" not in stdout and os.path.getmtime(out / "linear" / "samples.pt") == mtime


def test_resume_with_another_training_flag_is_one_line_error(smoke, tiny_mnist):
    r = run_script("compare_schedules.py", "--data-dir", tiny_mnist, "--out-dir", smoke[0], *RUN, "--resume",
                   "--lr", "0.002", check=False)
    msg = one_line_error(r)
    assert len(r.stderr.strip().splitlines()) == 1 and "--lr 0.001" in msg and "--lr 0.002" in msg


def test_schedules_trained_with_other_flags_are_an_error(smoke, tmp_path, capsys):
    """A checkpoint whose training flags differ from the other schedule's: only the schedule may differ."""
    out = tmp_path / "copy"
    shutil.copytree(smoke[0], out)
    ckpt = load(out / "cosine" / "ckpt.pt")
    ckpt["config"]["ema_decay"] = 0.99
    torch.save(ckpt, out / "cosine" / "ckpt.pt")
    msg = exit_line(["--out-dir", str(out), *RUN, "--resume"], capsys)
    assert "cosine" in msg and "--ema-decay 0.99" in msg and "only the schedule may differ" in msg


def test_nan_loss_stops_training(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cs, "ddpm_loss", lambda model, x0, sched: model(x0, torch.ones(len(x0), dtype=torch.long))
                        .mean() * float("nan"))
    msg = exit_line(["--data-dir", tiny_mnist, "--out-dir", str(tmp_path), *QUICK, "--schedules", "linear"], capsys)
    assert "the loss is nan at epoch 1" in msg and not os.path.exists(tmp_path / "linear" / "ckpt.pt")


# --- bad input ---------------------------------------------------------------------------------
def exit_line(argv, capsys):
    """Run main in-process on bad input: it must exit with code 2 and say why in one line on stderr."""
    with pytest.raises(SystemExit) as e:
        cs.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "error:" in err[-1], err
    return err[-1]


@pytest.mark.parametrize("args", [["--schedules", "quadratic"], ["--schedules", "linear", "linear"],
                                  ["--epochs", "0"], ["--T", "1"], ["--channels", "12", "8", "8"],
                                  ["--lr", "nan"], ["--steps", "0"], ["--ema-decay", "1"], ["--n-samples", "-1"]])
def test_bad_flags(args, capsys):
    exit_line(args, capsys)  # argparse: a usage line, then the error line


def test_no_data_is_a_clear_error(tmp_path, capsys):
    msg = exit_line(["--data-dir", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "out"), *TINY], capsys)
    assert "four idx files" in msg.lower()


def test_existing_run_is_not_overwritten(smoke, capsys):
    out, _ = smoke
    before = sorted(os.listdir(out))
    assert "--resume" in exit_line(["--out-dir", str(out), *RUN], capsys)
    assert sorted(os.listdir(out)) == before


def test_no_traceback_from_a_process(tmp_path):
    """The same error as a user sees it: a fresh process, exit code 2, no traceback."""
    r = run_script("compare_schedules.py", "--data-dir", tmp_path / "empty", "--out-dir", tmp_path / "out",
                   *TINY, check=False, process=True)
    one_line_error(r)
    assert len(r.stderr.strip().splitlines()) == 1
