r"""Class-conditioned flow matching on MNIST with classifier-free guidance: ask for a digit, get it.

Papers: Lipman et al. 2022, "Flow Matching for Generative Modeling", https://arxiv.org/abs/2210.02747
        Liu, Gong, Liu 2022, "Flow Straight and Fast" (rectified flow), https://arxiv.org/abs/2209.03003
        Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", https://arxiv.org/abs/2207.12598
        Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval ...", https://arxiv.org/abs/2404.07724

    python flow_class.py                                  # train 15 epochs, sample every digit, plot
    python flow_class.py --data-dir ~/mnist               # MNIST already on disk (a folder of IDX files)
    python flow_class.py --resume                         # continue a killed run from its last epoch
    python flow_class.py --sample-only --sampler heun --steps 10 --n-samples 1000  # 1,000 digits for evaluate.py
    python flow_class.py --ckpt pretrained/flow_class.pt --digits 7   # sevens from the shipped weights

Math (t in [0, 1], continuous; x_0 is noise, x_1 a digit of label y: the OPPOSITE of DDPM, where x_0 is the digit):
    interpolate      x_t = (1 - t) x_0 + t x_1,  x_0 ~ N(0, I): a straight line from the noise to the digit
    target_velocity  u = d x_t / dt = x_1 - x_0, the same at every t of one line
    flow_loss_cfg    || u - u_theta(x_t, t, y') ||^2,  t ~ U[0, 1),  y' = y, or "no label" for 10 % of samples
    guidance         u = u_u + w (u_c - u_u), u_c = u_theta(x_t, t, y), u_u = u_theta(x_t, t, none); w = 0: u_u, 1: u_c.
                     (1 + w') u_c - w' u_u is the same with w' = w - 1; the course's gamma is w (5). Guidance interval:
                     w > 1 only from t = --guide-from (0.6) on, before it min(w, 1); 0: every step, as the course.
    euler_step       x_{t+dt} = x_t + dt u_theta(x_t, t)                      1 network evaluation (NFE) per step
    heun_step        x' = x_t + dt u_theta(x_t, t),  x_{t+dt} = x_t + dt (u_theta(x_t, t) + u_theta(x', t+dt)) / 2:
                     predictor an Euler step, corrector the mean of the slopes at both ends; 2 NFE per step
    flow_sample      dx/dt = u_theta(x, t) from x_0 ~ N(0, I) at t = 0 to the digit at t = 1, --steps equal steps;
                     Heun's last step is Euler's: no corrector at t = 1, where u jumps (Karras et al. 2022)
    clip_x1          u' = (clamp(x_t + (1 - t) u, 0, 1) - x_t) / (1 - t): aim at the predicted digit, clipped
Conventions:
    t: training draws t ~ U[0, 1); sampling visits t = 0, 1/steps, ..., 1 and returns x at t = 1. DDPM's t counts
    noise, ours signal: our x_t is DDPM's x at noise level 1 - t, mixed linearly (signal t, noise 1 - t where DDPM
    has sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)). u predicts both ends: x_1 = x_t + (1 - t) u,  x_0 = x_t - t u.
    The network is the DDPM scripts' UNet and time_embedding, fed --time-scale * t = 1000 t: the embedding's
    frequencies are made for DDPM's t in 1..1000; fed t in [0, 1] itself, most features would barely change.
    pixels: uint8 0..255 -> x = p / 255 in [0, 1] (as CS180); saved in [0, 1] (samples clamped) or uint8. x_t is never
    clipped: clip_x1 (--clip, default, as DDPM clips x_0) changes only where a step aims; --no-clip follows u as is.
    NFE (network evaluations per sample; printed, in samples.pt): Euler 1 per step, Heun 2 (the last 1); on 2B inputs.
Course (CS180 Fall 2025, Project 5B, "Flow Matching from Scratch"): its own UNet (t, one-hot class through MLPs),
    p_uncond = 0.1, gamma = 5, 4 of each digit after epochs 1, 5, 10. Ours: the DDPM scripts' UNet, AdamW at 1e-3, batch
    128, an EMA (only the method differs from ddpm_class.py), Euler 50; 15 epochs: 52 min on 2 CPU cores (20: over 1 h).
Writes to --out-dir (default runs/flow_class): ckpt.pt (every epoch, atomically), samples_epochNNN.png (epochs 1, 5,
    10, 15, last), samples.png, strip.png, loss.png, guidance.png, trajectory.pt, snapshots.pt, samples.pt (--n-samples).
What you can delete for an assignment: the plumbing tail keeps runs safe, not the method. Without --resume and
    --sample-only drop the checkpoint checks and RNG state; without FLOP counting drop train_flops_per_image; with the
    four IDX files in one folder drop the Kaggle layouts in find_idx_files; with Euler only drop heun_step (and "heun"
    from --sampler and count_nfe); without --clip drop clip_x1.
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

import matplotlib
matplotlib.use("Agg")  # no display needed: we only write PNG files
import matplotlib.pyplot as plt
from tqdm import tqdm

SCRIPT = "flow_class"
SNAPSHOT_EPOCHS = (1, 5, 10, 15)      # sample grids saved after these epochs (if within the run) and the last
GUIDANCE_SWEEP = (0, 1, 3, 5, 10)     # the w values of guidance.png
NULL = 10                              # the "no label" class (digits are 0..9): u_u = u_theta(x_t, t, NULL)
GRID_ROWS = 8                          # samples.png and the snapshots: 8 rows of 8 digits
STEPS = 50                             # --steps default (the course's num_ts), and the Euler steps of the snapshots
TRAIN_KEYS = ("limit", "channels", "time_scale", "batch_size", "lr", "ema_decay", "p_uncond", "seed")


# --- config ------------------------------------------------------------------------------------
def get_args(argv=None):
    ap = argparse.ArgumentParser(description="Class-conditioned flow matching on MNIST with classifier-free guidance")
    g = ap.add_argument_group("data")
    g.add_argument("--data-dir", default="./data", help="MNIST folder (downloaded here if missing)")
    g.add_argument("--limit", type=number(int, 0), default=0, help="train on the first N digits only (0: all)")
    g = ap.add_argument_group("model")
    g.add_argument("--channels", type=number(int, 8), nargs=3, default=[16, 64, 64], help="UNet widths at 28, 14, 7 px")
    g = ap.add_argument_group("flow")
    g.add_argument("--time-scale", type=number(float, 0, lo_included=False), default=1000.0,
                   help="the network sees this times t, t in [0, 1]")
    g = ap.add_argument_group("training")
    g.add_argument("--epochs", type=number(int, 0), default=15, help="passes over the 60,000 training digits")
    g.add_argument("--batch-size", type=number(int, 1), default=128, help="digits per optimizer step")
    g.add_argument("--lr", type=number(float, 0, lo_included=False), default=1e-3, help="AdamW learning rate")
    g.add_argument("--ema-decay", type=number(float, 0, 1), default=0.999, help="EMA of the weights, used to sample")
    g.add_argument("--p-uncond", type=number(float, 0, 1), default=0.1, help="fraction of labels dropped in training")
    g = ap.add_argument_group("sampling")
    g.add_argument("--sampler", choices=["euler", "heun"], default="euler", help="ODE solver of the final samples")
    g.add_argument("--steps", type=number(int, 1), default=STEPS,
                   help="equal steps from t = 0 to 1 (network evaluations: Euler 1 per step, Heun 2, its last 1)")
    g.add_argument("--clip", action=argparse.BooleanOptionalAction, default=True,
                   help="aim each step at the predicted digit x_1 clipped to [0, 1] (clip_x1)")
    g.add_argument("--n-samples", type=number(int, 0), default=0, help="also sample N digits into samples.pt")
    g.add_argument("--guidance", type=number(float, -math.inf), default=5.0, help="w in u_u + w (u_c - u_u)")
    g.add_argument("--guide-from", type=number(float, 0, 1), default=0.6, help="w > 1 from this t on (0: every t)")
    g.add_argument("--digits", type=int, choices=range(10), nargs="+", default=list(range(10)), help="digits to sample")
    g = ap.add_argument_group("run")
    g.add_argument("--out-dir", default=f"runs/{SCRIPT}", help="checkpoint, plots and samples go here")
    g.add_argument("--resume", action="store_true", help="continue training from ckpt.pt")
    g.add_argument("--sample-only", action="store_true", help="load ckpt.pt and sample, no training")
    g.add_argument("--ckpt", default="", help="sample from these weights instead of OUT_DIR/ckpt.pt (a file "
                                              "in pretrained/ or another run's ckpt.pt); implies --sample-only")
    g.add_argument("--seed", type=number(int, 0), default=0, help="same seed, same run (on the same device)")
    g.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), or cpu, cuda, mps")
    args = ap.parse_args(argv)
    if args.ckpt and args.resume:
        ap.error("--ckpt is for sampling (it implies --sample-only); --resume continues OUT_DIR/ckpt.pt")
    args.sample_only = args.sample_only or bool(args.ckpt)
    if any(c % 8 for c in args.channels):
        ap.error(f"--channels must be multiples of 8 (GroupNorm uses 8 groups), got {args.channels}")
    args.nfe = count_nfe(args.sampler, args.steps)  # network evaluations per sample, kept in samples.pt's config
    return args, typed_flags(ap, argv)  # typed: the flags given, which --resume checks against the checkpoint


# --- shared: flow path ---
def interpolate(x0, x1, t):
    """x_t = (1 - t) x_0 + t x_1 for a batch of t (B,): the noise x_0 at t = 0, the digit x_1 at t = 1."""
    t = t.view(-1, 1, 1, 1)
    return (1 - t) * x0 + t * x1


def target_velocity(x0, x1):
    """u = d x_t / dt = x_1 - x_0: constant along each straight line, so it needs no t."""
    return x1 - x0


def velocity(model, x_t, t, scale, y=None):
    """u_theta(x_t, t), or u_theta(x_t, t, y), for a batch of t (B,) in [0, 1]: the UNet fed scale * t, so that
    its sinusoidal embedding sees the range of DDPM's integer steps (scale = --time-scale, 1000)."""
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
        self.norm, self.qkv, self.proj = nn.GroupNorm(8, c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)
        self.heads = heads

    def forward(self, x):                             # x (B, C, H, W)
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)     # each (B, heads, HW, C/heads)
        h = F.scaled_dot_product_attention(q, k, v)   # softmax(q k^T / sqrt(d)) v
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


# --- shared: UNet ---
class UNet(nn.Module):
    """The network: eps_theta(x_t, t) for DDPM (u_theta for flow matching), or with n_classes also given the
    label y. 28x28 -> 14x14 -> 7x7 (+ attention) -> back up; the skips are added, not concatenated
    (1.14x faster training, measured in RESULTS.md). y has a learned embedding added to the time embedding."""

    def __init__(self, channels=(16, 64, 64), emb_dim=128, n_classes=0):
        super().__init__()
        c1, c2, c3 = channels
        self.emb_dim = emb_dim
        self.t_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.y_emb = nn.Embedding(n_classes, emb_dim) if n_classes else None
        self.inp = nn.Conv2d(1, c1, 3, padding=1)
        self.down1, self.pool1 = ResBlock(c1, c1, emb_dim), nn.Conv2d(c1, c1, 3, stride=2, padding=1)
        self.down2, self.pool2 = ResBlock(c1, c2, emb_dim), nn.Conv2d(c2, c2, 3, stride=2, padding=1)
        self.down3 = ResBlock(c2, c3, emb_dim)
        self.mid1, self.attn, self.mid2 = ResBlock(c3, c3, emb_dim), SelfAttention(c3), ResBlock(c3, c3, emb_dim)
        self.up3 = ResBlock(c3, c2, emb_dim)
        self.unpool2, self.up2 = nn.ConvTranspose2d(c2, c2, 4, 2, 1), ResBlock(c2, c1, emb_dim)
        self.unpool1, self.up1 = nn.ConvTranspose2d(c1, c1, 4, 2, 1), ResBlock(c1, c1, emb_dim)
        self.out = nn.Sequential(nn.GroupNorm(8, c1), nn.SiLU(), nn.Conv2d(c1, 1, 3, padding=1))

    def forward(self, x, t, y=None):                              # x (B, 1, 28, 28), t (B,), y (B,) or None
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


# --- guidance ----------------------------------------------------------------------------------
def guided_velocity_fn(model, y, w, scale, guide_from=0.0):
    """u(x_t, t) = u_u + w (u_c - u_u) for the digits y (B,): one forward pass on 2B inputs.
    Guidance interval: before t = guide_from, w is at most 1, so w = 5 follows u_c alone there (one pass on B
    inputs). Early on, x_t is mostly noise and extrapolating past u_c pushes every sample of a digit toward one
    typical shape; later it only sharpens a digit already chosen. Measured (RESULTS.md): w = 5, Heun 10, FID
    6.71 guided everywhere, 1.85 from t = 0.6, both with 99.8 % or more of the digits the one asked for."""
    y2 = torch.cat([y, torch.full_like(y, NULL)])                 # (2B,): labels, then "no label"

    def u_fn(x, t):
        w_t = w if t >= guide_from else min(w, 1.0)
        if w_t in (0, 1):                                         # u_u or u_c alone: one pass on B inputs
            t1 = torch.full((len(x),), t, device=x.device)
            return velocity(model, x, t1, scale, y2[len(y):] if w_t == 0 else y)
        t2 = torch.full((2 * len(x),), t, device=x.device)
        u_c, u_u = velocity(model, torch.cat([x, x]), t2, scale, y2).chunk(2)
        return u_u + w_t * (u_c - u_u)
    return u_fn


# --- shared: flow sampler ---
def count_nfe(sampler, steps):
    """Network evaluations (NFE) per sample: the cost of a sampler, whatever its number of steps. Euler 1 per
    step; Heun 2 per step, except the last, an Euler step (see flow_sample)."""
    return steps if sampler == "euler" else 2 * steps - 1


def flow_timesteps(steps):
    """The t the sampler visits, (steps + 1,) float: evenly spaced from 0 (the noise) to 1 (the digit)."""
    return torch.linspace(0, 1, steps + 1)


def euler_step(x, dt, u):
    """x_{t+dt} = x_t + dt u(x_t, t): a straight line along the velocity at the start of the step.
    First order: the error at t = 1 shrinks like 1 / steps."""
    return x + dt * u


def heun_step(u_fn, x, t, dt, u):
    """Heun's method (the explicit trapezoid rule), given u = u(x_t, t):
        predictor  x' = x_t + dt u(x_t, t)                              (an Euler step)
        corrector  x_{t+dt} = x_t + dt (u(x_t, t) + u(x', t + dt)) / 2    (the mean slope of both ends)
    Second order: the error at t = 1 shrinks like 1 / steps^2, for one more network evaluation per step (2)."""
    x_pred = euler_step(x, dt, u)
    return x + dt * (u + u_fn(x_pred, t + dt)) / 2


def clip_x1(u_fn):
    """u_fn with its x_1 prediction clipped to the data range [0, 1] (the flow form of DDPM's clip_denoised):
        x1_hat = clamp(x_t + (1 - t) u, 0, 1),   u' = (x1_hat - x_t) / (1 - t)
    The same u where the predicted digit is in range; elsewhere the step aims at the nearest valid pixel
    instead of past it, which guidance (w > 1 extrapolates) would otherwise do. At t = 1 there is nothing left
    to predict and u is returned as it is. For data in [0, 1] only: it changes the ODE, so the exact-velocity
    tests run the sampler without it."""
    def u_clipped(x, t):
        u = u_fn(x, t)
        if t >= 1:
            return u
        return ((x + (1 - t) * u).clamp(0, 1) - x) / (1 - t)
    return u_clipped


@torch.no_grad()
def flow_sample(u_fn, x_0, sampler, steps):
    """Solve dx/dt = u(x, t) from the noise x_0 at t = 0 to the digit x_1 at t = 1 in `steps` equal Euler or Heun
    steps; u_fn(x, t) -> velocity, t a float in [0, 1] (wrap it in clip_x1 to clip; to_uint8 clamps the frames,
    not x). Returns x_1 (B, 1, 28, 28), the t visited (steps + 1,) ascending from 0.0 to 1.0, and every x_t as
    uint8 frames (steps + 1, B, 1, 28, 28), for plots and GIFs.
    Heun's last step is an Euler step, as in Karras et al. 2022 (EDM, Algorithm 1; their sigma = 0 is our t = 1):
    for digits the velocity jumps at t = 1. Just before, u = (x_1 - x_t) / (1 - t) points at a digit; at t = 1 the
    noise is gone, and the best guess of u = x_1 - x_0 is x_t - E[x_0] = x_t, the image itself, which a corrector
    there would average in (for the exact u of a point mass it is 0 / 0). Measured, 1,000 unguided digits: FID 17.6
    with that corrector at 5 steps, 3.1 without (RESULTS.md)."""
    ts = flow_timesteps(steps)
    x, frames = x_0, [to_uint8(x_0).cpu()]
    for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist()):
        u = u_fn(x, t)
        if sampler == "heun" and t_next < 1:
            x = heun_step(u_fn, x, t, t_next - t, u)
        else:                                       # Euler, and Heun's last step: no evaluation at t = 1
            x = euler_step(x, t_next - t, u)
        frames.append(to_uint8(x).cpu())
    return x, ts, torch.stack(frames)


# --- training step: the flow loss with labels dropped for guidance ------------------------------
def flow_loss_cfg(model, x1, y, scale, p_uncond):
    """|| u - u_theta(x_t, t, y') ||^2 for digits x_1 (B, 1, 28, 28) in [0, 1] with labels y (B,): x_0 ~ N(0, I),
    t ~ U[0, 1), u = x_1 - x_0; y' = NULL ("no label") for a fraction p_uncond of the samples, drawn per sample,
    so that one network learns both u(x_t, t, y) and u(x_t, t) for classifier-free guidance."""
    x0 = torch.randn_like(x1)
    t = torch.rand(len(x1), device=x1.device)                     # t ~ U[0, 1)
    drop = torch.rand(len(y), device=y.device) < p_uncond         # per sample, not per batch
    y = torch.where(drop, torch.full_like(y, NULL), y)
    return F.mse_loss(velocity(model, interpolate(x0, x1, t), t, scale, y), target_velocity(x0, x1))


# --- shared: EMA ---
@torch.no_grad()
def ema_update(ema, model, decay, step):
    """theta_ema <- d theta_ema + (1 - d) theta, with d = min(decay, (1 + step) / (10 + step)):
    the warm-up lets the EMA forget the random initial weights within the first epoch."""
    d = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - d)


# --- main ---------------------------------------------------------------------------------------
def main(argv=None):
    # setup: flags, device, output folder, model (and the checkpoint, to continue or sample)
    args, typed = get_args(argv)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    continuing = args.resume or args.sample_only
    ckpt_path = prepare_out_dir(args.out_dir, continuing)
    ckpt = load_checkpoint(args.ckpt or ckpt_path, args, typed, SCRIPT, TRAIN_KEYS) if continuing else None
    print(vars(args))
    print(f"device {device}  threads {torch.get_num_threads()}  the network sees {args.time_scale:g} t, t in [0, 1]")
    model = UNet(args.channels, n_classes=11).to(device, memory_format=torch.channels_last)  # channels_last: 1.2x on CPU
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    print(f"UNet {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, channels {args.channels}")
    run = restore_run(ckpt, model, ema, opt, device, args.out_dir)

    # the grid: 8 rows of 8, a row per digit (8 rows of one digit, 4 each of two, ...), the same starting
    # noise x_0 after every epoch, from its own generator so sampling never touches the training RNG
    rows_per_digit = max(1, GRID_ROWS // len(args.digits))
    y_grid = torch.tensor(args.digits, device=device).repeat_interleave(8 * rows_per_digit)  # (8 * rows,)
    row_labels = [str(d) for d in args.digits for _ in range(rows_per_digit)]
    x_0 = torch.randn(len(y_grid), 1, 28, 28, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)

    def u_guided(y, w):  # the velocity the sampler follows: guided by w, its x_1 prediction clipped with --clip
        u_fn = guided_velocity_fn(ema, y, w, args.time_scale, args.guide_from)
        return clip_x1(u_fn) if args.clip else u_fn
    u_grid = u_guided(y_grid, args.guidance)
    w_label = f"w={args.guidance:g}" + (f" from t={args.guide_from:g}" if args.guide_from and args.guidance > 1 else "")

    # train: one epoch at a time; a grid after the snapshot epochs; a checkpoint after every epoch
    if not args.sample_only and run["epoch"] < args.epochs:
        images, labels = load_mnist(args.data_dir, train=True, limit=args.limit)
        x_all, y_all = to_model_range(images).to(device), labels.to(device)  # the whole set on the device
        loss_fn = lambda model, x1, y: flow_loss_cfg(model, x1, y, args.time_scale, args.p_uncond)  # noqa: E731
        flops = train_flops_per_image(model, loss_fn, x_all[:8], y_all[:8], device)
        print(f"training on {len(x_all)} digits, {flops / 1e9:.3f} GFLOP per image per training step")
        train_s, first = 0.0, run["epoch"] + 1
        for epoch in range(first, args.epochs + 1):
            train_s += train_epoch(model, ema, opt, loss_fn, x_all, y_all, args, epoch, run)
            if epoch in SNAPSHOT_EPOCHS or epoch == args.epochs:  # Euler 50 on the EMA weights, as the course
                x1 = flow_sample(u_grid, x_0, "euler", STEPS)[0]
                save_snapshot(run, epoch, x1, y_grid, args.out_dir, row_labels,
                              f"{SCRIPT}: epoch {epoch} (EMA, {w_label}, Euler {STEPS}, NFE {STEPS})")
            save_run(run, model, ema, opt, args, device, ckpt_path, SCRIPT)
        report_speed(train_s, args.epochs - first + 1, len(x_all), flops)
    if len(run["loss_history"]):
        plot_loss(run["loss_history"], os.path.join(args.out_dir, "loss.png"), f"{SCRIPT}: training loss")

    # figures: the final grid with the chosen sampler, its path from noise to digits, and the guidance sweep
    t0 = time.time()
    x1, ts, frames = flow_sample(u_grid, x_0, args.sampler, args.steps)
    label = f"{args.sampler.capitalize()} {args.steps} steps, NFE {args.nfe}, {w_label}" + \
        (", x_1 clipped" if args.clip else "")
    print(f"sample: {len(x1)} digits, {label}, in {time.time() - t0:.1f} s")
    save_grid(to_unit_range(x1), os.path.join(args.out_dir, "samples.png"), 8, f"{SCRIPT}: EMA, {label}", row_labels)
    first_of_row = frames[:, ::8]                                 # (steps + 1, rows, 1, 28, 28): one digit per row
    plot_strip(first_of_row, ts, os.path.join(args.out_dir, "strip.png"), f"{SCRIPT}: noise to digits ({label})",
               row_labels)
    save_atomic({"frames": frames, "t": ts, "y": y_grid.cpu(), "nrow": 8}, os.path.join(args.out_dir, "trajectory.pt"))
    every_other = slice(None, None, 2)                            # 4 digits per row, the same noise for each w
    sweep = {w: to_unit_range(flow_sample(u_guided(y_grid[every_other], w), x_0[every_other], args.sampler,
                                          args.steps)[0]).cpu() for w in GUIDANCE_SWEEP}
    plot_guidance_sweep(sweep, os.path.join(args.out_dir, "guidance.png"), row_labels, 4,
                        f"{SCRIPT}: u_u + w (u_c - u_u), w > 1 from t = {args.guide_from:g}, EMA, "
                        f"{args.sampler.capitalize()} {args.steps} steps, NFE {args.nfe}")

    # samples: N digits for evaluate.py, the requested digits in turn (0, 1, ..., 9, 0, 1, ...)
    if args.n_samples:
        gen = torch.Generator().manual_seed(args.seed + 2)        # their starting noise, drawn on the CPU
        t0, xs = time.time(), []
        y = torch.tensor(args.digits, device=device).repeat(args.n_samples // len(args.digits) + 1)[:args.n_samples]
        for y_chunk in y.split(250):  # 250 digits = forward batches of 500 (with and without the label)
            noise = torch.randn(len(y_chunk), 1, 28, 28, generator=gen).to(device)
            x1 = flow_sample(u_guided(y_chunk, args.guidance), noise, args.sampler, args.steps)[0]
            xs.append(to_unit_range(x1).cpu())
        save_samples(torch.cat(xs), y.cpu(), args, run, os.path.join(args.out_dir, "samples.pt"))
        print(f"sample: {args.n_samples} digits, {label}, in {time.time() - t0:.1f} s -> samples.pt")
    print(f"outputs in {args.out_dir}/: " + ", ".join(sorted(os.listdir(args.out_dir))))


# --- plot: guidance sweep ----------------------------------------------------------------------
def plot_guidance_sweep(grids, path, row_labels, ncol, title):
    """One panel per guidance scale w: the same starting noise and digits in every panel."""
    fig, axes = plt.subplots(1, len(grids), figsize=(1.9 * len(grids), 0.45 * len(row_labels) + 0.6),
                             layout="constrained")  # keeps the title next to the panels
    for ax, (w, x01) in zip(axes, grids.items()):
        grid = image_grid(x01, ncol)  # (H, W) with white gaps
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"w = {w}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([30 * r + 15 for r in range(len(row_labels))], row_labels, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# =================================================================================================
# Plumbing: identical in every script, skip on a first read. Flag checks, errors, device, MNIST
# files, checkpoints and resume, RNG state, the training loop's bookkeeping, plots.
# =================================================================================================
# --- shared: flag types ---
def number(kind, lo, hi=math.inf, lo_included=True):
    """argparse type: a finite int or float in [lo, hi) ((lo, hi) if not lo_included). "--lr nan",
    "--epochs -1" or "--guidance inf" stop the parser with one line that names the flag."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if value < lo or (value == lo and not lo_included) or value >= hi:
            raise argparse.ArgumentTypeError(f"{text} is outside {'[' if lo_included else '('}{lo}, {hi})")
        return value
    return parse


# --- shared: typed flags ---
def typed_flags(ap, argv):
    """The flags the user gave (their dests), whether or not the value equals the default."""
    defaults = {a.dest: a.default for a in ap._actions}
    for a in ap._actions:
        a.default = argparse.SUPPRESS  # a flag that was not given then leaves no attribute
    try:
        return set(vars(ap.parse_args(argv)))
    finally:
        for a in ap._actions:
            a.default = defaults[a.dest]


# --- shared: errors ---
def die(msg, code=2):
    """A user error: one clear line on stderr, no traceback."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


# --- shared: device ---
def pick_device(name):
    """auto: cuda, then Apple's mps, then cpu. A device this machine does not have is a one-line error."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        die(f"unknown --device {name!r} (use auto, cpu, cuda, cuda:1 or mps)")
    if device.type not in ("cpu", "cuda", "mps"):
        die(f"--device {name}: this script runs on cpu, cuda or mps")
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        die(f"--device {name}: this machine has no such CUDA GPU (use --device auto or cpu)")
    if device.type == "mps" and not mps:
        die(f"--device {name}: Apple's mps is not available here (use --device auto or cpu)")
    return device


# --- shared: data ---
IDX_NAMES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def find_idx_files(data_dir, train):
    """Paths of the raw IDX image and label files, or None. Accepts torchvision's layout
    (DIR/MNIST/raw/train-images-idx3-ubyte), a plain folder of the four files, and the Kaggle
    download (dotted names such as train-images.idx3-ubyte, often inside archive/)."""
    for folder in ("", "MNIST/raw", "raw", "archive"):
        for dotted in (False, True):
            paths = []
            for name in IDX_NAMES[train]:
                name = name.replace("-idx", ".idx") if dotted else name
                path = os.path.join(data_dir, folder, name)
                if os.path.isdir(path):  # Kaggle also ships a folder of the same name around the file
                    path = os.path.join(path, name)
                paths.append(path)
            if all(os.path.isfile(p) for p in paths):
                return paths
    return None


def read_idx(path, ndim):
    """One IDX file as a uint8 tensor (MNIST's format, http://yann.lecun.com/exdb/mnist/): the bytes 0, 0, 8 (uint8)
    and the number of dimensions, each size as a 4-byte big-endian integer, then the values. Read here, not by
    torchvision, whose import adds about 3 s to every start (measured on 2 cores); it is imported to download only."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != bytes([0, 0, 8, ndim]):
        raise ValueError(f"{path} is not an IDX file of {ndim}-d uint8 values")
    sizes = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    values = data[4 + 4 * ndim:]
    if len(values) != math.prod(sizes) or not values:
        raise ValueError(f"{path} holds {len(values)} values where its header says {' x '.join(map(str, sizes))}")
    return torch.frombuffer(bytearray(values), dtype=torch.uint8).view(sizes)


def load_mnist(data_dir, train=True, limit=0):
    """MNIST as uint8 images (N, 28, 28) and int64 labels (N,), read from its IDX files (read_idx);
    the first `limit` digits only if limit > 0."""
    paths = find_idx_files(data_dir, train)
    if paths is None:  # not on disk: download the way torchvision users expect
        try:
            import torchvision  # here, not at the top: only a download needs it, and importing it takes seconds
            torchvision.datasets.MNIST(data_dir, train=train, download=True)
        except Exception as e:  # offline, no permission, ...: say where the files go instead
            die(f"MNIST is not in {data_dir!r} and could not be downloaded ({type(e).__name__}). "
                f"Put the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, or the Kaggle .idx names) "
                f"in {data_dir!r} or pass --data-dir")
        paths = find_idx_files(data_dir, train)
    try:
        images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1).long()
    except Exception as e:
        die(f"cannot read MNIST IDX files {paths}: {e}")
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        die(f"{paths[0]} does not hold 28x28 MNIST digits matching {paths[1]}")
    return (images[:limit], labels[:limit]) if limit else (images, labels)


def to_model_range(images_uint8):
    """uint8 0..255 (N, 28, 28) -> float in [0, 1] (N, 1, 28, 28), the range the model sees."""
    return images_uint8.unsqueeze(1).float().div(255)


# --- shared: saved pixels ---
def to_unit_range(x):
    """Model output -> [0, 1] for saving and plotting: clamped, since samples can overshoot."""
    return x.clamp(0, 1)


def to_uint8(x):
    """[0, 1] -> uint8 0..255, the compact form of trajectory.pt and snapshots.pt."""
    return (to_unit_range(x) * 255).round().to(torch.uint8)


# --- shared: atomic save ---
def save_atomic(obj, path):
    """torch.save into path + '.tmp', flush, fsync, then rename over path: a kill or a full disk
    leaves the previous file whole (never half a new one), and the next step reads either."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, folder gone or read-only, ...
        if os.path.exists(tmp):
            os.remove(tmp)
        die(f"cannot write {path} ({e.strerror or e}); the previous {os.path.basename(path)}, if any, is kept")


# --- shared: out dir ---
def prepare_out_dir(out_dir, continuing):
    """Create --out-dir and check it takes files; returns the checkpoint path. A finished run in it is
    never overwritten by accident: it needs --resume or --sample-only."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, ".write_test")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
    except OSError as e:
        die(f"cannot write to --out-dir {out_dir!r} ({e.strerror or e})")
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    if os.path.exists(ckpt_path) and not continuing:
        die(f"{ckpt_path} exists: pass --resume to continue it, --sample-only to sample, or another --out-dir")
    return ckpt_path


# --- shared: checkpoints ---
def load_checkpoint(path, args, typed, script, train_keys):
    """Read ckpt.pt for --resume or --sample-only. Every training flag the user gave must equal the
    checkpoint's (else a one-line error naming the flag); flags not given take the checkpoint's values,
    so the run continues exactly. --epochs may grow."""
    if not os.path.isfile(path):
        die(f"no checkpoint at {path}: train first (without --resume / --sample-only)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        stored, config = ckpt["script"], ckpt["config"]
    except Exception as e:
        die(f"{path} is not a readable checkpoint ({type(e).__name__}); delete it or use another --out-dir")
    if stored != script:
        die(f"{path} was written by {stored}.py, not {script}.py; use another --out-dir")
    if args.resume and "opt" not in ckpt:  # a shipped file: the EMA weights only, no optimizer to continue
        die(f"{path} holds sampling weights only (no optimizer state): sample from it with --ckpt, not --resume")
    for k in train_keys:
        if k in typed and k in config and getattr(args, k) != config[k]:
            flag = "--" + k.replace("_", "-")
            die(f"{path} was trained with {flag} {config[k]}, you gave {flag} {getattr(args, k)}: "
                f"drop the flag to continue that run, or use another --out-dir")
        setattr(args, k, config.get(k, getattr(args, k)))
    if "epochs" not in typed:
        args.epochs = max(config["epochs"], ckpt["epoch"])
    print(f"loaded {path}: {ckpt['epoch']} epochs done")
    if "about" in ckpt:  # a shipped file (pretrained/) says how it was made and what it scores
        print("\n".join(f"  {k}: {v}" for k, v in ckpt["about"].items()))
    return ckpt


def restore_run(ckpt, model, ema, opt, device, out_dir):
    """The run's state: epochs done, loss history and per-epoch grids, with the weights, the optimizer
    and the RNG put back from the checkpoint (or a fresh run if ckpt is None)."""
    run = {"epoch": 0, "loss_history": torch.zeros(0), "snapshots": {}}
    if ckpt is None:
        return run
    try:
        ema.load_state_dict(ckpt["ema"])
        if "opt" in ckpt:  # a training checkpoint; a shipped file (pretrained/) holds the EMA weights only
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            set_rng_state(ckpt["rng"], device)
    except (KeyError, RuntimeError, ValueError) as e:
        die(f"the checkpoint for {out_dir} does not fit this model ({type(e).__name__}); use another --out-dir")
    run.update(epoch=ckpt["epoch"], loss_history=ckpt["loss_history"])
    snap_path = os.path.join(out_dir, "snapshots.pt")
    if os.path.exists(snap_path):
        run["snapshots"] = {e: g for e, g in torch.load(snap_path, weights_only=True)["grids"].items() if e <= run["epoch"]}
    return run


def save_run(run, model, ema, opt, args, device, path, script):
    """The checkpoint: weights, EMA, optimizer, RNG, loss history and the flags that made them."""
    save_atomic({"script": script, "config": vars(args), "epoch": run["epoch"], "model": model.state_dict(),
                 "ema": ema.state_dict(), "opt": opt.state_dict(), "loss_history": run["loss_history"],
                 "rng": rng_state(device)}, path)


# --- shared: RNG state ---
def rng_state(device):
    """The generators a resumed run must continue: the CPU's, and the GPU's (cuda or mps) in use."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    if device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])
    if device.type == "mps" and state.get("mps") is not None:
        torch.mps.set_rng_state(state["mps"])


# --- shared: training loop ---
def train_epoch(model, ema, opt, loss_fn, x_all, y_all, args, epoch, run):
    """One pass over the data in shuffled batches (randperm on the device, no DataLoader); loss_fn(model,
    x0, y) is the loss of a batch (y is None without labels). Appends the per-step losses to
    run["loss_history"], sets run["epoch"] and returns the seconds it took. The only host syncs are the
    progress-bar updates, every 25 steps: a non-finite loss stops the run there, before any checkpoint."""
    model.train()
    t0, N, B = time.time(), len(x_all), args.batch_size
    perm = torch.randperm(N, device=x_all.device)
    losses, step0 = [], len(run["loss_history"])
    bar = tqdm(total=N, desc=f"epoch {epoch}/{args.epochs}", unit="img", unit_scale=True, leave=True)
    try:
        for i in range(0, N, B):
            idx = perm[i:i + B]
            loss = loss_fn(model, x_all[idx], None if y_all is None else y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema_update(ema, model, args.ema_decay, step0 + len(losses))
            losses.append(loss.detach())
            bar.update(len(idx))
            if ctrl_c_pressed:  # a Ctrl-C that Python dropped (see on_ctrl_c) still stops the run here
                raise KeyboardInterrupt
            if len(losses) % 25 == 0 or i + B >= N:  # one host sync every 25 steps, not every step
                check_finite(torch.stack(losses), epoch, run["epoch"], bar)
                bar.set_postfix(loss=f"{torch.stack(losses[-25:]).mean().item():.4f}")
    finally:
        bar.close()  # also on Ctrl-C, before the one-line message (a bar closed later would print after it)
    run["loss_history"] = torch.cat([run["loss_history"], torch.stack(losses).cpu()])
    run["epoch"] = epoch
    return time.time() - t0


def check_finite(losses, epoch, last_good, bar):
    """Stop at the first NaN or infinite loss: the checkpoint on disk stays the last good epoch."""
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        bar.close()  # else the bar redraws itself after the error line
        step = bad[0].item()
        kept = f"ckpt.pt still holds epoch {last_good}, the last good one" if last_good else "no checkpoint was written"
        die(f"the loss is {losses[step].item()} at epoch {epoch}, step {step + 1}: training stopped; {kept} "
            f"(a lower --lr may help)")


# --- shared: speed ---
def train_flops_per_image(model, loss_fn, x, y, device):
    """FLOPs of one training step (forward + backward) per image, counted by PyTorch on a small batch.
    The RNG is put back, so counting changes nothing in the run."""
    from torch.utils.flop_counter import FlopCounterMode
    state = rng_state(device)
    with FlopCounterMode(display=False) as fc:
        loss_fn(model, x, y).backward()
    model.zero_grad(set_to_none=True)
    set_rng_state(state, device)
    return fc.get_total_flops() / len(x)


def report_speed(seconds, n_epochs, n_images, flops):
    print(f"train: {seconds / max(1, n_epochs):.1f} s/epoch, {n_epochs * n_images / seconds:.0f} img/s, "
          f"{n_epochs * n_images / seconds * flops / 1e9:.0f} GFLOP/s")


# --- shared: snapshots ---
def save_snapshot(run, epoch, x0, y, out_dir, row_labels, title):
    """The grid after an epoch: a PNG, and all grids so far in snapshots.pt (for make_gif.py --progress)."""
    run["snapshots"][epoch] = to_uint8(x0).cpu()
    save_grid(to_unit_range(x0), os.path.join(out_dir, f"samples_epoch{epoch:03d}.png"), 8, title, row_labels)
    save_atomic({"grids": run["snapshots"], "y": None if y is None else y.cpu()}, os.path.join(out_dir, "snapshots.pt"))


# --- shared: samples file ---
def save_samples(x, y, args, run, path):
    """samples.pt for evaluate.py: x (N, 1, 28, 28) in [0, 1], labels y (N,) or None, and the flags and
    epoch that produced them."""
    save_atomic({"x": x, "y": y, "config": vars(args), "epoch": run["epoch"]}, path)


# --- shared: image grid ---
def image_grid(x01, nrow, pad=2):
    """x01 (N, 1, H, W) in [0, 1] -> one (H', W') image, nrow digits per row, white `pad` pixels around each:
    torchvision's make_grid(x01, nrow, padding=2, pad_value=1)[0], without importing torchvision (slow)."""
    n, _, h, w = x01.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = torch.ones(rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad):(r + 1) * (h + pad), pad + c * (w + pad):(c + 1) * (w + pad)] = x01[i, 0]
    return grid


# --- shared: plot grid ---
def save_grid(x01, path, nrow, title, row_labels=None):
    """x01 (N, 1, 28, 28) in [0, 1] -> one PNG of a grid, nrow images per row."""
    grid = image_grid(x01.float().cpu(), nrow)
    rows = math.ceil(len(x01) / nrow)
    fig, ax = plt.subplots(figsize=(0.4 * nrow + 0.6, 0.4 * rows + 0.5))
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([30 * r + 15 for r in range(rows)] if row_labels else [])
    if row_labels:
        ax.set_yticklabels(row_labels, fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# --- shared: plot loss ---
def plot_loss(losses, path, title):
    """Per-step loss (light) and its moving average (dark), log scale."""
    k = max(1, len(losses) // 100)
    smooth = losses.unfold(0, k, 1).mean(1) if len(losses) >= k else losses
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses.numpy(), alpha=0.3, lw=0.5, label="per step")
    ax.plot(range(k - 1, k - 1 + len(smooth)), smooth.numpy(), lw=1.5, label=f"mean of {k} steps")
    ax.set(yscale="log", xlabel="step", ylabel="MSE loss", title=title)
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# --- shared: plot strip ---
def plot_strip(frames, ts, path, title, row_labels=None, n_cols=11):
    """The reverse process, uint8 frames (steps + 1, rows, 1, 28, 28): one row per digit, columns from
    the first step (noise) to the last (the digit)."""
    n_cols = min(n_cols, len(ts))                      # a short run shows each step once
    cols = torch.linspace(0, len(ts) - 1, n_cols).round().long()
    rows = frames.shape[1]
    fig, axes = plt.subplots(rows, n_cols, figsize=(0.7 * n_cols, 0.7 * rows + 0.4), squeeze=False,
                             layout="constrained")  # keeps the title next to the panels
    for r in range(rows):
        for c, i in enumerate(cols.tolist()):
            axes[r, c].imshow(frames[i, r, 0].numpy(), cmap="gray", vmin=0, vmax=255)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(f"t={ts[i].item():g}", fontsize=7)
            if c == 0 and row_labels:
                axes[r, c].set_ylabel(row_labels[r], fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# --- shared: entry point ---
def run_main(main):
    """Ctrl-C and a failed write (a full disk, a folder removed under a running job) are one line too.
    Every file another step reads was written atomically, so what is on disk is whole."""
    signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        main()
    except KeyboardInterrupt:
        die("interrupted (Ctrl-C); files already written are whole, and a training run continues "
            "from its last finished epoch with --resume", 130)
    except OSError as e:
        die(f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''}: stopped; the files already "
            f"written are whole, and a training run continues from its last finished epoch with --resume")


ctrl_c_pressed = False  # set by on_ctrl_c, read by the training loops


def on_ctrl_c(signum, frame):
    """Ctrl-C raises KeyboardInterrupt, as Python's own handler does, and is remembered: Python drops
    an exception raised while a finalizer (a __del__, a weakref callback) runs, so a Ctrl-C landing in
    one would be lost and training would go on. The training loops check the flag after every step."""
    global ctrl_c_pressed
    ctrl_c_pressed = True
    raise KeyboardInterrupt


if __name__ == "__main__":
    run_main(main)
