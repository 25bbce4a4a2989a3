r"""Reflow: straighten a trained flow, so that one network evaluation draws a digit.

Papers: Liu, Gong, Liu 2022, "Flow Straight and Fast" (rectified flow), https://arxiv.org/abs/2209.03003
        Lee, Lin, Fanti 2024, "Improving the Training of Rectified Flows", https://arxiv.org/abs/2405.20320

    python reflow.py                   # teacher pretrained/flow_class.pt: pairs, reflow, figures
    python reflow.py --resume          # continue a killed run (the pairs drawn are kept)
    python reflow.py --student pretrained/reflow_class.pt --n-samples 1000   # for evaluate.py
Math (flow_class.py's conventions: x_0 noise, x_1 a digit in [0, 1], t in [0, 1]):
    coupling     x_1 = Phi(x_0, y): the teacher's guided ODE solution (Euler, --pair-steps) from x_0
    reflow loss  || (x_1 - x_0) - u_theta(x_t, t, y) ||,  x_t = (1 - t) x_0 + t x_1  (L2 or Huber)
    straightness S = E_t || u(x_t, t) - (x_1 - x_0) ||^2 a pixel, along a model's own path
Why: trained on random pairs (noise, any digit), the teacher's u at x_t is the average direction
    E[x_1 - x_0 | x_t]: near t = 0, toward a blur of many digits. The path bends once a digit shows,
    and one Euler step, which follows the direction at its start, lands on the blur. ODE paths never
    cross, so the lines between the pairs (x_0, Phi(x_0, y)) rarely do: the average is nearly the
    line, u nearly constant along it, one step x_0 + u(x_0, 0, y) nearly exact. Guidance baked in.
Writes to --out-dir (runs/reflow): pairs.pt, ckpt.pt, samples_epochNNN.png (1 step), samples.png,
    compare.png (both models, 1 to 8 steps), straightness.png (S, pixel paths), samples.pt (N).
What you can delete for an assignment: the checks in load_teacher and load_pairs; --resume,
    --sample-only, --student (open_run: call prepare_out_dir; restore_run: an empty run); clip_x1.
"""
import argparse
import copy
import math
import os
import signal
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from matplotlib.figure import Figure  # writes files, and leaves a notebook's pyplot alone
from tqdm import tqdm

SCRIPT = "reflow"
NULL = 10                     # flow_class.py's "no label" class (digits are 0..9)
CHUNK, SAVE_EVERY = 250, 2000  # digits a batch (flow_class.py's); save every 2000 pairs (k CHUNK)
COMPARE_STEPS = (1, 2, 4, 8)  # compare.png: teacher and student at these Euler steps
PATH_STEPS = 50               # the Euler steps of the straightness measure and the pixel paths
PAIR_KEYS = ("pairs", "pair_steps", "guidance", "guide_from", "clip", "seed")  # pairs.pt's
TRAIN_KEYS = ("ckpt_teacher", *PAIR_KEYS, "loss", "t_dist", "batch_size", "lr", "weight_decay",
              "ema_decay")
# --- shared: flags ---
def number(kind, lo, hi=math.inf, lo_included=True):
    """A flag's type: number(int, 0) takes an integer >= 0, number(float, 0, 1) a float in [0, 1);
    lo_included=False: above lo. Anything else is argparse's one line, naming the flag."""
    interval = ("[" if lo_included else "(") + f"{lo}, {hi})"  # for the error message
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            a = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {a}")
        if not (math.isfinite(value) and (lo < value < hi or value == lo and lo_included)):
            raise argparse.ArgumentTypeError(f"{text} is not in {interval}")
        return value
    return parse

def parse_flags(ap, argv):
    """The flags, and the names of those given (parsed again over a marker for each). In a notebook,
    argv None is no flags (sys.argv is the kernel's), and a bad flag is die's one line."""
    if in_notebook():
        ap.error = die
        if argv is None and sys.argv[0].endswith("kernel_launcher.py"):  # pasted whole into a cell
            argv = []
    args, unset = ap.parse_args(argv), object()
    again = ap.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args), unset)))
    return args, {k for k, v in vars(again).items() if v is not unset}
# --- config ------------------------------------------------------------------------------------
def get_args(argv=None):
    ap = argparse.ArgumentParser(description="Reflow a class-conditioned flow: digits in one step")
    g = ap.add_argument_group("teacher and pairs")
    g.add_argument("--ckpt", dest="ckpt_teacher", default="pretrained/flow_class.pt",
                   help="the teacher: a flow_class.py checkpoint")
    g.add_argument("--pairs", type=number(int, 1), default=20000, help="couplings (x_0, y, x_1)")
    g.add_argument("--pair-steps", type=number(int, 1), default=20, help="teacher's Euler steps")
    g.add_argument("--guidance", type=number(float, -math.inf), default=5.0, help="teacher's w")
    g.add_argument("--guide-from", type=number(float, 0, 1), default=0.6, help="w > 1 from this t")
    g.add_argument("--clip", action=argparse.BooleanOptionalAction, default=True, help="clip_x1")
    g = ap.add_argument_group("reflow")
    g.add_argument("--loss", choices=["l2", "huber"], default="huber", help="see reflow_loss")
    g.add_argument("--t-dist", choices=["uniform", "u"], default="u", help="t's; see sample_t")
    g.add_argument("--epochs", type=number(int, 0), default=30, help="passes over the pairs")
    g.add_argument("--batch-size", type=number(int, 1), default=128, help="pairs per step")
    g.add_argument("--lr", type=number(float, 0, lo_included=False), default=3e-4, help="AdamW's")
    g.add_argument("--weight-decay", type=number(float, 0), default=0.01, help="AdamW's")
    g.add_argument("--ema-decay", type=number(float, 0, 1), default=0.999, help="EMA of weights")
    g = ap.add_argument_group("sampling")
    g.add_argument("--sampler", choices=["euler", "heun"], default="euler", help="the student's")
    g.add_argument("--steps", type=number(int, 1), default=1, help="the student's (1: one NFE)")
    g.add_argument("--n-samples", type=number(int, 0), default=0, help="also N into samples.pt")
    g = ap.add_argument_group("run")
    g.add_argument("--out-dir", default=f"runs/{SCRIPT}", help="pairs, checkpoint, plots go here")
    g.add_argument("--resume", action="store_true", help="continue training from ckpt.pt")
    g.add_argument("--sample-only", action="store_true", help="sample from ckpt.pt, no training")
    g.add_argument("--student", dest="ckpt", default="", help="sample this file (no training)")
    g.add_argument("--seed", type=number(int, 0), default=0, help="same seed, same run")
    g.add_argument("--device", default="auto", help="auto (cuda, mps, then cpu), cpu, cuda, mps")
    args, given = parse_flags(ap, argv)  # given: the flags on the command line, checked by --resume
    args.nfe = count_nfe(args.sampler, args.steps)
    return args, given
# --- shared: flow path ---
def interpolate(x0, x1, t):
    """x_t = (1 - t) x_0 + t x_1, t (B,): the noise x_0 at t = 0, the digit x_1 at t = 1."""
    t = t.view(-1, 1, 1, 1)
    return (1 - t) * x0 + t * x1

def target_velocity(x0, x1):
    """u = d x_t / dt = x_1 - x_0: constant along each straight line, so it needs no t."""
    return x1 - x0

def velocity(model, x_t, t, scale, y=None):
    """u_theta(x_t, t[, y]), t (B,) in [0, 1]: the UNet sees scale * t (its sinusoids need it)."""
    return model(x_t, scale * t, y)
# --- shared: model blocks ---
def time_embedding(t, dim):
    """Sinusoidal embedding of the step t (B,) -> (B, dim), as in the Transformer."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)

class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, plus the (time) embedding, twice; residual connection."""
    def __init__(self, c_in, c_out, emb_dim):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):                        # x (B, c_in, H, W), emb (B, emb_dim)
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]       # broadcast over H, W
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)                       # (B, c_out, H, W)

class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions (used at 7x7: 49 tokens)."""
    def __init__(self, c, heads=4):
        super().__init__()
        self.norm, self.qkv = nn.GroupNorm(8, c), nn.Conv2d(c, 3 * c, 1)  # q, k, v in one conv
        self.proj, self.heads = nn.Conv2d(c, c, 1), heads

    def forward(self, x):                             # x (B, C, H, W)
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)     # each (B, heads, HW, C/heads)
        h = F.scaled_dot_product_attention(q, k, v)   # softmax(q k^T / sqrt(d)) v
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))
# --- shared: UNet ---
class UNet(nn.Module):
    """eps_theta(x_t, t) (DDPM) or u_theta (flow); with n_classes, a label y too, embedded and added
    to t. 28x28 -> 14x14 -> 7x7 (+ attention) -> back up; skips added, not concatenated."""
    def __init__(self, channels=(16, 64, 64), emb_dim=128, n_classes=0):
        super().__init__()
        c1, c2, c3 = channels
        self.emb_dim = emb_dim
        self.t_mlp = nn.Sequential(
            nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.y_emb = nn.Embedding(n_classes, emb_dim) if n_classes else None
        self.inp = nn.Conv2d(1, c1, 3, padding=1)
        self.down1, self.pool1 = ResBlock(c1, c1, emb_dim), nn.Conv2d(c1, c1, 3, 2, 1)
        self.down2, self.pool2 = ResBlock(c1, c2, emb_dim), nn.Conv2d(c2, c2, 3, 2, 1)
        self.down3 = ResBlock(c2, c3, emb_dim)
        self.mid1, self.attn = ResBlock(c3, c3, emb_dim), SelfAttention(c3)
        self.mid2, self.up3 = ResBlock(c3, c3, emb_dim), ResBlock(c3, c2, emb_dim)
        self.unpool2, self.up2 = nn.ConvTranspose2d(c2, c2, 4, 2, 1), ResBlock(c2, c1, emb_dim)
        self.unpool1, self.up1 = nn.ConvTranspose2d(c1, c1, 4, 2, 1), ResBlock(c1, c1, emb_dim)
        self.out = nn.Sequential(nn.GroupNorm(8, c1), nn.SiLU(), nn.Conv2d(c1, 1, 3, padding=1))

    def forward(self, x, t, y=None):  # x (B, 1, 28, 28), t (B,), y (B,) or None
        emb = self.t_mlp(time_embedding(t, self.emb_dim))         # (B, emb_dim)
        if y is not None:
            emb = emb + self.y_emb(y)                             # the digit, or NULL = "no label"
        h1 = self.down1(self.inp(x), emb)                         # (B, c1, 28, 28)
        h2 = self.down2(self.pool1(h1), emb)                      # (B, c2, 14, 14)
        h3 = self.down3(self.pool2(h2), emb)                      # (B, c3, 7, 7)
        h = self.mid2(self.attn(self.mid1(h3, emb)), emb)         # (B, c3, 7, 7)
        h = self.up3(h + h3, emb)                                 # (B, c2, 7, 7)
        h = self.up2(self.unpool2(h) + h2, emb)                   # (B, c1, 14, 14)
        h = self.up1(self.unpool1(h) + h1, emb)                   # (B, c1, 28, 28)
        return self.out(h)                                        # (B, 1, 28, 28)
# --- shared: guidance ---
def guided_velocity_fn(model, y, w, scale, guide_from=0.0):
    """u(x_t, t) = u_u + w (u_c - u_u) for digits y (B,), u_c given y, u_u given NULL; w > 1 only
    from t = guide_from on (min(w, 1) before): early, it pushes a digit to one shape, RESULTS.md."""
    no_label = torch.full_like(y, NULL)                           # (B,)
    labels_then_null = torch.cat([y, no_label])                   # (2B,): u_c's half, u_u's half
    def u_fn(x, t):
        w_t = w if t >= guide_from else min(w, 1.0)  # the interval (t is exact: flow_timesteps)
        t_batch = torch.full((len(x),), t, device=x.device)       # (B,)
        if w_t == 0:                                              # w = 0: u_u alone, B inputs
            return velocity(model, x, t_batch, scale, no_label)
        if w_t == 1:                                              # w = 1: u_c alone, B inputs
            return velocity(model, x, t_batch, scale, y)
        x_twice, t_twice = torch.cat([x, x]), torch.cat([t_batch, t_batch])  # else both, 2B inputs
        u_c, u_u = velocity(model, x_twice, t_twice, scale, labels_then_null).chunk(2)
        return u_u + w_t * (u_c - u_u)
    return u_fn
# --- shared: flow sampler ---
def count_nfe(sampler, steps):
    """Network evaluations (NFE) a sample: Euler 1 a step; Heun 2, its last step 1 (flow_sample)."""
    return steps if sampler == "euler" else 2 * steps - 1

def flow_timesteps(steps):
    """t = i / steps, i = 0..steps, in float64: a t named in a flag (0.7) is met exactly."""
    return torch.arange(steps + 1, dtype=torch.float64) / steps

def euler_step(x, dt, u):
    """x_{t+dt} = x_t + dt u(x_t, t), along the velocity at the step's start. Error ~ 1 / steps."""
    return x + dt * u

def heun_step(u_fn, x, t, dt, u):
    """Heun: x_{t+dt} = x_t + dt (u + u(x', t + dt)) / 2, x' = euler_step. Error ~ 1 / steps^2."""
    x_pred = euler_step(x, dt, u)
    return x + dt * (u + u_fn(x_pred, t + dt)) / 2

def clip_x1(u_fn):
    """u_fn aimed at its x_1 clamped to [0, 1], as DDPM's clip_denoised (guidance overshoots):
    u' = (x1_hat - x_t) / (1 - t), x1_hat = clamp(x_t + (1 - t) u, 0, 1); u itself at t = 1."""
    def u_clipped(x, t):
        u = u_fn(x, t)
        if t >= 1:
            return u
        return ((x + (1 - t) * u).clamp(0, 1) - x) / (1 - t)      # (x1_hat - x_t) / (1 - t)
    return u_clipped

@torch.no_grad()
def flow_sample(u_fn, x_0, sampler, steps, path=None):
    """Solve dx/dt = u_fn(x, t) (t a float) from the noise x_0 at t = 0 to x_1 at t = 1, unclamped,
    in `steps` equal steps; a list `path` gets each x_t. Heun's last step is Euler's, as in EDM: at
    t = 1, u = x_1 - x_0 jumps to x_t - E[x_0] = x_t, and a corrector would average the jump in."""
    ts = flow_timesteps(steps).tolist()
    x = x_0
    for t, t_next in zip(ts[:-1], ts[1:]):          # each step, from t to t_next
        if path is not None:
            path.append(x)
        u = u_fn(x, t)
        if sampler == "heun" and t_next < 1:
            x = heun_step(u_fn, x, t, t_next - t, u)
        else:                                       # Euler, and Heun's last step (no NFE at t = 1)
            x = euler_step(x, t_next - t, u)
    if path is not None:
        path.append(x)
    return x
# --- a. the couplings ---------------------------------------------------------------------------
@torch.no_grad()
def draw_pairs(pairs, u_teacher, steps, device, save):
    """x_1 = Phi(x_0, y) for every pair not yet drawn: the teacher's guided Euler solution from
    x_0, CHUNK pairs a batch; save() every SAVE_EVERY pairs and at the end, so a kill keeps them."""
    n = len(pairs["x0"])
    for i in tqdm(range(pairs["done"], n, CHUNK), desc="pairs", unit="batch"):
        x0, y = pairs["x0"][i:i + CHUNK].to(device), pairs["y"][i:i + CHUNK].to(device)
        pairs["x1"][i:i + CHUNK] = flow_sample(u_teacher(y), x0, "euler", steps).cpu()
        pairs["done"] = min(i + CHUNK, n)
        if pairs["done"] % SAVE_EVERY == 0 or pairs["done"] == n:
            save()
# --- b. reflow: the student's loss on the coupled pairs -----------------------------------------
def sample_t(n, t_dist, device):
    """t (n,) in [0, 1]: uniform, or U-shaped with density cosh(a (t - 1/2)) / Z, a = 4, drawn by
    inverting its CDF F(t) = 1/2 + sinh(a (t - 1/2)) / (2 sinh(a / 2)): more t near 0 and 1."""
    r = torch.rand(n, device=device)
    if t_dist == "uniform":
        return r
    a = 4.0
    return 0.5 + torch.asinh((2 * r - 1) * math.sinh(a / 2)) / a

def reflow_loss(model, x0, x1, y, scale, loss, t_dist):
    """|| (x_1 - x_0) - u_theta(x_t, t, y) || on the pairs' lines, x_t = (1 - t) x_0 + t x_1.
    l2: the squared error a pixel. huber: sqrt(||.||^2 + c^2) - c a digit, c = 0.00054 sqrt(784)
    (Lee et al. 2024): small next to ||.||, so about the norm: pairs not fit yet weigh less."""
    t = sample_t(len(x0), t_dist, x0.device)
    err = velocity(model, interpolate(x0, x1, t), t, scale, y) - target_velocity(x0, x1)
    if loss == "l2":
        return err.square().mean()
    c = 0.00054 * math.sqrt(err[0].numel())
    return (err.flatten(1).square().sum(1) + c * c).sqrt().sub(c).mean()

def straightness(path):
    """S(t) = mean || u(x_t, t) - (x_1 - x_0) ||^2 a pixel along one Euler path [x_0, ..., x_1]:
    Euler's u at step i is (x_{i+1} - x_i) / dt exactly. S = 0 for a straight line."""
    xs = torch.stack(path)                         # (steps + 1, B, 1, 28, 28)
    u = (xs[1:] - xs[:-1]) * (len(path) - 1)       # dt = 1 / steps
    chord = xs[-1] - xs[0]                         # x_1 - x_0
    return (u - chord).square().mean(dim=(1, 2, 3, 4))  # (steps,)
# --- shared: EMA ---
@torch.no_grad()
def ema_update(ema, model, decay, step):
    """theta_ema <- d theta_ema + (1 - d) theta, d = min(decay, (1 + step) / (10 + step))."""
    d = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - d)
# --- the teacher and the pairs, loaded and checked ----------------------------------------------
def load_teacher(path, device):
    """flow_class.py's EMA weights as a UNet, its time scale, and a fingerprint of the weights."""
    if not os.path.isfile(path):
        die(f"no teacher at {path}: train one with flow_class.py, then pass --ckpt FILE")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        script, config = ckpt["script"], ckpt["config"]
    except Exception as e:
        die(f"{path} is not a readable checkpoint ({type(e).__name__})")
    if script != "flow_class":
        die(f"{path} was written by {script}.py: the teacher is a flow_class.py checkpoint")
    teacher = UNet(config["channels"], n_classes=NULL + 1)  # digits 0..9 and NULL
    teacher = teacher.to(device, memory_format=torch.channels_last)  # faster on CPU
    teacher.load_state_dict(ckpt["ema"])
    fingerprint = sum(v.double().abs().sum().item() for v in ckpt["ema"].values())
    return teacher.requires_grad_(False), config["time_scale"], fingerprint

def load_pairs(path, args, fingerprint):
    """pairs.pt, if this teacher drew it with these flags (a kill leaves the pairs drawn so far);
    else new pairs: the noise x_0 and label y of each, from --seed, and x_1 still to draw."""
    made_by = {"teacher": fingerprint, **{k: getattr(args, k) for k in PAIR_KEYS}}
    n = args.pairs
    if not os.path.exists(path):
        x0 = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed))
        y = torch.arange(n) % 10
        return {"x0": x0, "y": y, "x1": torch.zeros_like(x0), "done": 0, "made_by": made_by}
    try:
        pairs = torch.load(path, weights_only=True)
        made = pairs["made_by"]
    except Exception as e:
        die(f"{path} is not a readable pairs file ({type(e).__name__}): delete it to draw again")
    if made != made_by:
        die(f"{path} was made by another teacher or flags ({made}): use another --out-dir")
    return pairs
# --- figure: straightness -----------------------------------------------------------------------
def plot_straightness(S, paths, path):
    """Left: S(t) of teacher and student along their own paths. Right: x_t against t for the six
    pixels of the first digit whose teacher path bends most (farthest from its chord)."""
    xs = {who: torch.stack(p)[:, 0, 0].flatten(1).cpu() for who, p in paths.items()}  # (T+1, 784)
    t = torch.linspace(0, 1, len(xs["teacher"]))[:, None]
    chord = xs["teacher"][0] + t * (xs["teacher"][-1] - xs["teacher"][0])
    pixels = (xs["teacher"] - chord).abs().amax(0).topk(6).indices
    axes = Figure(figsize=(13, 3.2)).subplots(1, 3)
    for who, s in S.items():
        axes[0].plot(torch.arange(len(s)) / len(s), s.cpu(), label=f"{who}: S = {s.mean():.4f}")
    axes[0].set(yscale="log", xlabel="t", ylabel="|u - (x_1 - x_0)|^2 a pixel",
                title="straightness (0: a straight line)")
    axes[0].legend()
    axes[2].sharey(axes[1])
    for ax, (who, x) in zip(axes[1:], xs.items()):
        ax.plot(t.numpy(), x[:, pixels].numpy())
        ax.set(xlabel="t", title=f"{who}: x_t of 6 pixels")
    axes[0].figure.savefig(path, dpi=100, bbox_inches="tight")
# --- main ---------------------------------------------------------------------------------------
def main(argv=None):
    # setup: flags, device, and the checkpoint of --resume or --sample-only
    args, given = get_args(argv)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    ckpt_path, ckpt = open_run(args, given, SCRIPT, TRAIN_KEYS)
    print(vars(args))

    def out(name):  # a file in --out-dir
        return os.path.join(args.out_dir, name)
    # the teacher (flow_class.py's weights); the student, a copy of it
    teacher, scale, fingerprint = load_teacher(args.ckpt_teacher, device)
    model = copy.deepcopy(teacher).requires_grad_(True)
    ema = copy.deepcopy(model).requires_grad_(False)  # the student we sample
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    run = restore_run(ckpt, model, ema, opt, device, args.out_dir)

    def u_teacher(y):  # as flow_class.py samples: guided, clipped
        u_fn = guided_velocity_fn(teacher, y, args.guidance, scale, args.guide_from)
        return clip_x1(u_fn) if args.clip else u_fn

    def u_student(y):  # no guidance pass: it learned the guided pairs
        def u_fn(x, t):
            return velocity(ema, x, torch.full((len(x),), t, device=x.device), scale, y)
        return clip_x1(u_fn) if args.clip else u_fn

    # a. the couplings x_1 = Phi(x_0, y), saved as drawn
    training = not args.sample_only and run["epoch"] < args.epochs
    if training:
        pairs = load_pairs(out("pairs.pt"), args, fingerprint)
        first, t0 = pairs["done"], time.time()
        draw_pairs(pairs, u_teacher, args.pair_steps, device,
                   lambda: save_atomic(pairs, out("pairs.pt")))
        print(f"pairs: {args.pairs - first} drawn in {time.time() - t0:.0f} s")

    # the grid: 8 of each digit, the same noise every epoch
    rows = torch.arange(10, device=device).repeat_interleave(8)
    gen = torch.Generator().manual_seed(args.seed + 1)
    x_grid = torch.randn(len(rows), 1, 28, 28, generator=gen).to(device)
    labels = [str(d) for d in range(10)]

    # b. reflow: the student learns each line x_0 -> x_1
    if training:
        x0s, ys, x1s = (pairs[k].to(device) for k in ("x0", "y", "x1"))
        step, train_s, first = len(run["loss_history"]), 0.0, run["epoch"] + 1
        for epoch in range(first, args.epochs + 1):
            losses = []  # this epoch's, on the device: no sync per step
            with EpochLog(epoch, args.epochs, len(x0s), losses, run["epoch"]) as log:
                for idx in torch.randperm(len(x0s), device=device).split(args.batch_size):
                    loss = reflow_loss(model, x0s[idx], x1s[idx], ys[idx],
                                       scale, args.loss, args.t_dist)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    ema_update(ema, model, args.ema_decay, step)
                    step += 1
                    losses.append(loss.detach())
                    log.step(len(idx))  # progress, NaN stop, Ctrl-C
            run["loss_history"] = torch.cat([run["loss_history"], torch.stack(losses).cpu()])
            run["epoch"], train_s = epoch, train_s + log.seconds
            x_1 = flow_sample(u_student(rows), x_grid, "euler", 1)
            title = f"{SCRIPT}: epoch {epoch} (EMA, Euler 1, NFE 1)"
            save_snapshot(run, epoch, x_1, rows, args.out_dir, labels, title)
            save_run(run, model, ema, opt, args, device, ckpt_path, SCRIPT)
        n = args.epochs - first + 1
        print(f"train: {train_s / n:.1f} s/epoch, {n * len(x0s) / train_s:.0f} img/s")

    # figures: the student's grid; both models at 1, 2, 4, 8 steps
    label = f"{args.sampler.capitalize()} {args.steps}, NFE {args.nfe}"
    x_1 = flow_sample(u_student(rows), x_grid, args.sampler, args.steps)
    save_grid(x_1, out("samples.png"), 8, f"{SCRIPT}: student, {label}", labels)
    y10, x10 = rows[::8], x_grid[::8]  # one of each digit
    grids = [flow_sample(u(y10), x10, "euler", k)
             for u in (u_teacher, u_student) for k in COMPARE_STEPS]
    who_k = [f"{who} {k}" for who in ("teacher", "student") for k in COMPARE_STEPS]
    title = f"{SCRIPT}: the same noise, Euler k steps (teacher, guided: up to 2k NFE)"
    save_grid(torch.cat(grids), out("compare.png"), 10, title, who_k, labels)

    # straightness along each model's own path; pixel paths
    paths = {"teacher": [], "student": []}
    for who, u in (("teacher", u_teacher), ("student", u_student)):
        flow_sample(u(y10), x10, "euler", PATH_STEPS, paths[who])
    S = {who: straightness(p) for who, p in paths.items()}
    print("straightness S (0: straight):", ", ".join(f"{w} {s.mean():.4f}" for w, s in S.items()))
    plot_straightness(S, paths, out("straightness.png"))

    # samples: N digits for evaluate.py, 0, 1, ..., 9, 0, ...
    if args.n_samples:
        y = torch.arange(args.n_samples, device=device) % 10
        gen = torch.Generator().manual_seed(args.seed + 2)  # flow_class.py's
        noise = [torch.randn(len(c), 1, 28, 28, generator=gen).to(device) for c in y.split(CHUNK)]
        t0 = time.time()
        x = torch.cat([flow_sample(u_student(c), z, args.sampler, args.steps)
                       for c, z in zip(y.split(CHUNK), noise)]).clamp(0, 1).cpu()
        print(f"sample: {len(x)} digits, {label}, in {time.time() - t0:.2f} s -> samples.pt")
        save_atomic({"x": x, "y": y.cpu(), "config": vars(args), "epoch": run["epoch"]},
                    out("samples.pt"))
    print(f"outputs in {args.out_dir}/: " + ", ".join(sorted(os.listdir(args.out_dir))))
    figures = [out(f) for f in ("samples.png", "compare.png", "straightness.png")]
    show(*[f for f in figures if os.path.exists(f)])  # in a notebook
# =================================================================================================
# Plumbing, the same in every script that has it (skip on a first read): errors, data, files, plots.
# --- shared: errors and notebooks ---
def die(msg, code=2):
    """A user error: one line on stderr, no traceback; in a notebook, the cell fails with it."""
    if in_notebook():
        raise OneLineError(f"error: {msg}")
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)
class OneLineError(Exception):
    """die's error in a notebook: IPython shows only what _render_traceback_ returns, one line."""
    def _render_traceback_(self):
        return [str(self)]
def in_notebook():
    """True in a Jupyter or Colab kernel: sys.argv is the kernel's, and sys.exit ends nothing."""
    shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    return shell is not None and "IPKernelApp" in shell.config
# --- shared: device ---
def pick_device(name):
    """auto: cuda, then Apple's mps, then cpu. A device this machine lacks is a one-line error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() \
            else "cpu"
    try:
        if name.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ValueError(name)
        return torch.empty(0, device=name).device  # fails on a device this machine lacks
    except Exception:
        die(f"--device {name}: not available on this machine (use auto, cpu, cuda, cuda:1 or mps)")
# --- shared: atomic save ---
def save_atomic(obj, path, write=torch.save):
    """write(obj, file) to path.tmp, fsync, rename: a kill or full disk leaves the old file whole"""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            write(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, folder gone or read-only, ...
        if os.path.exists(tmp):
            os.remove(tmp)
        die(f"cannot write {path} ({e.strerror or e}); the previous file, if any, is kept")
# --- shared: run safety ---
def prepare_out_dir(out_dir, continuing):
    """Make --out-dir, check it takes files, never start over a run there; return ckpt.pt's path."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        open(os.path.join(out_dir, ".write_test"), "wb").close()
        os.remove(os.path.join(out_dir, ".write_test"))
    except OSError as e:
        die(f"cannot write to --out-dir {out_dir!r} ({e.strerror or e})")
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    if os.path.exists(ckpt_path) and not continuing:
        die(f"{ckpt_path} exists: pass --resume to continue it, --sample-only to sample, "
            f"or another --out-dir")
    return ckpt_path
def rng_state(device):
    """The generators a resumed run must continue: the CPU's, and the GPU's (cuda or mps) in use."""
    gpu = {"cuda": torch.cuda.get_rng_state_all, "mps": torch.mps.get_rng_state}.get(device.type)
    return {"cpu": torch.get_rng_state(), **({device.type: gpu()} if gpu else {})}
def set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if device.type in ("cuda", "mps") and state.get(device.type) is not None:
        setter = {"cuda": torch.cuda.set_rng_state_all, "mps": torch.mps.set_rng_state}[device.type]
        setter(state[device.type])
class EpochLog:
    """An epoch's progress bar, Ctrl-C, .seconds, and a NaN check every 25 steps (a GPU sync)."""
    def __init__(self, epoch, epochs, n_images, losses, last):
        self.epoch, self.losses, self.left, self.t0 = epoch, losses, n_images, time.time()
        self.kept = f"ckpt.pt holds epoch {last}: --resume continues it" if last else \
            "no checkpoint was written"
        self.bar = tqdm(total=n_images, desc=f"epoch {epoch}/{epochs}", unit="img", unit_scale=True)
    def __enter__(self):
        return self
    def step(self, n_images):
        self.bar.update(n_images)
        self.left -= n_images  # counted here: a disabled bar (TQDM_DISABLE) counts nothing
        if ctrl_c_pressed:  # a Ctrl-C that Python dropped (see on_ctrl_c) still stops the run here
            raise KeyboardInterrupt
        if len(self.losses) % 25 == 0 or self.left <= 0:  # every 25 steps, and at the epoch's end
            losses = torch.stack(self.losses)
            bad = (~torch.isfinite(losses)).nonzero()
            if len(bad):
                self.bar.close()  # else the bar redraws itself after the error line
                die(f"the loss is {losses[bad[0]].item()} at epoch {self.epoch}, step "
                    f"{bad[0].item() + 1}: training stopped; {self.kept} (a lower --lr may help)")
            self.bar.set_postfix(loss=f"{losses[-25:].mean().item():.4f}")
    def __exit__(self, error, *_):
        self.bar.close()  # also on Ctrl-C, before the one-line message (not after it)
        self.seconds = time.time() - self.t0
        if error is not None and issubclass(error, KeyboardInterrupt):
            die(f"interrupted in epoch {self.epoch}; {self.kept}", 130)
# --- shared: checkpoints ---
def open_run(args, given, script, train_keys):
    """ckpt.pt's path, and for --resume or --sample-only (--ckpt implies it) the checkpoint
    (--ckpt, else ckpt.pt; None for a new run). The run takes its training flags: for --resume,
    one given with another value is an error; for sampling, a given --seed draws other noise."""
    if args.ckpt and args.resume:
        die("--ckpt is for sampling (it implies --sample-only); --resume continues OUT_DIR/ckpt.pt")
    args.sample_only = args.sample_only or bool(args.ckpt)
    ckpt_path = prepare_out_dir(args.out_dir, args.resume or args.sample_only)
    path = args.ckpt or ckpt_path
    if not (args.resume or args.sample_only):
        return ckpt_path, None
    if not os.path.isfile(path):
        die(f"no checkpoint at {path}: train first (without --resume / --sample-only)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        stored, config = ckpt["script"], ckpt["config"]
    except Exception as e:
        die(f"{path} is not a readable checkpoint ({type(e).__name__}); delete it or use another "
            f"--out-dir")
    if stored != script:
        die(f"{path} was written by {stored}.py, not {script}.py; use another --out-dir")
    if args.resume and "opt" not in ckpt:  # a shipped file: EMA weights only, no optimizer state
        die(f"{path} holds sampling weights only: sample from it with --ckpt, not --resume")
    for k in train_keys:
        if args.sample_only and k == "seed" and k in given:  # sampling: the seed picks the noise
            continue
        if k in given and k in config and getattr(args, k) != config[k]:
            flag = "--" + k.replace("_", "-")
            die(f"{path} was trained with {flag} {config[k]}, you gave {flag} {getattr(args, k)}: "
                f"drop the flag to continue that run, or use another --out-dir")
        setattr(args, k, config.get(k, getattr(args, k)))
    args.epochs = args.epochs if "epochs" in given else max(config["epochs"], ckpt["epoch"])
    if args.resume and config.get("lr_decay", 1) != 1 and args.epochs != config["epochs"]:
        die(f"{path} decays its lr over --epochs {config['epochs']}: resume it with those, or use "
            f"another --out-dir")  # its lr curve would change
    print(f"loaded {path}: {ckpt['epoch']} epochs done")
    if "about" in ckpt:  # a shipped file (pretrained/) says how it was made and what it scores
        print("\n".join(f"  {k}: {v}" for k, v in ckpt["about"].items()))
    return ckpt_path, ckpt
def restore_run(ckpt, model, ema, opt, device, out_dir):
    """The run so far (epochs, losses, grids); the weights, optimizer and RNG put back."""
    run = {"epoch": 0, "loss_history": torch.zeros(0), "snapshots": {}}
    if ckpt is None:
        return run
    try:
        ema.load_state_dict(ckpt["ema"])
        if "opt" in ckpt:  # a training checkpoint; a shipped file holds the EMA weights only
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            set_rng_state(ckpt["rng"], device)
    except (KeyError, RuntimeError, ValueError) as e:
        die(f"the checkpoint for {out_dir} does not fit this model ({type(e).__name__}); "
            f"use another --out-dir")
    snap_path = os.path.join(out_dir, "snapshots.pt")
    grids = torch.load(snap_path, weights_only=True)["grids"] if os.path.exists(snap_path) else {}
    run.update(epoch=ckpt["epoch"], loss_history=ckpt["loss_history"])
    run["snapshots"] = {e: g for e, g in grids.items() if e <= run["epoch"]}
    return run
def save_run(run, model, ema, opt, args, device, path, script):
    """The checkpoint: weights, EMA, optimizer, RNG, loss history and the flags that made them."""
    save_atomic({"script": script, "config": vars(args), "epoch": run["epoch"],
                 "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                 "loss_history": run["loss_history"], "rng": rng_state(device)}, path)
# --- shared: snapshots ---
def save_snapshot(run, epoch, x, y, out_dir, row_labels, title):
    """An epoch's grid of samples x: a PNG, and in snapshots.pt (make_gif.py --progress)."""
    run["snapshots"][epoch] = to_uint8(x).cpu()
    save_grid(x, os.path.join(out_dir, f"samples_epoch{epoch:03d}.png"), 8, title, row_labels)
    save_atomic({"grids": run["snapshots"], "y": None if y is None else y.cpu()},
                os.path.join(out_dir, "snapshots.pt"))
# --- shared: image grid ---
def image_grid(x01, nrow, pad=2):
    """torchvision's make_grid(x01, nrow, pad, pad_value=1)[0], without importing it: (H', W')."""
    n, _, h, w = x01.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    blank = torch.ones(rows * cols - n, h, w)                   # blank cells end the last row
    cells = F.pad(torch.cat([x01[:, 0].float().cpu(), blank]), (pad, 0, pad, 0), value=1)
    grid = cells.view(rows, cols, h + pad, w + pad).transpose(1, 2)  # a border above and left
    grid = grid.reshape(rows * (h + pad), cols * (w + pad))
    return F.pad(grid, (0, pad, 0, pad), value=1)  # and below and right of the whole grid
# --- shared: grids ---
def save_grid(x, path, nrow, title, row_labels=None, col_labels=None):
    """x (N, 1, 28, 28), clamped to [0, 1] -> a PNG of a grid, nrow images a row, labelled."""
    rows = math.ceil(len(x) / nrow)
    ax = Figure(figsize=(0.4 * nrow + 0.6, 0.4 * rows + 0.5)).subplots()
    ax.imshow(image_grid(x.float().cpu().clamp(0, 1), nrow).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([30 * c + 15 for c in range(nrow)] if col_labels else [], col_labels or [],
                  fontsize=7)
    ax.set_yticks([30 * r + 15 for r in range(rows)] if row_labels else [], row_labels or [],
                  fontsize=8)
    ax.figure.savefig(path, dpi=100, bbox_inches="tight")
# --- shared: uint8 ---
def to_uint8(x):
    """x in [0, 1] (clamped: samples overshoot) -> uint8 0..255, the frames of the .pt files."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)
# --- shared: figures inline ---
def show(*paths):
    """In a notebook, these images (PNG, GIF) below the cell; in a terminal nothing (files only)."""
    if in_notebook():
        from IPython.display import Image, display  # a notebook's kernel runs on IPython
        for path in paths:
            display(Image(filename=path))
# --- shared: entry point ---
def command(main):
    """main(argv) as a command (terminal, notebook, test): Ctrl-C (the stop button) and a failed
    write are one line too; the SIGINT handler and sys.unraisablehook are put back after."""
    def run(argv=None):
        global ctrl_c_pressed
        before = signal.getsignal(signal.SIGINT), sys.unraisablehook
        ctrl_c_pressed = False
        signal.signal(signal.SIGINT, on_ctrl_c)
        try:
            return main(argv)
        except KeyboardInterrupt:
            die("interrupted: the files written are whole", 130)
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            die(f"{e.strerror or e}{where}: stopped; the files written are whole")
        finally:
            signal.signal(signal.SIGINT, before[0])
            quiet = ctrl_c_pressed and not in_notebook()  # what Ctrl-C cut off dies at exit, quiet
            ctrl_c_pressed, sys.unraisablehook = False, sys.unraisablehook if quiet else before[1]
    return run
ctrl_c_pressed = False  # set by on_ctrl_c, read by EpochLog
def on_ctrl_c(signum, frame):
    """KeyboardInterrupt, kept for EpochLog (lost if raised in a __del__); __del__ errors unshown"""
    global ctrl_c_pressed
    ctrl_c_pressed, sys.unraisablehook = True, lambda unraisable: None
    raise KeyboardInterrupt
main = command(main)  # main(argv), argv a list of flags: main(["--epochs", "3"]) in a notebook
if __name__ == "__main__":
    main()
