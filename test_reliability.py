"""Nothing silently wrong, nothing lost: each failure case of the README's table, tried as a user would.
Every row of the table in RESULTS.md ("What goes wrong, and what you see") is one test here.

    pytest -q test_reliability.py
"""
import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import ddpm_class
import ddpm_time
from conftest import HERE, one_line_error, run_script
from tools.sync_shared import scripts

TINY = ["--T", "10", "--channels", "8", "8", "8", "--device", "cpu"]
SCRIPTS = ["ddpm_time.py", "ddpm_class.py"]


@pytest.fixture(scope="module")
def finished(tiny_mnist, tmp_path_factory):
    """A finished 2-epoch run of ddpm_class.py with non-default training flags, copied per test."""
    out = tmp_path_factory.mktemp("finished")
    run_script("ddpm_class.py", "--data-dir", tiny_mnist, "--out-dir", out, "--epochs", "2", "--lr", "2e-3",
               "--batch-size", "64", "--p-uncond", "0.2", "--steps", "3", *TINY)  # DDIM 3: its grids, quickly
    return out


def copy_run(finished, tmp_path):
    return str(shutil.copytree(finished, tmp_path / "run"))


def main_error(module, argv, capsys):
    """Run a script's main() in this process (fast: no new interpreter); it must stop with exit code 2
    and one line. Returns that line. (test_smoke.py and the per-script tests do the same in real processes.)"""
    with pytest.raises(SystemExit) as e:
        module.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


# --- a changed flag on resume --------------------------------------------------------------------
@pytest.mark.parametrize("flag,value,stored", [
    ("--lr", "0.001", "0.002"), ("--batch-size", "128", "64"), ("--p-uncond", "0.1", "0.2"), ("--seed", "1", "0"),
    ("--ema-decay", "0.99", "0.999"), ("--limit", "100", "0"), ("--schedule", "cosine", "linear"),
    ("--T", "30", "10"), ("--channels", "16 16 16", "[8, 8, 8]")])
def test_changed_training_flag_on_resume_is_an_error(finished, tmp_path, flag, value, stored, capsys):
    run = copy_run(finished, tmp_path)
    before = os.path.getmtime(os.path.join(run, "ckpt.pt"))
    msg = main_error(ddpm_class, ["--out-dir", run, "--resume", "--epochs", "3", flag, *value.split(),
                                  "--device", "cpu"], capsys)
    assert flag in msg and stored in msg and value.split()[0] in msg, msg
    assert os.path.getmtime(os.path.join(run, "ckpt.pt")) == before, "the checkpoint must not be touched"


@pytest.mark.slow
def test_resume_without_flags_continues_the_stored_run(finished, tiny_mnist, tmp_path):
    """Flags not given take the checkpoint's values: --resume --epochs 3 trains epoch 3 with lr 2e-3,
    batch 64 and p-uncond 0.2, exactly as a 3-epoch run would."""
    run = copy_run(finished, tmp_path)
    run_script("ddpm_class.py", "--out-dir", run, "--data-dir", tiny_mnist, "--resume", "--epochs", "3",
               "--device", "cpu")
    full = tmp_path / "full"
    run_script("ddpm_class.py", "--data-dir", tiny_mnist, "--out-dir", full, "--epochs", "3", "--lr", "2e-3",
               "--batch-size", "64", "--p-uncond", "0.2", "--steps", "3", *TINY)
    a, b = (torch.load(os.path.join(d, "ckpt.pt"), weights_only=True) for d in (run, full))
    assert a["epoch"] == b["epoch"] == 3 and a["config"]["lr"] == 2e-3
    assert torch.equal(a["loss_history"], b["loss_history"])
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


def test_sample_only_may_change_sampling_flags_only(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    r = run_script("ddpm_class.py", "--out-dir", run, "--sample-only", "--sampler", "ddim", "--steps", "4",
                   "--guidance", "2", "--digits", "1", "--n-samples", "3", "--device", "cpu")
    s = torch.load(os.path.join(run, "samples.pt"), weights_only=True)
    # samples.pt records the flags that produced it: sampling flags as given, training flags from the checkpoint
    assert s["config"]["steps"] == 4 and s["config"]["guidance"] == 2 and s["config"]["lr"] == 2e-3
    assert s["epoch"] == 2 and s["y"].tolist() == [1, 1, 1] and "DDIM 4 steps" in r.stdout
    assert "--lr" in main_error(ddpm_class, ["--out-dir", run, "--sample-only", "--lr", "1e-3", "--device", "cpu"],
                                capsys)


@pytest.mark.parametrize("mode", ["--resume", "--sample-only"])
def test_resume_without_a_checkpoint_is_one_line(mode, tmp_path, capsys):
    assert "no checkpoint at" in main_error(ddpm_class, ["--out-dir", tmp_path / "empty", mode, *TINY], capsys)


def test_ckpt_samples_another_runs_weights_into_a_fresh_folder(finished, tmp_path, capsys):
    """--ckpt FILE samples from FILE's weights with FILE's training flags, into --out-dir, and leaves FILE's
    run alone; a missing file, a foreign script's file and --resume with it are one-line errors."""
    ckpt = os.path.join(finished, "ckpt.pt")
    before = os.path.getmtime(ckpt)
    out = tmp_path / "fresh"
    ddpm_class.main(["--ckpt", ckpt, "--out-dir", str(out), "--sampler", "ddim", "--steps", "3", "--digits", "4",
                     "--n-samples", "2", "--device", "cpu"])
    s = torch.load(out / "samples.pt", weights_only=True)
    assert s["config"]["lr"] == 2e-3 and s["config"]["channels"] == [8, 8, 8] and s["y"].tolist() == [4, 4]
    assert not (out / "ckpt.pt").exists() and os.path.getmtime(ckpt) == before
    # --seed with --ckpt: other noise from the same weights (the run was trained with --seed 0)
    ddpm_class.main(["--ckpt", ckpt, "--out-dir", str(tmp_path / "seed1"), "--seed", "1", "--sampler", "ddim",
                     "--steps", "3", "--digits", "4", "--n-samples", "2", "--device", "cpu"])
    s1 = torch.load(tmp_path / "seed1" / "samples.pt", weights_only=True)
    assert s1["config"]["seed"] == 1 and s1["config"]["lr"] == 2e-3 and not torch.equal(s1["x"], s["x"])
    assert "no checkpoint at" in main_error(ddpm_class, ["--ckpt", tmp_path / "typo.pt", "--out-dir", out], capsys)
    assert "not ddpm_time.py" in main_error(ddpm_time, ["--ckpt", ckpt, "--out-dir", out], capsys)
    assert "--ckpt is for sampling" in main_error(ddpm_class, ["--ckpt", ckpt, "--resume", "--out-dir", out], capsys)
    shipped = {k: v for k, v in torch.load(ckpt, weights_only=True).items() if k not in ("model", "opt", "rng")}
    torch.save(shipped, out / "ckpt.pt")  # a pretrained/ file put where a run's checkpoint goes
    assert "not --resume" in main_error(ddpm_class, ["--out-dir", out, "--resume", "--device", "cpu"], capsys)


def test_ddpm_sampler_takes_no_steps(tmp_path, capsys):
    msg = main_error(ddpm_time, ["--out-dir", tmp_path, "--sampler", "ddpm", "--steps", "50"], capsys)
    assert "--steps is for --sampler ddim" in msg


# --- bad flags, devices, folders ---------------------------------------------------------------
@pytest.mark.parametrize("module", [ddpm_time, ddpm_class], ids=SCRIPTS)
@pytest.mark.parametrize("args", [["--lr", "nan"], ["--lr", "inf"], ["--lr", "0"], ["--ema-decay", "1"],
                                  ["--epochs", "-1"], ["--batch-size", "0"], ["--T", "1"], ["--seed", "-3"],
                                  ["--steps", "0", "--sampler", "ddim"], ["--channels", "12", "8", "8"],
                                  ["--lr", "abc"], ["--n-samples", "2.5"]])
def test_bad_numbers_are_parser_errors(module, args, tmp_path, capsys):
    assert args[0] in main_error(module, ["--out-dir", tmp_path / "out", *args], capsys)
    assert not os.path.exists(tmp_path / "out"), "nothing is written on a parser error"


def test_a_bad_number_in_a_real_process(tmp_path):
    r = run_script("ddpm_class.py", "--out-dir", tmp_path, "--lr", "nan", check=False, process=True)
    assert "--lr" in one_line_error(r)


@pytest.mark.parametrize("args", [["--guidance", "inf"], ["--guidance", "nan"], ["--p-uncond", "1"],
                                  ["--p-uncond", "-0.1"], ["--digits", "12"]])
def test_bad_class_flags_are_parser_errors(args, tmp_path, capsys):
    assert args[0] in main_error(ddpm_class, ["--out-dir", tmp_path, *args], capsys)


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "mps", "tpu", "nonsense"])
def test_a_device_this_machine_lacks_is_one_line(device, tmp_path, capsys):
    if torch.cuda.device_count() > (3 if device == "cuda:3" else 0) and device.startswith("cuda"):
        pytest.skip("this machine has that GPU")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has mps")
    assert device in main_error(ddpm_time, ["--out-dir", tmp_path, "--device", device], capsys)


def test_out_dir_that_cannot_be_created(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    msg = main_error(ddpm_time, ["--out-dir", tmp_path / "a_file" / "run", *TINY], capsys)
    assert "cannot write to --out-dir" in msg


# --- files: atomic writes, a full disk, a kill -------------------------------------------------
def test_full_disk_keeps_the_previous_file(tmp_path, capsys):
    """A write that fails halfway (ENOSPC after some bytes) leaves the old file whole, no temp file
    behind, and one line for the user."""
    path = str(tmp_path / "ckpt.pt")
    ddpm_time.save_atomic({"epoch": 1, "w": torch.ones(1000)}, path)

    def save_then_fail(obj, f):  # torch.save, cut short by a full disk
        torch.save({"half": torch.zeros(10)}, f)
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(SystemExit) as e:
        ddpm_time.save_atomic({"epoch": 2, "w": torch.zeros(1000)}, path, save_then_fail)
    assert e.value.code == 2 and "No space left" in capsys.readouterr().err
    assert torch.load(path, weights_only=True)["epoch"] == 1 and not os.path.exists(path + ".tmp")


def test_a_figure_that_cannot_be_written_is_one_line(tiny_mnist, tmp_path, monkeypatch, capsys):
    """A full disk can hit a PNG first (figures are not read back, so they are written in place): the run
    stops with one line, not a traceback."""
    import matplotlib.figure

    def savefig_on_a_full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "samples_epoch001.png")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig_on_a_full_disk)
    with pytest.raises(SystemExit) as e:
        ddpm_time.main(["--data-dir", tiny_mnist, "--out-dir", str(tmp_path), "--epochs", "1", *TINY])
    msg = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "No space left on device (samples_epoch001.png)" in msg


def test_sigkill_during_a_write_keeps_the_previous_file(tmp_path):
    """A process killed while it writes a large file (here 400 MB) leaves the previous file whole."""
    path = tmp_path / "samples.pt"
    ddpm_time.save_atomic({"x": torch.ones(3)}, str(path))
    code = (f"import sys, torch; sys.path.insert(0, {HERE!r}); import ddpm_time; "
            f"ddpm_time.save_atomic({{'x': torch.zeros(100_000_000)}}, {str(path)!r})")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 60
    while not os.path.exists(str(path) + ".tmp") and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the writer finished before it could be killed"
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))


@pytest.mark.slow
def test_ctrl_c_during_training_is_one_line_and_keeps_the_checkpoint(tiny_mnist, tmp_path):
    args = ["--data-dir", tiny_mnist, "--out-dir", tmp_path, "--epochs", "500", *TINY]
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "ddpm_time.py"), *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not os.path.exists(tmp_path / "ckpt.pt") and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    try:
        err = proc.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("still training 60 s after Ctrl-C; its stderr ends:\n" + proc.communicate()[1][-2000:])
    assert proc.returncode == 130 and "Traceback" not in err
    assert "interrupted" in err.strip().splitlines()[-1] and "--resume" in err
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["epoch"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("script", [f[:-3] for f in scripts(HERE)])
def test_ctrl_c_that_cuts_an_object_off_mid_construction_is_still_one_line(script):
    """Ctrl-C can land inside a constructor (tqdm's, as an epoch starts): the half-built object then fails in its
    __del__ on the way out, and Python would print that traceback after the one-line error."""
    code = f"""if True:
        import os, signal, sys
        sys.path.insert(0, {HERE!r})
        import {script}
        class HalfBuilt:  # a tqdm bar that Ctrl-C stopped before it set self.pos
            def __init__(self):
                os.kill(os.getpid(), signal.SIGINT)
                self.pos = 0
            def __del__(self):
                abs(self.pos)
        {script}.command(lambda argv: HalfBuilt())()"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "interrupted" in proc.stderr, proc.stderr[-2000:]


def test_ctrl_c_that_python_drops_in_a_finalizer_still_stops_training(tiny_mnist, tmp_path, monkeypatch):
    """Python drops an exception raised while a finalizer (__del__, a weakref callback) runs, and prints
    "Exception ignored in". A Ctrl-C that lands there would be lost and training would go on for all its
    epochs; the handler remembers it, and the loop stops after the step it was pressed in."""
    real_loss, calls = ddpm_class.ddpm_loss_cfg, []

    class PressesCtrlCWhenFreed:
        def __del__(self):
            ddpm_class.on_ctrl_c(signal.SIGINT, None)  # what the signal does if it arrives right now

    def loss_with_a_dropped_ctrl_c(model, x0, y, sched, p_uncond):
        calls.append(len(x0))
        if len(x0) == 128 and calls.count(128) == 2:  # training step 2 of epoch 1
            PressesCtrlCWhenFreed()  # freed at once: its KeyboardInterrupt is raised inside __del__, dropped
        return real_loss(model, x0, y, sched, p_uncond)
    monkeypatch.setattr(ddpm_class, "ddpm_loss_cfg", loss_with_a_dropped_ctrl_c)
    monkeypatch.setattr(ddpm_class, "ctrl_c_pressed", False)  # restored after the test
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # on_ctrl_c quiets it
    with pytest.raises(SystemExit) as e:
        ddpm_class.main(["--data-dir", tiny_mnist, "--out-dir", str(tmp_path), "--epochs", "3", *TINY])
    assert e.value.code == 130 and calls.count(128) == 2, "training went on after the Ctrl-C"


# --- a diverged run ----------------------------------------------------------------------------
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_mnist, tmp_path, monkeypatch, capsys):
    """The loss turns NaN in epoch 2: training stops there with one line naming the epoch and the step,
    and ckpt.pt still holds epoch 1 with finite weights."""
    real_loss, calls = ddpm_class.ddpm_loss_cfg, []

    def loss_that_diverges(model, x0, y, sched, p_uncond):
        calls.append(len(x0))
        loss = real_loss(model, x0, y, sched, p_uncond)
        steps = calls.count(128)  # training batches
        return loss * float("nan") if len(x0) == 128 and steps == 6 else loss  # 4 steps per epoch: epoch 2, step 2
    monkeypatch.setattr(ddpm_class, "ddpm_loss_cfg", loss_that_diverges)
    with pytest.raises(SystemExit) as e:
        ddpm_class.main(["--data-dir", tiny_mnist, "--out-dir", str(tmp_path), "--epochs", "3", *TINY])
    msg = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "nan" in msg and "epoch 2, step 2" in msg and "holds epoch 1" in msg
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
