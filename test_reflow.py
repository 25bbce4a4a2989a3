"""reflow.py: the Gaussian oracle (the reflow of an exact flow map is a straight line, so one Euler step is
exact), couplings equal to the teacher's own sampler bit for bit, a resumed run (and pairs cut off by a kill)
the same run, a tiny end-to-end run copied alone, and one-line errors for bad teachers and pairs.

    pytest -q test_reflow.py
"""
import math
import os

import pytest
import torch

import flow_class
import reflow
from conftest import one_line_error, run_script

TINY = ["--channels", "8", "8", "8", "--device", "cpu"]
RUN = ["--pairs", "500", "--pair-steps", "4", "--epochs", "2", "--device", "cpu"]  # two teacher batches


@pytest.fixture(scope="module")
def teacher(tiny_mnist, tmp_path_factory):
    """A flow_class.py checkpoint trained for one epoch on tiny digits."""
    out = tmp_path_factory.mktemp("teacher")
    run_script("flow_class.py", "--data-dir", tiny_mnist, "--out-dir", out, "--epochs", "1", "--steps", "2",
               *TINY)
    return str(out / "ckpt.pt")


# --- the Gaussian oracle ------------------------------------------------------------------------
MU, S = 0.3, 0.5  # data x_1 ~ N(MU, S^2) per pixel; noise x_0 ~ N(0, 1)


def teacher_velocity(x, t):
    """The exact flow-matching velocity E[x_1 - x_0 | x_t] for Gaussian data: x_t ~ N(t MU, v),
    v = (1 - t)^2 + t^2 S^2, Cov(x_1 - x_0, x_t) = t S^2 - (1 - t). Its flow map is x_1 = MU + S x_0."""
    v = (1 - t) ** 2 + t ** 2 * S ** 2
    return MU + (t * S ** 2 - (1 - t)) / v * (x - t * MU)


class Reflowed(torch.nn.Module):
    """The exact velocity on the coupling's straight lines x_t = (1 - t) x_0 + t (MU + S x_0): the line
    through x_t (one, as they do not cross) has x_0 = (x_t - t MU) / (1 - t + t S), and u = MU + (S - 1) x_0.
    Called as the UNet is: (x, scale * t, y)."""
    def forward(self, x, t_scaled, y=None):
        t = (t_scaled / 1000.0).view(-1, 1, 1, 1)
        return MU + (S - 1) * (x - t * MU) / (1 - t + t * S)


def test_the_reflow_of_an_exact_flow_map_is_straight_and_one_step_is_exact():
    torch.manual_seed(0)
    x0 = torch.randn(64, 1, 28, 28, dtype=torch.float64)
    # the coupling: the teacher's ODE solution, which for Gaussian data is the map MU + S x_0
    for steps, tol in ((500, 8e-3), (2000, 2e-3)):  # Euler's error falls as 1 / steps
        x1 = reflow.flow_sample(teacher_velocity, x0, "euler", steps)
        assert (x1 - (MU + S * x0)).abs().max() < tol
    x1 = MU + S * x0  # the exact coupling, for the exact checks below
    y = torch.zeros(64, dtype=torch.long)
    # on the pairs' lines the reflowed velocity is exactly x_1 - x_0: the reflow loss is 0 at its minimum
    for loss in ("l2", "huber"):
        exact = reflow.reflow_loss(Reflowed(), x0, x1, y, 1000.0, loss, "uniform").item()
        assert exact < 1e-12 if loss == "l2" else exact < 1e-9
    class Teacher(torch.nn.Module):  # the teacher's velocity is not constant along the lines: loss > 0
        def forward(self, x, t_scaled, y=None):
            return teacher_velocity(x, (t_scaled / 1000.0).view(-1, 1, 1, 1))
    assert reflow.reflow_loss(Teacher(), x0, x1, y, 1000.0, "l2", "uniform").item() > 1e-2

    def u_student(x, t):
        return reflow.velocity(Reflowed(), x, torch.full((len(x),), t, dtype=x.dtype), 1000.0, y)
    # one Euler step of the reflowed field lands on the teacher's x_1; the teacher's one step does not
    assert torch.allclose(reflow.flow_sample(u_student, x0, "euler", 1), x1, atol=1e-12)
    assert (reflow.flow_sample(teacher_velocity, x0, "euler", 1) - x1).abs().max() > 0.1
    # and straightness: 0 for the reflowed path, clearly not for the teacher's
    paths = {"student": [], "teacher": []}
    reflow.flow_sample(u_student, x0, "euler", 50, paths["student"])
    reflow.flow_sample(teacher_velocity, x0, "euler", 50, paths["teacher"])
    assert reflow.straightness(paths["student"]).max() < 1e-20
    assert reflow.straightness(paths["teacher"]).mean() > 1e-2


def test_the_u_shaped_t_is_the_stated_density():
    """sample_t("u") draws t with density cosh(4 (t - 1/2)) / Z: its histogram matches the density's."""
    torch.manual_seed(0)
    t = reflow.sample_t(400_000, "u", "cpu")
    assert 0 <= t.min() and t.max() <= 1
    hist = torch.histc(t, bins=10, min=0, max=1) / len(t)
    centres = (torch.arange(10) + 0.5) / 10
    a = 4.0
    cdf = lambda s: 0.5 + torch.sinh(a * (s - 0.5)) / (2 * math.sinh(a / 2))  # noqa: E731
    expected = cdf(centres + 0.05) - cdf(centres - 0.05)
    assert torch.allclose(hist, expected, atol=2e-3)
    assert not torch.allclose(hist, torch.full((10,), 0.1), atol=2e-2)  # and it is not uniform


# --- the pipeline --------------------------------------------------------------------------------
def test_couplings_are_the_teachers_own_samples_bit_for_bit(teacher, tmp_path, one_thread):
    run_script("reflow.py", "--ckpt", teacher, "--out-dir", tmp_path, *RUN)
    pairs = torch.load(tmp_path / "pairs.pt", weights_only=True)
    assert pairs["done"] == 500 and torch.equal(pairs["y"], torch.arange(500) % 10)
    ckpt = torch.load(teacher, weights_only=True)
    model = flow_class.UNet(ckpt["config"]["channels"], n_classes=11).to(memory_format=torch.channels_last)
    model.load_state_dict(ckpt["ema"])
    for i in (0, 250):  # each teacher batch, through flow_class.py's own guided, clipped Euler sampler
        x0, y = pairs["x0"][i:i + 250], pairs["y"][i:i + 250]
        u = flow_class.clip_x1(flow_class.guided_velocity_fn(model, y, 5.0, 1000.0, 0.6))
        assert torch.equal(pairs["x1"][i:i + 250], flow_class.flow_sample(u, x0, "euler", 4))


@pytest.mark.slow
def test_a_resumed_run_and_cut_off_pairs_are_the_same_run(teacher, tmp_path, one_thread):
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    run_script("reflow.py", "--ckpt", teacher, "--out-dir", straight, *RUN)
    # pairs cut off by a kill after the first batch (pairs.pt as the kill leaves it), then a rerun that
    # draws the rest and trains one epoch, then --resume for the second
    run_script("reflow.py", "--ckpt", teacher, "--out-dir", parts, *RUN)
    whole = torch.load(parts / "pairs.pt", weights_only=True)
    whole.update(done=250, x1=torch.cat([whole["x1"][:250], torch.zeros(250, 1, 28, 28)]))
    os.remove(parts / "ckpt.pt")
    reflow.save_atomic(whole, str(parts / "pairs.pt"))
    run_script("reflow.py", "--ckpt", teacher, "--out-dir", parts, *RUN[:-4], "--epochs", "1",
               "--device", "cpu")
    run_script("reflow.py", "--ckpt", teacher, "--out-dir", parts, *RUN, "--resume")
    a, b = (torch.load(d / "ckpt.pt", weights_only=True) for d in (straight, parts))
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert torch.equal(a["loss_history"], b["loss_history"]) and b["epoch"] == 2
    pa, pb = (torch.load(d / "pairs.pt", weights_only=True) for d in (straight, parts))
    assert torch.equal(pa["x1"], pb["x1"])


@pytest.mark.slow
def test_a_tiny_run_copied_alone_writes_its_figures_and_samples(teacher, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    r = run_script("reflow.py", "--ckpt", teacher, "--out-dir", "out", *RUN, "--n-samples", "30",
                   alone=alone)
    for name in ("samples.png", "compare.png", "straightness.png", "samples_epoch002.png"):
        assert os.path.getsize(alone / "out" / name) > 1000, name
    samples = torch.load(alone / "out" / "samples.pt", weights_only=True)
    assert samples["x"].shape == (30, 1, 28, 28) and 0 <= samples["x"].min() and samples["x"].max() <= 1
    assert "straightness S" in r.stdout
    # sampling the student with another seed draws other noise from the same weights
    r = run_script("reflow.py", "--student", alone / "out" / "ckpt.pt", "--out-dir", tmp_path / "s1",
                   "--seed", "1", "--n-samples", "30", "--device", "cpu")
    other = torch.load(tmp_path / "s1" / "samples.pt", weights_only=True)["x"]
    assert not torch.equal(other, samples["x"])


def test_bad_teachers_and_pairs_are_one_line(teacher, tiny_mnist, tmp_path):
    msg = one_line_error(run_script("reflow.py", "--ckpt", tmp_path / "none.pt", "--out-dir", tmp_path / "a",
                                    *RUN, check=False))
    assert "no teacher" in msg
    for script in ("ddpm_class.py", "flow_time.py"):
        out = tmp_path / script[:-3]
        extra = ["--T", "10"] if script.startswith("ddpm") else []
        run_script(script, "--data-dir", tiny_mnist, "--out-dir", out, "--epochs", "1", "--steps", "2",
                   *extra, *TINY)
        msg = one_line_error(run_script("reflow.py", "--ckpt", out / "ckpt.pt", "--out-dir", out / "r", *RUN,
                                        check=False))
        assert f"written by {script}" in msg and "flow_class.py" in msg
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "pairs.pt").write_bytes(b"not a torch file")
    msg = one_line_error(run_script("reflow.py", "--ckpt", teacher, "--out-dir", bad, *RUN, check=False))
    assert "pairs.pt" in msg and "delete it" in msg
    other = tmp_path / "other"
    run_script("reflow.py", "--ckpt", teacher, "--out-dir", other, *RUN[:-4], "--epochs", "1", "--device", "cpu")
    os.remove(other / "ckpt.pt")
    msg = one_line_error(run_script("reflow.py", "--ckpt", teacher, "--out-dir", other, *RUN, "--guidance", "2",
                                    check=False))
    assert "another teacher or flags" in msg
