"""Tests of compare_schedules.py: a tiny run of both schedules through the real loading code, its
outputs, that only the schedule differs between the two runs, resume after SIGKILL, bad input.

    pytest -q test_compare_schedules.py          # offline, about a minute on a 2-core CPU
"""
import json
import math
import os

import pytest
import torch
from PIL import Image

import compare_schedules as cs
from conftest import kill_when_written, run_script

TINY = ["--T", "20", "--channels", "8", "8", "8", "--device", "cpu"]
RUN = [*TINY, "--epochs", "2", "--n-samples", "8"]  # the smoke run, also the reference for resume


def load(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def smoke(tiny_mnist, tmp_path_factory):
    """One run of both schedules on the tiny IDX files; several tests read its outputs."""
    out = tmp_path_factory.mktemp("compare")
    r = run_script("compare_schedules.py", "--data-dir", tiny_mnist, "--out-dir", out, *RUN)
    return out, r.stdout


def test_figures_open(smoke):
    out, _ = smoke
    for name in ("schedules.png", "forward.png", "loss.png", "samples.png"):
        with Image.open(out / name) as im:
            im.verify()  # raises on a truncated or non-PNG file
        with Image.open(out / name) as im:
            assert im.format == "PNG" and min(im.size) > 100


def test_samples_per_schedule(smoke):
    out, _ = smoke
    for name in ("linear", "cosine"):
        s = load(out / name / "samples.pt")
        assert s["y"] is None and s["x"].shape == (8, 1, 28, 28) and s["x"].dtype == torch.float32
        assert s["x"].min() >= 0 and s["x"].max() <= 1 and s["x"].std() > 0.05
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
    # x_T along the unit mean digit: N(0, 1) for pure noise (512 images: mean 0 +- 0.044), far from it
    # for linear at T = 20, indistinguishable for cosine
    assert lin["xT_proj"] > 3 and abs(cos["xT_proj"]) < 0.2 and abs(res["noise_xT_proj"]) < 0.2
    assert {line.split()[0] for line in stdout.splitlines() if line.startswith(("linear ", "cosine "))} \
        == {"linear", "cosine"}  # the printed table has both rows


def test_checkpoints_use_ddpm_time_format(smoke):
    out, _ = smoke
    for name in ("linear", "cosine"):
        ckpt = load(out / name / "ckpt.pt")
        assert ckpt["script"] == "compare_schedules" and ckpt["epoch"] == 2
        assert ckpt["config"]["schedule"] == name and ckpt["config"]["T"] == 20
        assert len(ckpt["loss_history"]) == 2 * 4  # 512 digits / 128 = 4 steps per epoch
        assert ckpt["result"]["grid"].shape == (64, 1, 28, 28) and ckpt["result"]["grid"].dtype == torch.uint8
        assert not os.path.exists(out / name / "ckpt.pt.tmp")


def test_kl_formula():
    """L_T in closed form against torch.distributions, summed over the 784 pixels."""
    sched = cs.make_schedule(300, "linear", "cpu")
    x0 = torch.rand(3, 1, 28, 28) * 2 - 1
    gap, _ = cs.start_gap(x0, {"linear": sched}, seed=0)
    ab = sched["alpha_bar"][-1].double()
    q = torch.distributions.Normal(ab.sqrt() * x0.double(), (1 - ab).sqrt())
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    assert gap["linear"]["prior_kl"] == pytest.approx(kl.mean().item(), rel=1e-6)


def test_only_the_schedule_differs(tiny_mnist, tmp_path, monkeypatch):
    """With make_schedule forced to give linear for every name, the two runs must end bit-identical:
    same initial weights, batch order, t and eps draws, sampler noise. Run in-process to patch it."""
    real = cs.make_schedule
    monkeypatch.setattr(cs, "make_schedule", lambda T, kind, device: real(T, "linear", device))
    cs.main(["--data-dir", tiny_mnist, "--out-dir", str(tmp_path), *TINY, "--epochs", "1", "--n-samples", "0"])
    a, b = (load(tmp_path / name / "ckpt.pt") for name in ("linear", "cosine"))
    assert torch.equal(a["loss_history"], b["loss_history"]) and torch.equal(a["result"]["grid"], b["result"]["grid"])
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    assert not os.path.exists(tmp_path / "linear" / "samples.pt")  # --n-samples 0: grids only


def test_one_schedule(tiny_mnist, tmp_path, capsys):
    cs.main(["--data-dir", tiny_mnist, "--out-dir", str(tmp_path), *TINY, "--epochs", "1", "--n-samples", "4",
             "--schedules", "linear"])
    res = json.loads((tmp_path / "results.json").read_text())
    assert [row["schedule"] for row in res["rows"]] == ["linear"] and not os.path.exists(tmp_path / "cosine")
    assert os.path.isfile(tmp_path / "samples.png") and "linear: 64 digits sampled" in capsys.readouterr().out


def test_killed_run_resumes_without_retraining(smoke, tiny_mnist, tmp_path):
    """SIGKILL while the second schedule trains; --resume must keep the first as it is and end with the
    second bit-identical to the uninterrupted smoke run."""
    out = tmp_path / "killed"
    kill_when_written("compare_schedules.py", ["--data-dir", tiny_mnist, "--out-dir", out, *RUN], out / "cosine" / "ckpt.pt")
    assert load(out / "cosine" / "ckpt.pt")["epoch"] == 1 and not (out / "results.json").exists()
    linear_before = (out / "linear" / "ckpt.pt").read_bytes()
    samples_mtime = os.path.getmtime(out / "linear" / "samples.pt")

    r = run_script("compare_schedules.py", "--data-dir", tiny_mnist, "--out-dir", out, *RUN, "--resume")
    assert "linear: finished earlier, not retrained" in r.stdout and "cosine: resumed" in r.stdout
    assert "linear epoch" not in r.stderr  # no progress bar: not one linear step was trained
    assert (out / "linear" / "ckpt.pt").read_bytes() == linear_before
    assert os.path.getmtime(out / "linear" / "samples.pt") == samples_mtime
    ref, got = (load(d / "cosine" / "ckpt.pt") for d in (smoke[0], out))
    assert got["epoch"] == 2 and torch.equal(ref["loss_history"], got["loss_history"])
    for k in ref["ema"]:
        assert torch.equal(ref["ema"][k], got["ema"][k]), f"ema.{k} differs after resume"
    assert torch.equal(load(smoke[0] / "cosine" / "samples.pt")["x"], load(out / "cosine" / "samples.pt")["x"])


# --- bad input ---------------------------------------------------------------------------------
def exit_line(argv, capsys):
    """Run main in-process on bad input: it must exit with code 2 and say why in one line on stderr."""
    with pytest.raises(SystemExit) as e:
        cs.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "error:" in err[-1], err
    return err[-1]


@pytest.mark.parametrize("args", [["--schedules", "quadratic"], ["--schedules", "linear", "linear"],
                                  ["--epochs", "0"], ["--T", "1"], ["--channels", "12", "8", "8"]])
def test_bad_flags(args, capsys):
    exit_line(args, capsys)  # argparse: a usage line, then the error line


def test_no_data_is_a_clear_error(tmp_path, capsys):
    msg = exit_line(["--data-dir", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "out"), *TINY], capsys)
    assert "put the four idx files" in msg.lower()


def test_existing_run_is_not_overwritten(smoke, capsys):
    out, _ = smoke
    before = sorted(os.listdir(out))
    assert "--resume" in exit_line(["--out-dir", str(out), *RUN], capsys)
    assert sorted(os.listdir(out)) == before


def test_no_traceback_from_a_process(tmp_path):
    """The same error as a user sees it: a fresh process, exit code 2, no traceback."""
    r = run_script("compare_schedules.py", "--data-dir", tmp_path / "empty", "--out-dir", tmp_path / "out",
                   *TINY, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
