"""Correctness tests for the diffusion math, the data range and resume.
Diffusion code fails silently (wrong range, t off by one, noise at the last step): these catch it.

    pytest -q test_diffusion.py
    pytest -q -m realdata         # the real-MNIST check (needs ../shared/mnist)
"""
import math
import os

import pytest
import torch

import ddpm_class
import ddpm_time
from conftest import REAL_MNIST, kill_when_written, run_script

# --- schedule ---------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [300, 1000])
def test_linear_alpha_bar_closed_form(T):
    s = ddpm_time.make_schedule(T, "linear", "cpu")
    t = torch.arange(1, T + 1, dtype=torch.float64)
    beta = 1e-4 + (t - 1) * (0.02 - 1e-4) / (T - 1)           # beta_1 = 1e-4 ... beta_T = 0.02
    expected = torch.exp(torch.cumsum(torch.log1p(-beta), 0))  # prod (1 - beta_s), another way
    assert s["alpha_bar"][0] == 1 and s["beta"][0] == 0        # index 0 is x_0 itself
    assert torch.allclose(s["alpha_bar"][1:].double(), expected, rtol=1e-5)
    assert s["beta"][1].item() == pytest.approx(1e-4) and s["beta"][T].item() == pytest.approx(0.02)
    if T == 300:  # the figure the README and compare_schedules.py quote
        assert s["alpha_bar"][T].sqrt().item() == pytest.approx(0.219, abs=0.002)


@pytest.mark.parametrize("T", [300, 1000])
def test_cosine_alpha_bar_closed_form(T):
    s = ddpm_time.make_schedule(T, "cosine", "cpu")
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
    # equal to f(t)/f(0) everywhere but the last step, where beta is clipped to 0.999
    assert torch.allclose(s["alpha_bar"][:T].double(), f[:T] / f[0], atol=1e-6)
    assert s["alpha_bar"][T] < 1e-4 and s["beta"].max() <= 0.999
    assert torch.all(s["alpha_bar"][1:] < s["alpha_bar"][:-1])  # strictly decreasing


def test_q_sample_statistics():
    sched = ddpm_time.make_schedule(300, "linear", "cpu")
    torch.manual_seed(0)
    for t in (1, 50, 300):
        x0 = torch.full((200_000, 1, 1, 1), 0.7)
        xt = ddpm_time.q_sample(x0, torch.full((len(x0),), t), torch.randn_like(x0), sched)
        ab = sched["alpha_bar"][t].item()
        assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=0.01)
        assert xt.var().item() == pytest.approx(1 - ab, abs=0.01)


# --- samplers -----------------------------------------------------------------------------------
def oracle_eps(points, sched):
    """The exact eps(x_t, t) for data that is a mixture of a few points: E[eps | x_t]."""
    def eps_fn(x, t):
        ab = sched["alpha_bar"][t].double()
        xd = x.double().flatten(1)                                          # (B, D)
        logp = -((xd[:, None] - ab.sqrt() * points[None]) ** 2).sum(-1) / (2 * (1 - ab))
        x0_mean = torch.softmax(logp, 1) @ points                           # E[x_0 | x_t]
        return ((xd - ab.sqrt() * x0_mean) / (1 - ab).sqrt()).view_as(x).float()
    return eps_fn


@pytest.mark.parametrize("sampler,steps,landed", [("ddpm", 0, 0.99), ("ddim", 50, 0.99), ("ddim", 7, 0.4)])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_sampler_with_exact_eps_recovers_the_data(sampler, steps, landed, kind):
    """With the exact eps of a two-point data set {0, 1}, samples land on the points, half on each
    (7 DDIM steps are coarse: many end between, at E[x_0 | x_43]). An off-by-one t, a wrong
    alpha_bar index or a wrong noise scale breaks this."""
    sched = ddpm_time.make_schedule(300, kind, "cpu")
    points = torch.tensor([[0.0], [1.0]], dtype=torch.float64)  # black and white, the data range
    gen = torch.Generator().manual_seed(0)
    # start from the true q(x_T), not N(0, I): at T = 300 (linear) 22 % of x_0 is left in x_T, and
    # pure noise would tilt the split toward 0. Here only the sampler is under test.
    ab_T = sched["alpha_bar"][-1]
    x0_true = (torch.rand(4000, 1, 1, 1, generator=gen) < 0.5).float()
    x_T = ab_T.sqrt() * x0_true + (1 - ab_T).sqrt() * torch.randn(4000, 1, 1, 1, generator=gen)
    x0 = ddpm_time.sample(oracle_eps(points, sched), x_T, sched, sampler, steps or None, gen)
    on_points = (((x0 - 0.5).abs() - 0.5).abs() < 1e-3).float().mean().item()
    assert on_points > landed, f"only {on_points:.3f} of the samples land on the data points"
    assert (x0 > 0.5).float().mean().item() == pytest.approx(0.5, abs=0.04)


def test_ddim_keeps_the_implied_noise_when_x0_is_clipped():
    """DDIM (eta = 0) moves x_t along a fixed noise direction: eps_hat = (x_t - sqrt(ab_t) x_0) /
    sqrt(1 - ab_t) must be the same before and after a step, also when the predicted x_0 leaves
    [0, 1] and is clipped (as guidance makes it). Reusing the raw eps after clipping breaks this,
    and guided DDIM samples turn to blobs."""
    sched = ddpm_time.make_schedule(300, "linear", "cpu")
    eps_fn = lambda x, t: 3 * x  # noqa: E731  x_0 = (1 - 2.93) x / 0.22: far outside [0, 1], both sides
    x_T = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x0 = ddpm_time.predict_x0(x_T, 300, eps_fn(x_T, 300), sched).clamp(0, 1)
    assert (x0 == 0).any() and (x0 == 1).any(), "the test needs clipping on both sides"
    implied_T = ddpm_time.eps_from_x0(x_T, 300, x0, sched)
    x_mid = ddpm_time.ddim_step(x0, implied_T, 150, sched)                  # the sampler's own step
    assert torch.allclose(ddpm_time.eps_from_x0(x_mid, 150, x0, sched), implied_T, atol=1e-4)
    assert ddpm_time.timesteps("ddim", 300, 2) == [300, 150, 0]
    # and sample() takes exactly that step: the second x_t on its path is x_mid
    path = []
    ddpm_time.sample(eps_fn, x_T, sched, "ddim", 2, None, path)
    assert torch.equal(path[1], x_mid)


def test_ddpm_first_step_stays_bounded_under_cosine():
    """Cosine at T = 300 clips beta_T to 0.999, so the DDPM step divides by sqrt(alpha_T) = 0.032.
    With the raw eps, a 10 % eps error becomes 3x the noise in x_{T-1} (samples turn to white
    blobs); with x_0 clipped and eps recomputed from it, x_{T-1} stays about N(0, I)."""
    sched = ddpm_time.make_schedule(300, "cosine", "cpu")
    assert sched["beta"][300] > 0.99
    eps_fn = lambda x, t: 1.1 * x  # noqa: E731  at t = T the true eps is x_T itself, up to 0.0002 x_0
    x_T = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    raw = ddpm_time.ddpm_step(x_T, 300, eps_fn(x_T, 300), sched, gen)  # the step with the raw eps
    assert raw.std() > 2.5, "the test needs the unclipped step to blow up"
    # what sample() does: x_0 clipped, eps recomputed from it, then the same step
    x0 = ddpm_time.predict_x0(x_T, 300, eps_fn(x_T, 300), sched).clamp(0, 1)
    x_299 = ddpm_time.ddpm_step(x_T, 300, ddpm_time.eps_from_x0(x_T, 300, x0, sched), sched, gen)
    assert 0.8 < x_299.std() < 1.2
    # sample()'s first step stays bounded too (as a uint8 frame, x clipped to [0, 1]: about half
    # the pixels of N(0, 1) are below 0; a blown-up step would push nearly all of them to 0 or 255)
    path = []
    ddpm_time.sample(eps_fn, x_T, sched, "ddpm", None, torch.Generator().manual_seed(1), path)
    frame = ddpm_time.to_uint8(path[1])
    saturated = ((frame == 0) | (frame == 255)).float().mean().item()
    assert saturated < 0.75, f"{saturated:.2f} of the pixels saturated after the first step"


def test_no_noise_at_the_last_step():
    """x_0 is the mean of p(x_0 | x_1): the last step adds no noise, and noise is drawn T - 1 times."""
    sched = ddpm_time.make_schedule(10, "linear", "cpu")
    eps_fn = lambda x, t: 0.1 * x + 0.01 * t  # noqa: E731  any fixed function of (x, t)
    x1 = torch.randn(5, 1, 28, 28)
    ab1, beta1, alpha1 = sched["alpha_bar"][1], sched["beta"][1], sched["alpha"][1]
    eps = eps_fn(x1, 1)
    mean = (x1 - beta1 / (1 - ab1).sqrt() * eps) / alpha1.sqrt()           # Algorithm 2, z = 0
    a = ddpm_time.ddpm_step(x1, 1, eps, sched, torch.Generator().manual_seed(1))
    b = ddpm_time.ddpm_step(x1, 1, eps, sched, torch.Generator().manual_seed(2))
    assert torch.equal(a, mean) and torch.equal(b, mean)
    # every earlier step adds sqrt(beta_t) z: two generators differ, by noise of that scale
    a = ddpm_time.ddpm_step(x1, 2, eps, sched, torch.Generator().manual_seed(1))
    b = ddpm_time.ddpm_step(x1, 2, eps, sched, torch.Generator().manual_seed(2))
    assert (a - b).std().item() == pytest.approx(math.sqrt(2 * sched["beta"][2].item()), rel=0.1)
    # and sample() visits t = 10 .. 0, ending on that noise-free mean
    path = []
    x0 = ddpm_time.sample(eps_fn, torch.randn(5, 1, 28, 28), sched, "ddpm", None,
                          torch.Generator().manual_seed(1), path)
    assert ddpm_time.timesteps("ddpm", 10, None) == list(range(10, -1, -1)) and len(path) == 11
    assert path[-1] is x0


def test_guidance_convention():
    """eps = eps_u + w (eps_c - eps_u): w = 0 is unconditional, w = 1 conditional."""
    class Fake(torch.nn.Module):
        def forward(self, x, t, y):
            return x * 0 + y.float().view(-1, 1, 1, 1)  # "eps" = the label (NULL = 10)
    y = torch.tensor([3, 7])
    x = torch.zeros(2, 1, 28, 28)
    sched = ddpm_class.make_schedule(10, "linear", "cpu")
    for w, expected in [(0, [10, 10]), (1, [3, 7]), (5, [10 + 5 * (3 - 10), 10 + 5 * (7 - 10)])]:
        out = ddpm_class.guided_eps_fn(Fake(), y, w, sched)(x, 5)
        assert out[:, 0, 0, 0].tolist() == expected



def test_guidance_interval_uses_the_signal_share():
    """--guide-from S: w > 1 only where sqrt(ab) / (sqrt(ab) + sqrt(1 - ab)) >= S (flow_class's t at that noise
    level); before it eps_c alone. With the linear schedule, T = 1000, the share falls below 0.5 after t = 259."""
    class Fake(torch.nn.Module):
        def forward(self, x, t, y):
            return x * 0 + y.float().view(-1, 1, 1, 1)
    sched = ddpm_class.make_schedule(1000, "linear", torch.device("cpu"))
    ab = sched["alpha_bar"]
    share = ab.sqrt() / (ab.sqrt() + (1 - ab).sqrt())
    t_half = int((share >= 0.5).nonzero().max())                  # the noisiest t still guided at S = 0.5
    assert 250 < t_half < 270
    y, x = torch.tensor([3, 7]), torch.zeros(2, 1, 28, 28)
    eps_fn = ddpm_class.guided_eps_fn(Fake(), y, 5, sched, 0.5)
    assert eps_fn(x, t_half)[:, 0, 0, 0].tolist() == [10 + 5 * (3 - 10), 10 + 5 * (7 - 10)]  # guided
    assert eps_fn(x, t_half + 1)[:, 0, 0, 0].tolist() == [3, 7]                             # eps_c alone
    assert ddpm_class.guided_eps_fn(Fake(), y, 0, sched, 0.5)(x, 900)[:, 0, 0, 0].tolist() == [10, 10]


def test_labels_dropped_per_sample(tiny_mnist):
    """Classifier-free guidance drops ~10% of the labels, chosen per sample within each batch."""
    seen = []

    class Spy(ddpm_class.UNet):
        def forward(self, x, t, y):
            seen.append(y.clone())
            return super().forward(x, t, y)
    args, _ = ddpm_class.get_args(["--channels", "8", "8", "8", "--batch-size", "256"])
    model = Spy(args.channels, n_classes=11)
    x_all, labels = ddpm_class.load_mnist(tiny_mnist)
    x_all = x_all.repeat(20, 1, 1, 1)                                   # 10240 digits, 40 batches
    y_all = labels.repeat(20)
    sched = ddpm_class.make_schedule(args.T, args.schedule, "cpu")
    with torch.no_grad():  # the loss of every training batch, as main()'s loop computes it
        for idx in torch.randperm(len(x_all)).split(args.batch_size):
            ddpm_class.ddpm_loss_cfg(model, x_all[idx], y_all[idx], sched, args.p_uncond)
    dropped = torch.stack([(y == ddpm_class.NULL).float().mean() for y in seen])
    assert len(seen) == 40
    assert dropped.mean().item() == pytest.approx(0.1, abs=0.015)
    assert (dropped > 0).all() and (dropped < 0.5).all(), "dropping must be per sample, not per batch"


# --- data range -------------------------------------------------------------------------------
def test_data_range(tiny_mnist):
    x, labels = ddpm_time.load_mnist(tiny_mnist, train=True)
    images = ddpm_time.read_idx(ddpm_time.find_idx_files(tiny_mnist, train=True)[0], 3)  # the uint8 pixels p
    assert images.shape == (512, 28, 28) and labels.max() == 9
    assert x.dtype == torch.float32 and x.shape == (512, 1, 28, 28) and x.min() == 0 and x.max() == 1  # 0..255
    assert torch.equal(x * 255, images.unsqueeze(1).float())                 # x = p / 255 exactly
    assert torch.equal(ddpm_time.to_uint8(x), images.unsqueeze(1))           # and back, exactly
    assert ddpm_time.to_uint8(torch.tensor([-3.0, 0.5, 3.0])).tolist() == [0, 128, 255]  # clamped, rounded


# --- resume -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("script", ["ddpm_time.py", "ddpm_class.py"])
def test_killed_run_resumes_to_the_same_weights(script, tiny_mnist, tmp_path):
    """Kill a run with SIGKILL as soon as its first checkpoint is on disk, resume it, and compare
    with an uninterrupted run: model, EMA and optimizer must be bit-identical."""
    args = ["--data-dir", tiny_mnist, "--epochs", "4", "--T", "10", "--channels", "8", "8", "8", "--device", "cpu",
            "--sampler", "ddim", "--steps", "2"]  # the figures after each run, quickly
    run_script(script, *args, "--out-dir", tmp_path / "full")
    ckpt = tmp_path / "killed" / "ckpt.pt"
    kill_when_written(script, [*args, "--out-dir", tmp_path / "killed"], ckpt)
    killed_at = torch.load(ckpt, weights_only=True)["epoch"]
    assert killed_at < 4
    run_script(script, *args, "--out-dir", tmp_path / "killed", "--resume")
    a, b = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True) for d in ("full", "killed"))
    assert a["epoch"] == b["epoch"] == 4 and torch.equal(a["loss_history"], b["loss_history"])
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    for sa, sb in zip(a["opt"]["state"].values(), b["opt"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


# --- real data ---------------------------------------------------------------------------------
@pytest.mark.realdata
@pytest.mark.skipif(not os.path.isdir(REAL_MNIST), reason="no real MNIST at ../shared/mnist")
def test_real_mnist_loss_goes_down(tmp_path):
    """100 steps of 64 real digits bring the eps-prediction loss from ~1 to below 0.1 (measured: 0.86 over steps 1-5,
    0.082 over steps 76-100; batch 128, half the speed, gave 0.08 too)."""
    run_script("ddpm_time.py", "--data-dir", REAL_MNIST, "--out-dir", tmp_path, "--epochs", "1", "--limit", "6400",
               "--batch-size", "64", "--T", "300", "--sampler", "ddim", "--steps", "5", "--device", "cpu", timeout=1200,
               threads=1)
    losses = torch.load(tmp_path / "ckpt.pt", weights_only=True)["loss_history"]
    assert len(losses) == 100 and losses[:5].mean() > 0.5
    assert losses[-25:].mean() < 0.1, f"loss after 100 steps: {losses[-25:].mean():.4f}"
