"""edit.py (CS180 Project 5A's edits): the methods against exact oracles, the drawing's conversion, and a run
of the script copied alone, with its one-line errors.

    pytest -q test_edit.py
"""
import math
import os
import shutil

import pytest
import torch
from PIL import Image, ImageDraw

import edit
import evaluate
from conftest import HERE, assert_png, one_line_error, run_script

T, STEPS = 300, 10
SCHED = edit.make_schedule(T, "linear", "cpu")


def tiny_model(seed=0):
    """An untrained class-conditioned UNet of ddpm_class.py's shape (8 channels): a real network, in seconds."""
    torch.manual_seed(seed)
    return edit.UNet((8, 8, 8), n_classes=edit.NULL + 1).eval().requires_grad_(False)


def smooth_eps(x, t):
    """A fixed, nonlinear stand-in for the network: the oracles below must hold for any eps."""
    return torch.sin(3 * x + t / T)


def gaussian_eps(mu, s):
    """The exact eps(x_t, t) = E[eps | x_t] for data x_0 ~ N(mu, s^2 I): x_t ~ N(sqrt(ab) mu, (ab s^2 + 1 - ab) I)
    and eps is jointly Gaussian with it, so E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab)."""
    def eps_fn(x, t):
        ab = SCHED["alpha_bar"][t].double()
        return ((1 - ab).sqrt() * (x.double() - ab.sqrt() * mu) / (ab * s ** 2 + 1 - ab)).float()
    return eps_fn


def digits(n=4, seed=0):
    """n blurry random blobs in [0, 1], shaped like MNIST digits (N, 1, 28, 28)."""
    g = torch.Generator().manual_seed(seed)
    return edit.gaussian_blur(3 * (torch.rand(n, 1, 28, 28, generator=g) > 0.8).float(), 1.0).clamp(0, 1)


# --- the methods: exact oracles --------------------------------------------------------------------
def test_inpainting_returns_the_known_pixels_exactly():
    x_orig = digits()
    mask = torch.zeros_like(x_orig, dtype=torch.bool)
    mask[..., :14, :] = True                                          # new pixels: the top half
    x = edit.inpaint(smooth_eps, x_orig, mask, SCHED, STEPS, torch.Generator().manual_seed(0))
    assert torch.equal(x[~mask], x_orig[~mask])                       # to the bit
    assert (x[mask] - x_orig[mask]).abs().max() > 0.1                 # and the rest is new
    assert x.min() >= 0 and x.max() <= 1


def test_sdedit_from_t0_returns_its_input():
    x0 = digits()
    assert torch.equal(edit.sdedit(smooth_eps, x0, 0, SCHED, STEPS, torch.Generator().manual_seed(0)), x0)


def test_sdedit_takes_the_samplers_grid_cut_at_t_and_its_noise_from_the_generator():
    x0, seen = digits(), []
    def eps_fn(x, t):
        seen.append(t)
        return smooth_eps(x, t)
    x = edit.sdedit(eps_fn, x0, T, SCHED, STEPS, torch.Generator().manual_seed(0))
    assert seen == edit.timesteps("ddim", T, STEPS)[:-1]             # T, 270, ..., 30
    seen.clear()
    edit.sdedit(eps_fn, x0, 150, SCHED, STEPS, torch.Generator().manual_seed(0))
    assert seen == [150, 120, 90, 60, 30]                             # ceil(10 * 150 / 300) steps, the same t
    again = edit.sdedit(smooth_eps, x0, T, SCHED, STEPS, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)                                      # one seed, one edit


def test_iterative_denoising_adds_the_generators_noise():
    """From one x_t, two seeds give two digits (DDIM would give one), and one seed the same one."""
    x_t = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(9))
    x = [edit.denoise_from(smooth_eps, x_t, 150, SCHED, STEPS, torch.Generator().manual_seed(s))
         for s in (0, 0, 1)]
    assert torch.equal(x[0], x[1]) and (x[0] - x[2]).abs().max() > 0.1


def ab(t):
    return SCHED["alpha_bar"][t].double()


@pytest.mark.parametrize("t, t_prev", [(150, 120), (300, 270), (60, 30), (31, 30), (1, 0), (30, 0)])
def test_posterior_step_is_q_of_x_t_prime_given_x_t_and_x0(t, t_prev):
    """Given x_0, x_t' and x_t = sqrt(a) x_t' + sqrt(1 - a) e (a = ab_t / ab_t') are jointly
    Gaussian, so q(x_t' | x_t, x_0) follows by conditioning: with c = Cov(x_t', x_t) =
    sqrt(a) (1 - ab_t') and v = Var(x_t) = 1 - ab_t, its mean is
    sqrt(ab_t') x_0 + c / v (x_t - sqrt(ab_t) x_0) and its variance (1 - ab_t') - c^2 / v.
    The step is a draw from it, z the generator's next normal draw; to t' = 0, x_0 itself."""
    g = torch.Generator().manual_seed(3)
    x0, x_t = torch.rand(4, 1, 28, 28, generator=g), torch.randn(4, 1, 28, 28, generator=g)
    a = ab(t) / ab(t_prev)
    c, v = a.sqrt() * (1 - ab(t_prev)), 1 - ab(t)
    mean = ab(t_prev).sqrt() * x0.double() + c / v * (x_t.double() - ab(t).sqrt() * x0.double())
    var = (1 - ab(t_prev)) - c ** 2 / v
    gen = torch.Generator().manual_seed(7)
    x = edit.posterior_step(x_t, x0, t, t_prev, SCHED, gen)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(x.double(), mean + var.clamp(min=0).sqrt() * z, atol=2e-5)
    if t_prev == 0:                                                   # no noise, none drawn
        unused = torch.Generator().manual_seed(7).get_state()
        assert torch.equal(x, x0) and torch.equal(gen.get_state(), unused)


def test_a_stride_of_one_is_ddpm_step_with_the_posterior_variance():
    """t' = t - 1 with x_0 = predict_x0(x_t, eps): the mean of the shared ddpm_step (Ho et al.'s
    Algorithm 2), the noise scaled by sqrt(beta_tilde_t) where ddpm_step takes sqrt(beta_t).
    In float64: in float32, 1 - alpha_bar_t near t = 0 keeps few digits, and the two routes round
    differently."""
    sched = {k: v.double() for k, v in SCHED.items()}
    x_t = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(4)).double()
    for t in (2, 10, 100, T):
        eps = smooth_eps(x_t, t)
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t)).double()
        ours = edit.posterior_step(x_t, edit.predict_x0(x_t, t, eps, sched), t, t - 1, sched,
                                   torch.Generator().manual_seed(t))
        ho = edit.ddpm_step(x_t, t, eps, sched, torch.Generator().manual_seed(t))
        ab, beta = sched["alpha_bar"], sched["beta"]
        beta_tilde = (1 - ab[t - 1]) / (1 - ab[t]) * beta[t]
        assert torch.allclose(ours - beta_tilde.sqrt() * z, ho - beta[t].sqrt() * z, atol=1e-5)


@pytest.mark.parametrize("t, steps", [(T, STEPS), (150, 20)])
def test_iterative_denoising_with_a_perfect_predictor_keeps_every_x_t_on_its_marginal(t, steps):
    """Data all one image c: the exact eps gives x_0 = c at every step. Each x_t' drawn from the
    posterior then has the forward marginal N(sqrt(ab_t') c, (1 - ab_t') I) (a variance of beta
    instead of beta_tilde would not), and the last step lands on c with no noise."""
    c = digits(1, seed=5)[0]
    g, visited = torch.Generator().manual_seed(6), []
    def eps_fn(x, s):
        visited.append((s, x))
        return edit.eps_from_x0(x, s, c, SCHED)
    x_t = edit.q_sample(c, t, torch.randn(64, 1, 28, 28, generator=g), SCHED)
    x = edit.denoise_from(eps_fn, x_t, t, SCHED, steps, g)
    assert torch.allclose(x, c.expand_as(x), atol=1e-5)
    assert [s for s, _ in visited] == edit.timesteps("ddim", t, math.ceil(steps * t / T))[:-1]
    for s, x_s in visited:
        e = (x_s - ab(s).sqrt().float() * c) / (1 - ab(s)).sqrt().float()  # should be N(0, I)
        assert abs(e.mean()) < 0.02 and abs(e.std() - 1) < 0.02, (s, e.mean(), e.std())


@pytest.mark.parametrize("steps", [10, 20])
def test_ddim_inversion_of_gaussian_data_round_trips_to_float32_precision(steps):
    """With the exact eps, each inverse step is solved to its fixed point, so decoding x_T gives x_0 back to
    float32 rounding; plain DDIM inversion (eps taken at the wrong point) is visibly off. The data stay inside
    [0, 1] (4 std from mu), where the sampler's clipping leaves them be."""
    mu, s = torch.linspace(0.4, 0.6, 784).view(1, 1, 28, 28), 0.1
    x0 = mu + s * torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert x0.min() > 0 and x0.max() < 1
    eps_fn = gaussian_eps(mu.double(), s)
    decode = lambda x_T: edit.sample(eps_fn, x_T, SCHED, "ddim", steps, None)  # noqa: E731
    err = (decode(edit.ddim_invert(eps_fn, x0, SCHED, steps, 100)) - x0).abs().max().item()
    plain = (decode(edit.ddim_invert(eps_fn, x0, SCHED, steps, 0)) - x0).abs().max().item()
    assert err < 1e-5, err
    assert plain > 1000 * err and plain > 1e-3, plain


@pytest.mark.parametrize("transform", ["half-turn", "flip"])
def test_the_anagram_of_a_symmetric_pair_stays_symmetric(transform):
    """One digit with itself and a start x_T that R leaves alone: every step's eps is R-symmetric, so the
    sample is, to the bit. The network alone breaks the symmetry (the check has teeth)."""
    R, model = edit.TRANSFORMS[transform], tiny_model()
    z = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    x_T = (z + R(z)) / 2
    assert torch.equal(x_T, R(x_T))
    eps_8 = edit.guided_eps(model, torch.full((3,), 8), 5.0)
    x = edit.sample(edit.anagram_eps(eps_8, eps_8, R), x_T, SCHED, "ddim", STEPS, None)
    assert torch.equal(x, R(x))
    plain = edit.sample(eps_8, x_T, SCHED, "ddim", STEPS, None)
    assert not torch.equal(plain, R(plain))


def test_transforms_are_their_own_inverse_and_a_half_turn_makes_a_6_a_9():
    x = torch.arange(2 * 28 * 28.0).view(2, 1, 28, 28)
    for R in edit.TRANSFORMS.values():
        assert torch.equal(R(R(x)), x)
    assert torch.equal(edit.TRANSFORMS["half-turn"](x)[0, 0, 0, 0], x[0, 0, -1, -1])  # the corner opposite
    assert torch.equal(edit.TRANSFORMS["flip"](x)[0, 0, 0], x[0, 0, -1])              # the last row first


def test_hybrid_with_an_all_pass_filter_is_the_plain_estimate():
    model, x = tiny_model(), torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    eps_3, eps_7 = (edit.guided_eps(model, torch.full((3,), d), 5.0) for d in (3, 7))
    for t in (1, 150, T):
        assert torch.equal(edit.hybrid_eps(eps_3, eps_7, lambda e: e)(x, t), eps_3(x, t))      # all-pass
        assert torch.equal(edit.hybrid_eps(eps_3, eps_7, torch.zeros_like)(x, t), eps_7(x, t))  # all-stop
    a = edit.sample(edit.hybrid_eps(eps_3, eps_7, lambda e: e), x, SCHED, "ddim", STEPS, None)
    assert torch.equal(a, edit.sample(eps_3, x, SCHED, "ddim", STEPS, None))


def test_gaussian_blur_keeps_a_constant_and_the_total():
    assert torch.allclose(edit.gaussian_blur(torch.full((1, 1, 28, 28), 0.3), 1.5), torch.tensor(0.3))
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 14, 14] = 1
    b = edit.gaussian_blur(x, 1.0)
    assert b.sum().item() == pytest.approx(1, abs=1e-6) and b[0, 0, 14, 14] == b.max()


def test_guided_eps_is_the_documented_formula():
    model, x = tiny_model(), torch.randn(2, 1, 28, 28)
    y, t = torch.tensor([3, 7]), torch.full((2,), 100)
    eps_c, eps_u = model(x, t, y), model(x, t, torch.full((2,), edit.NULL))
    assert torch.allclose(edit.guided_eps(model, y, 5.0)(x, 100), eps_u + 5 * (eps_c - eps_u), atol=1e-5)
    assert torch.equal(edit.guided_eps(model, y, 0)(x, 100), eps_u)


def test_slerp_ends_at_its_endpoints_and_keeps_the_norm_only_of_equal_norms():
    a, b = torch.zeros(1, 1, 28, 28), torch.zeros(1, 1, 28, 28)
    a[..., 0, 0], b[..., 0, 1] = 3.0, 3.0                             # orthogonal, |a| = |b| = 3
    alpha = torch.linspace(0, 1, 5).view(-1, 1, 1, 1)
    x = edit.slerp(a, b, alpha)
    assert torch.allclose(x[0], a[0], atol=1e-6) and torch.allclose(x[-1], b[0], atol=1e-6)
    assert torch.allclose(x.flatten(1).norm(dim=1), torch.tensor(3.0))
    angle = torch.atan2(x[:, 0, 0, 1], x[:, 0, 0, 0])                 # angle(a, x) = alpha 90 deg
    assert torch.allclose(angle, alpha.flatten() * math.pi / 2, atol=1e-6)
    x = edit.slerp(a, 2 * b, alpha)                                   # |2 b| = 6: from 3 to 6
    assert torch.allclose(x.flatten(1).norm(dim=1)[[0, -1]], torch.tensor([3.0, 6.0]))


@pytest.mark.parametrize("scale", [1.0, 2.0, -1.0])
def test_slerp_of_parallel_vectors_is_the_straight_line(scale):
    """theta = 0 (or pi): sin theta = 0, so the arc's formula would divide by zero."""
    a = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(8))
    a[..., 0, 0] = 0
    a[..., 0, 0] = a.norm()                                           # cos(a, scale a) = +-1
    alpha = torch.linspace(0, 1, 5).view(-1, 1, 1, 1)
    x = edit.slerp(a, scale * a, alpha)
    assert torch.isfinite(x).all()
    assert torch.allclose(x, (1 - alpha) * a + alpha * scale * a, atol=1e-5)


# --- your drawing: made an MNIST digit -------------------------------------------------------------
def draw_seven(path, size=(300, 200), ink="black", paper="white", at=(40, 20)):
    """A thick '7' drawn off-centre on a large canvas, as a student's PNG might be."""
    im = Image.new("RGBA", size, paper)
    d = ImageDraw.Draw(im)
    x, y = at
    d.line([(x, y), (x + 90, y)], fill=ink, width=14)
    d.line([(x + 90, y), (x + 40, y + 150)], fill=ink, width=14)
    im.save(path)
    return path


def test_a_drawing_becomes_an_mnist_digit(tmp_path):
    x, raw = edit.load_drawing(draw_seven(tmp_path / "seven.png"))
    assert x.shape == (1, 1, 28, 28) and raw.shape == (200, 300)
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
    assert x[0, 0, 0].abs().sum() == 0 and x[0, 0, :, 0].abs().sum() == 0     # black background
    ink = (x[0, 0] > 0.05).nonzero()
    height, width = (ink.max(0).values - ink.min(0).values + 1).tolist()
    assert 19 <= height <= 21 and width < height                      # the longer side scaled to 20 px
    cy = (x[0, 0].sum(1) * torch.arange(28)).sum() / x.sum()
    cx = (x[0, 0].sum(0) * torch.arange(28)).sum() / x.sum()
    assert abs(cy - 13.5) < 0.6 and abs(cx - 13.5) < 0.6              # centred by mass
    inverted, _ = edit.load_drawing(draw_seven(tmp_path / "white.png", ink="white", paper="black", at=(150, 30)))
    assert (inverted - x).abs().max() < 0.05                          # either polarity, anywhere: the same digit
    clear, _ = edit.load_drawing(draw_seven(tmp_path / "clear.png", paper=(0, 0, 0, 0)))  # transparent paper
    assert (clear - x).abs().max() < 0.05


# --- the script, copied alone -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A ddpm_class.py checkpoint of an untrained tiny UNet with T = 10, in the format ddpm_class.py saves."""
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    config = {"channels": [8, 8, 8], "T": 10, "schedule": "linear"}
    torch.save({"script": "ddpm_class", "config": config, "epoch": 1, "ema": tiny_model().state_dict()}, path)
    return path


def run_copy(folder, *args):
    return run_script("edit.py", *args, check=False, alone=folder)


def test_copied_alone_it_makes_every_figure_and_translate_pt(tiny_ckpt, tiny_mnist, tmp_path):
    shutil.copy(os.path.join(HERE, "edit.py"), tmp_path)
    draw_seven(tmp_path / "mine.png")
    r = run_copy(tmp_path, "--ckpt", tiny_ckpt, "--data-dir", tiny_mnist, "--out-dir", "run", "--steps", 3,
                 "--n-score", 3, "--n-translate", 2, "--image", "mine.png", "--image-digit", 7, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["edit.py", "mine.png", "run"]
    for name in ["a_forward", "b_denoise", "c_sdedit", "c_image", "d_inpaint", "e_translate", "f_anagram",
                 "g_hybrid", "h_invert"]:
        assert_png(tmp_path / "run" / f"{name}.png")
    assert "PSNR" in r.stdout and "RMS error" in r.stdout and "1->7" in r.stdout
    d = torch.load(tmp_path / "run" / "translate.pt", weights_only=True)
    levels, pairs = 4, 4
    assert d["x"].shape == (levels * pairs * 2, 1, 28, 28) and d["x"].dtype == torch.float32
    assert d["y"].tolist() == [7, 7, 8, 8, 9, 9, 6, 6] * levels and d["source"].tolist() == [1, 1, 3, 3, 4, 4, 5, 5] * 4
    assert d["t"].tolist() == [t for t in (3, 5, 7, 9) for _ in range(8)]   # round(f * T), T = 10
    assert d["epoch"] == 1 and d["config"]["steps"] == 3
    x, y = evaluate.load_samples(str(tmp_path / "run" / "translate.pt"))  # evaluate.py reads it as samples.pt
    assert torch.equal(y, d["y"]) and x.min() >= 0 and x.max() <= 1


def test_parts_run_alone_and_write_the_same_translate_pt(tiny_ckpt, tiny_mnist, tmp_path):
    common = ["--ckpt", tiny_ckpt, "--data-dir", tiny_mnist, "--steps", 2, "--n-translate", 1, "--device", "cpu"]
    run_script("edit.py", *common, "--out-dir", tmp_path / "all", "--parts", "d", "e")
    run_script("edit.py", *common, "--out-dir", tmp_path / "e", "--parts", "e")
    assert sorted(os.listdir(tmp_path / "e")) == ["e_translate.png", "translate.pt"]
    a, b = (torch.load(tmp_path / d / "translate.pt", weights_only=True)["x"] for d in ("all", "e"))
    assert torch.equal(a, b)


def test_without_the_shipped_weights_beside_it_the_default_is_one_line(tiny_mnist, tmp_path):
    shutil.copy(os.path.join(HERE, "edit.py"), tmp_path)
    r = run_copy(tmp_path, "--data-dir", tiny_mnist)
    assert "no checkpoint at" in one_line_error(r) and "pretrained" in one_line_error(r)


def bad_files(folder):
    """name -> (path, the message's key words)."""
    foreign = os.path.join(folder, "flow.pt")
    torch.save({"script": "flow_class", "config": {}, "epoch": 1, "ema": {}}, foreign)
    text = os.path.join(folder, "notes.txt")
    with open(text, "w") as f:
        f.write("not a checkpoint, not an image")
    empty = os.path.join(folder, "empty.png")
    open(empty, "wb").close()
    blank = os.path.join(folder, "blank.png")
    Image.new("L", (64, 64), 255).save(blank)
    return {"missing ckpt": (["--ckpt", os.path.join(folder, "nope.pt")], "no checkpoint at"),
            "foreign ckpt": (["--ckpt", foreign], "written by flow_class.py, not ddpm_class.py"),
            "not a ckpt": (["--ckpt", text], "not a readable checkpoint"),
            "not an image": (["--image", text], "not a readable PNG or JPEG"),
            "empty image file": (["--image", empty], "not a readable PNG or JPEG"),
            "image of nothing": (["--image", blank], "holds no digit"),
            "anagram digit": (["--anagram", "6", "12"], "argument --anagram: 12 is not in [0, 10)"),
            "odd pairs": (["--pairs", "1", "7", "3"], "two by two"),
            "level above 1": (["--levels", "0.5", "1.5"], "fractions t / T")}


@pytest.mark.parametrize("case", ["missing ckpt", "foreign ckpt", "not a ckpt", "not an image", "empty image file",
                                  "image of nothing", "anagram digit", "odd pairs", "level above 1"])
def test_bad_input_is_one_line(case, tiny_ckpt, tiny_mnist, tmp_path):
    args, words = bad_files(str(tmp_path))[case]
    ckpt = [] if "--ckpt" in args else ["--ckpt", tiny_ckpt]
    r = run_script("edit.py", *ckpt, *args, "--data-dir", tiny_mnist, "--out-dir", tmp_path / "out",
                   "--device", "cpu", check=False)
    assert words in one_line_error(r)
    assert not os.path.exists(tmp_path / "out" / "translate.pt")


def test_the_header_gives_each_parts_course_number():
    doc = edit.__doc__
    for part in ["1.1", "1.2", "1.3", "1.4", "1.7", "1.7.1", "1.7.2", "1.7.3", "1.8", "1.9"]:
        assert f" {part} " in doc, part
    assert math.isclose(edit.get_args([]).guidance, 5.0)
