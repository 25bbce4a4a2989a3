"""Tests for flow_time.py and flow_class.py: the path and its target, the ODE samplers against an exact
velocity field, guidance through the sampler, and the runs themselves (outputs, resume after a kill,
make_gif.py and evaluate.py on what they write, each script copied alone, one-line errors).

    pytest -q test_flow.py
"""
import json
import os
import shutil

import pytest
import torch
from PIL import Image

import flow_class
import flow_time
from conftest import HERE, assert_png, kill_when_written, one_line_error, run_script

SCRIPTS = ["flow_time.py", "flow_class.py"]
TINY = ["--channels", "8", "8", "8", "--device", "cpu"]  # a model that trains in a second
STEPS = 4                                                # sampler steps of the test runs (and of their snapshots)


# --- the path and the loss -------------------------------------------------------------------------
def test_path_runs_from_noise_to_digit_with_velocity_x1_minus_x0():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(3, 1, 28, 28, generator=g), torch.rand(3, 1, 28, 28, generator=g)
    at = lambda t: flow_time.interpolate(x0, x1, torch.full((3,), t))  # noqa: E731
    assert torch.equal(at(0.0), x0) and torch.equal(at(1.0), x1)      # t = 0 noise, t = 1 the digit
    assert torch.allclose(at(0.25), 0.75 * x0 + 0.25 * x1)
    u = flow_time.target_velocity(x0, x1)
    assert torch.equal(u, x1 - x0)
    assert torch.allclose((at(0.6) - at(0.4)) / 0.2, u, atol=1e-5)    # the path's d x_t / dt, at any t
    ts = torch.tensor([0.0, 0.5, 1.0])                                # one t per sample
    assert torch.allclose(flow_time.interpolate(x0, x1, ts)[1], (x0[1] + x1[1]) / 2)


class Spy(torch.nn.Module):
    """A stand-in network that records what it is fed and answers a fixed 'velocity' of 0.3."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t, y=None):
        self.seen.append((x.clone(), t.clone(), None if y is None else y.clone()))
        return torch.full_like(x, 0.3)


@pytest.mark.parametrize("module", [flow_time, flow_class])
def test_loss_regresses_x1_minus_x0_with_the_network_fed_1000t(module):
    """Recover x_0 from what the network saw (x_t and 1000 t): the loss is || 0.3 - (x_1 - x_0) ||^2."""
    torch.manual_seed(0)
    x1 = torch.rand(64, 1, 28, 28, dtype=torch.float64)
    spy = Spy()
    if module is flow_time:
        loss = module.flow_loss(spy, x1, 1000.0)
    else:
        loss = module.flow_loss_cfg(spy, x1, torch.arange(64) % 10, 1000.0, 0.0)
    x_t, t_in, _ = spy.seen[0]
    t = (t_in.double() / 1000).view(-1, 1, 1, 1)
    assert t_in.min() >= 0 and t_in.max() < 1000 and t_in.std() > 200  # 1000 t, t ~ U[0, 1)
    x0 = (x_t - t * x1) / (1 - t)                                      # x_t = (1 - t) x_0 + t x_1, solved for x_0
    assert abs(x0.mean().item()) < 0.02 and x0.std().item() == pytest.approx(1, abs=0.02)  # x_0 ~ N(0, I)
    expected = ((0.3 - (x1 - x0)) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_labels_dropped_per_sample():
    """Classifier-free guidance: ~10 % of the labels become NULL, drawn per sample within each batch."""
    torch.manual_seed(0)
    spy = Spy()
    x1, y = torch.rand(256, 1, 2, 2), torch.arange(256) % 10
    for _ in range(40):
        flow_class.flow_loss_cfg(spy, x1, y, 1000.0, 0.1)
    dropped = torch.stack([(seen_y == flow_class.NULL).float().mean() for _, _, seen_y in spy.seen])
    assert dropped.mean().item() == pytest.approx(0.1, abs=0.015)
    assert (dropped > 0).all() and (dropped < 0.5).all(), "dropping must be per sample, not per batch"
    kept = torch.stack([seen_y for _, _, seen_y in spy.seen]) != flow_class.NULL
    assert torch.equal(torch.stack([seen_y for _, _, seen_y in spy.seen])[kept], y.repeat(40, 1)[kept])


# --- the samplers, against an exact velocity field ---------------------------------------------
M, S = 0.5, 0.2  # data x_1 ~ N(M, S^2 I), noise x_0 ~ N(0, I)


def exact_velocity(x, t):
    """u(x, t) = E[x_1 - x_0 | x_t = x] for Gaussian data: x_t ~ N(t M, v I), v = (1 - t)^2 + t^2 S^2,
    E[x_1 | x_t] = M + t S^2 (x - t M) / v,  E[x_0 | x_t] = (1 - t) (x - t M) / v."""
    v = (1 - t) ** 2 + t ** 2 * S ** 2
    return M + t * S ** 2 * (x - t * M) / v - (1 - t) * (x - t * M) / v


def std_error(sampler, steps, calls=None):
    """|std(x_1) - S| when the sampler integrates the exact field from a standardized N(0, 1) sample:
    the exact flow maps x_0 to M + S x_0, so any error here is the solver's."""
    z = torch.randn(20000, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = (z - z.mean()) / z.std()

    def u_fn(x, t):
        if calls is not None:
            calls.append(t)
        return exact_velocity(x, t)
    path = []
    x1 = flow_time.flow_sample(u_fn, z, sampler, steps, path)
    assert x1.mean().item() == pytest.approx(M, abs=1e-6)
    ts = flow_time.flow_timesteps(steps)
    assert ts.is_floating_point() and ts[0] == 0 and ts[-1] == 1 and (ts[1:] > ts[:-1]).all() and len(ts) == steps + 1
    assert len(path) == steps + 1 and path[0] is z and path[-1] is x1  # every x_t, x_0 to x_1
    return abs(x1.std().item() - S)


def test_euler_with_many_steps_and_heun_with_few_land_on_the_data():
    assert std_error("euler", 200) < 0.006
    assert std_error("heun", 25) < 0.006


def test_heun_is_second_order_and_euler_first():
    """Halving the step halves Euler's error and quarters Heun's (4.0x measured at 10 -> 20 and 20 -> 40 steps;
    its last step is an Euler step, whose error, like every step's, shrinks like dt^2); at 20 steps Heun is 4.7x
    closer than Euler."""
    euler10, euler20 = std_error("euler", 10), std_error("euler", 20)
    heun10, heun20, heun40 = std_error("heun", 10), std_error("heun", 20), std_error("heun", 40)
    assert 1.7 < euler10 / euler20 < 2.3
    assert heun10 / heun20 > 3.3 and heun20 / heun40 > 3.3
    assert euler20 > 4 * heun20


@pytest.mark.parametrize("sampler,steps", [("euler", 7), ("heun", 7)])
def test_nfe_is_what_the_sampler_evaluates(sampler, steps):
    calls = []
    std_error(sampler, steps, calls)
    assert len(calls) == flow_time.count_nfe(sampler, steps) == {"euler": steps, "heun": 2 * steps - 1}[sampler]
    assert calls[0] == 0 and max(calls) == pytest.approx(1 - 1 / steps)  # neither looks at t = 1 (Heun ends with Euler)


def test_nothing_is_clipped_inside_the_ode():
    """Out of [0, 1] and back: the ODE keeps x_t as it is, only the saved frames are clamped."""
    def u_fn(x, t):  # 0 -> 1.5 -> 1.0
        return torch.full_like(x, 3.0 if t < 0.5 else -1.0)
    path = []
    x1 = flow_time.flow_sample(u_fn, torch.zeros(2, 1, 28, 28), "euler", 2, path)
    assert torch.allclose(x1, torch.ones_like(x1))                    # clipped at t = 0.5 it would end at 0.5
    assert torch.allclose(path[1], torch.full_like(x1, 1.5))
    frames = flow_time.to_uint8(torch.stack(path))
    assert (frames[1] == 255).all() and (frames[2] == 255).all()



@pytest.mark.parametrize("module", [flow_time, flow_class])
def test_clip_x1_clips_the_predicted_digit_and_nothing_else(module):
    """u' = (clamp(x + (1 - t) u, 0, 1) - x) / (1 - t): the digit it predicts is the clipped one, u is kept
    where the prediction is in range, and at t = 1 (nothing left to predict) u is returned as it is."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, generator=g, dtype=torch.float64)
    u = 2 * torch.randn(2000, generator=g, dtype=torch.float64)
    u_clipped = module.clip_x1(lambda x_, t_: u)
    for t in (0.0, 0.3, 0.9):
        x1_hat = x + (1 - t) * u
        inside = (x1_hat >= 0) & (x1_hat <= 1)
        assert inside.sum() > 100 and (~inside).sum() > 100
        u_c = u_clipped(x, t)
        assert torch.allclose(x + (1 - t) * u_c, x1_hat.clamp(0, 1))
        assert torch.allclose(u_c[inside], u[inside]) and not torch.allclose(u_c[~inside], u[~inside])
    assert torch.equal(u_clipped(x, 1.0), u)


def test_clip_x1_through_the_sampler():
    """Data all at c = 0.3 (a point mass): the exact velocity (c - x) / (1 - t) predicts x_1 = c, always in range,
    so clipping changes nothing and Euler lands on c. A constant push u = 3 (guidance overshoots like
    this) predicts x_1 = x + 3 (1 - t): unclipped Euler ends at x_0 + 3, far past white; clipped, every step aims
    at the nearest valid pixel and the last lands on it."""
    c = 0.3
    z = torch.randn(5000, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = lambda x, t: (c - x) / (1 - t)  # noqa: E731
    plain = flow_time.flow_sample(exact, z, "euler", 5)
    clipped = flow_time.flow_sample(flow_time.clip_x1(exact), z, "euler", 5)
    assert torch.allclose(plain, clipped) and torch.allclose(clipped, torch.full_like(z, c))
    push = lambda x, t: torch.full_like(x, 3.0)  # noqa: E731
    assert torch.allclose(flow_time.flow_sample(push, z, "euler", 5), z + 3)
    clipped = flow_time.flow_sample(flow_time.clip_x1(push), z, "euler", 5)
    assert clipped.min() >= -1e-12 and clipped.max() <= 1 + 1e-12
    assert ((clipped - 1).abs() < 1e-9).float().mean() > 0.95  # every start above -2 ends at white (1)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_heun_lands_on_a_point_mass_without_looking_at_t_1(steps):
    """Digits lie on a thin set, and there the velocity jumps at t = 1. The extreme case, data all at c: the exact
    u = (c - x) / (1 - t) is 0 / 0 at t = 1. Heun must end on c, its last step an Euler step, which is exact here
    (u is constant along each line). A corrector at t = 1 gives NaN."""
    c = 0.3
    z = torch.randn(1000, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = lambda x, t: (c - x) / (1 - t)  # noqa: E731
    x1 = flow_time.flow_sample(exact, z, "heun", steps)
    assert torch.allclose(x1, torch.full_like(z, c))

# --- guidance, through the sampler ---------------------------------------------------------------
class LabelVelocity(torch.nn.Module):
    """A fake network whose velocity is the label (NULL = 10 for 'no label'); records its inputs."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t, y):
        self.seen.append((len(x), t.clone()))
        return torch.ones_like(x) * y.float().view(-1, 1, 1, 1)


@pytest.mark.parametrize("w", [0, 1, 5])
def test_guidance_through_the_sampler(w):
    """u = u_u + w (u_c - u_u): with a constant velocity x_1 = x_0 + u, so w = 0 ends at x_0 + NULL
    (unconditional), w = 1 at x_0 + y (conditional). One forward pass per evaluation, on 2B inputs when
    guided and on B for u_u or u_c alone (w = 0, 1), the network fed 1000 t."""
    net, y = LabelVelocity(), torch.tensor([3, 7])
    x0 = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x1 = flow_class.flow_sample(flow_class.guided_velocity_fn(net, y, w, 1000.0), x0, "heun", 2)
    expected = 10 + w * (y.float() - 10)
    assert torch.allclose(x1 - x0, expected.view(-1, 1, 1, 1).expand_as(x0), atol=1e-5)
    assert [n for n, _ in net.seen] == [2 if w in (0, 1) else 4] * flow_class.count_nfe("heun", 2)
    assert [t[0].item() for _, t in net.seen] == [0, 500, 500]  # Heun: t, the corrector at t + dt; the last step Euler


@pytest.mark.parametrize("w", [0, 0.5, 5])
def test_guidance_interval_through_the_sampler(w):
    """--guide-from 0.5: Euler 4 visits t = 0, 0.25 (before: w capped at 1, u_c alone for w = 5, one pass on B
    inputs) and 0.5, 0.75 (guided, 2B). The velocity is constant in each step, so x_1 - x_0 is the mean of the four.
    w <= 1 is not guidance (no extrapolation) and stays as it is everywhere."""
    net, y = LabelVelocity(), torch.tensor([3, 7])
    x0 = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x1 = flow_class.flow_sample(flow_class.guided_velocity_fn(net, y, w, 1000.0, 0.5), x0, "euler", 4)
    u_early, u_late = (10 + min(w, 1) * (y.float() - 10)), (10 + w * (y.float() - 10))
    expected = (u_early + u_late) / 2
    assert torch.allclose(x1 - x0, expected.view(-1, 1, 1, 1).expand_as(x0), atol=1e-5)
    assert [t[0].item() for _, t in net.seen] == [0, 250, 500, 750]
    assert [n for n, _ in net.seen] == ([2, 2, 4, 4] if w == 5 else [2] * 4 if w == 0 else [4] * 4)


@pytest.mark.parametrize("guide_from,steps", [(0.7, 10), (0.7, 20), (0.7, 50), (0.9, 10), (0.9, 20), (0.6, 50)])
def test_guidance_starts_exactly_at_guide_from(guide_from, steps):
    """The sampler visits t = i / steps exactly (the nearest double), so --guide-from 0.7 guides from the step at
    t = 0.7 itself, and Heun's corrector there too. (A float32 grid visits 0.69999999 at 7 / 10: guidance then
    started a step late, and --guide-from 0.9 on 10 steps never guided at all.)"""
    first = round(guide_from * steps)                                 # the step at t = guide_from
    net, y, x0 = LabelVelocity(), torch.tensor([3, 7]), torch.zeros(2, 1, 28, 28)
    flow_class.flow_sample(flow_class.guided_velocity_fn(net, y, 5, 1000.0, guide_from), x0, "euler", steps)
    assert [n for n, _ in net.seen] == [2] * first + [4] * (steps - first)
    net = LabelVelocity()
    flow_class.flow_sample(flow_class.guided_velocity_fn(net, y, 5, 1000.0, guide_from), x0, "heun", steps)
    at_start = [n for n, t in net.seen if t[0].item() == pytest.approx(1000 * guide_from)]
    assert at_start == [4, 4]                                         # step first - 1's corrector and step first


# --- runs ----------------------------------------------------------------------------------------
def run_copy(folder, script, *args, check=True):
    """Run a script copied alone into `folder` (nothing else of the repository next to it), in a new process."""
    return run_script(script, *args, check=check, alone=folder)


@pytest.fixture(scope="module", params=SCRIPTS)
def trained_run(request, tiny_mnist, tmp_path_factory):
    """One 2-epoch run of each flow script, copied alone into an empty folder and run there."""
    script = request.param
    folder = tmp_path_factory.mktemp(script[:-3] + "_alone")
    shutil.copy(os.path.join(HERE, script), folder)
    assert "--sampler" in run_copy(folder, script, "--help").stdout
    extra = ["--digits", "3", "7"] if script == "flow_class.py" else []
    r = run_copy(folder, script, "--data-dir", tiny_mnist, "--out-dir", "run", "--epochs", "2", "--steps", STEPS,
                 "--n-samples", "12", *TINY, *extra)
    assert sorted(os.listdir(folder)) == sorted(["run", script])
    return script, str(folder / "run"), r.stdout


@pytest.mark.slow  # a copied-alone run of each flow script (the quick command leaves it out)
def test_outputs(trained_run):
    script, out, stdout = trained_run
    for name in ["samples.png", "samples_epoch001.png", "samples_epoch002.png", "loss.png"] + \
            (["guidance.png"] if script == "flow_class.py" else []):
        assert_png(os.path.join(out, name))
    assert f"NFE {STEPS}" in stdout and "img/s" in stdout
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert ckpt["script"] == script[:-3] and ckpt["epoch"] == 2 and len(ckpt["loss_history"]) == 2 * 4
    tr = torch.load(os.path.join(out, "trajectory.pt"), weights_only=True)
    assert tr["frames"].dtype == torch.uint8 and tr["frames"].shape == (STEPS + 1, 64, 1, 28, 28)
    assert tr["t"].is_floating_point() and tr["t"].tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert tr["frames"][0].float().std() > 20, "the first frame should be noise"
    assert tr["nrow"] == 8
    snaps = torch.load(os.path.join(out, "snapshots.pt"), weights_only=True)
    assert list(snaps["grids"]) == [1, 2] and snaps["grids"][2].shape == (64, 1, 28, 28)
    s = torch.load(os.path.join(out, "samples.pt"), weights_only=True)
    assert s["x"].shape == (12, 1, 28, 28) and s["x"].dtype == torch.float32
    assert s["x"].min() >= 0 and s["x"].max() <= 1 and s["x"].std() > 0.05
    assert s["config"]["nfe"] == STEPS and s["config"]["sampler"] == "euler" and s["epoch"] == 2
    assert s["config"]["clip"] is flow_time.get_args([])[0].clip  # the default, recorded with the samples
    if script == "flow_class.py":
        assert tr["y"].tolist() == [3] * 32 + [7] * 32 and snaps["y"].tolist() == tr["y"].tolist()
        assert s["y"].tolist() == [3, 7] * 6
    else:
        assert tr["y"] is None and s["y"] is None


MODULES = {"flow_time.py": flow_time, "flow_class.py": flow_class}


@pytest.mark.slow  # a copied-alone run of each flow script (the quick command leaves it out)
def test_sample_only_with_heun_counts_two_evaluations_per_step(trained_run, tmp_path, capsys):
    """--sample-only (run in this process, through main) with Heun: 2 network evaluations per step, 1 in the last."""
    script, out, _ = trained_run
    run_dir = str(shutil.copytree(out, tmp_path / "run"))
    extra = ["--digits", "9"] if script == "flow_class.py" else []
    MODULES[script].main(["--out-dir", run_dir, "--sample-only", "--sampler", "heun", "--steps", "3",
                          "--n-samples", "5", *TINY, *extra])
    s = torch.load(os.path.join(run_dir, "samples.pt"), weights_only=True)
    assert "Heun 3 steps, NFE 5" in capsys.readouterr().out
    assert s["config"]["nfe"] == 5 and s["x"].shape == (5, 1, 28, 28) and s["epoch"] == 2
    assert s["y"] is None if script == "flow_time.py" else s["y"].tolist() == [9] * 5


@pytest.mark.slow  # a copied-alone run of each flow script (the quick command leaves it out)
def test_make_gif_reads_flow_outputs(trained_run, tmp_path):
    """make_gif.py turns the trajectory (t ascending from 0.0 to 1.0) and the snapshots into GIFs."""
    script, out, _ = trained_run
    if script == "flow_class.py":  # the snapshots are written by the same shared block in both scripts
        run_script("make_gif.py", out, "--progress", "--out", tmp_path / "progress.gif")
        assert os.path.getsize(tmp_path / "progress.gif") > 1000
    run_script("make_gif.py", out, "--out", tmp_path / "reverse.gif")
    with Image.open(tmp_path / "reverse.gif") as im:
        assert im.is_animated and im.n_frames >= 2


@pytest.mark.slow  # a copied-alone run of each flow script (the quick command leaves it out)
def test_evaluate_scores_flow_samples(trained_run, tiny_mnist, tmp_path):
    script, out, _ = trained_run
    r = run_script("evaluate.py", os.path.join(out, "samples.pt"), "--data-dir", tiny_mnist, "--json",
                   "--classifier", tmp_path / "clf.pt", "--clf-epochs", "1", "--device", "cpu")
    row = next(v for k, v in json.loads(r.stdout)["files"].items() if k.endswith("samples.pt"))
    assert row["n"] == 12 and row["fid"] >= 0
    assert (row["acc"] is not None) == (script == "flow_class.py")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tiny_mnist, tmp_path):
    """SIGKILL a run once its first checkpoint is on disk, resume it, and compare with an uninterrupted
    run: model, EMA, optimizer and loss history bit-identical. (flow_class.py keeps its RNG the same way:
    the label dropping draws from the same generator that the checkpoint saves.)"""
    script = "flow_time.py"
    args = ["--data-dir", tiny_mnist, "--epochs", "2", "--steps", "2", *TINY]
    run_script(script, *args, "--out-dir", tmp_path / "full")
    ckpt = tmp_path / "killed" / "ckpt.pt"
    kill_when_written(script, [*args, "--out-dir", tmp_path / "killed"], ckpt)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    run_script(script, *args, "--out-dir", tmp_path / "killed", "--resume")
    a, b = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True) for d in ("full", "killed"))
    assert a["epoch"] == b["epoch"] == 2 and torch.equal(a["loss_history"], b["loss_history"])
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    for sa, sb in zip(a["opt"]["state"].values(), b["opt"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


# --- bad input ------------------------------------------------------------------------------------
def main_error(module, argv, capsys):
    """Run a script's main in this process: it must stop with exit code 2; returns the last stderr line."""
    with pytest.raises(SystemExit) as stop:
        module.main([str(a) for a in argv])
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_flag_is_a_one_line_error(tmp_path):
    """As a user sees it: a fresh process, exit code 2, no traceback, nothing written."""
    r = run_script("flow_time.py", "--out-dir", tmp_path, "--steps", "0", check=False, process=True)
    assert "--steps" in one_line_error(r) and not os.listdir(tmp_path)


@pytest.mark.parametrize("module,args,says", [
    (flow_time, ["--sampler", "rk4"], "--sampler"),
    (flow_class, ["--guidance", "nan"], "--guidance"),
    (flow_class, ["--steps", "-3"], "--steps"),
    (flow_class, ["--guide-from", "1.5"], "--guide-from"),
])
def test_bad_flags_stop_the_parser(module, args, says, tmp_path, capsys):
    assert says in main_error(module, ["--out-dir", tmp_path, *args], capsys)
    assert not os.listdir(tmp_path), "nothing is written on a bad flag"


@pytest.mark.parametrize("flags", [["--resume"], ["--sample-only"]])
def test_checkpoint_of_another_script_is_refused_and_kept(flags, tmp_path, capsys):
    """A ddpm_class.py checkpoint handed to flow_class.py: one line naming it, the file untouched."""
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"script": "ddpm_class", "config": {"T": 300, "epochs": 20}, "epoch": 20}, ckpt)
    before = ckpt.read_bytes()
    assert "ddpm_class" in main_error(flow_class, ["--out-dir", tmp_path, *flags, *TINY], capsys)
    assert ckpt.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


@pytest.mark.slow  # a copied-alone run of each flow script (the quick command leaves it out)
def test_a_finished_run_is_not_overwritten(trained_run, tmp_path, capsys):
    """Without --resume a finished run is refused; the other flow script cannot resume it either."""
    script, out, _ = trained_run
    run_dir = shutil.copytree(out, tmp_path / "run")
    before = (run_dir / "ckpt.pt").read_bytes()
    if script == "flow_time.py":
        assert "--resume" in main_error(flow_time, ["--out-dir", run_dir, *TINY], capsys)
    else:
        assert "flow_class" in main_error(flow_time, ["--out-dir", run_dir, "--resume", *TINY], capsys)
    assert (run_dir / "ckpt.pt").read_bytes() == before
