r"""Linear vs cosine beta schedules, side by side: one time-conditioned DDPM trained under each.

Papers: Ho, Jain, Abbeel 2020 (DDPM, linear schedule), https://arxiv.org/abs/2006.11239
        Nichol & Dhariwal 2021 (cosine schedule), https://arxiv.org/abs/2102.09672

    python compare_schedules.py --data-dir ../shared/mnist      # both schedules, 4 epochs each (~35 min, 2 cores)
    python compare_schedules.py --data-dir ../shared/mnist --resume   # continue a killed run
    python compare_schedules.py --schedules linear --epochs 1   # one schedule only
    python evaluate.py runs/compare_schedules/linear/samples.pt runs/compare_schedules/cosine/samples.pt

Only the schedule differs: each schedule's run starts from torch.manual_seed(seed), so the initial
weights, the batch order and every training draw of t and eps are the same; the final samples
start from the same x_T and use the same sampler noise z (DDPM over all T steps by default).

Math (t is 1-indexed, t in {1..T}; x_0 is data, x_T is noise; the model is ddpm_time.py's UNet):
    linear   beta_t evenly spaced from beta_1 = 1e-4 to beta_T = 0.02
    cosine   alpha_bar_t = f(t) / f(0),  f(t) = cos^2((t/T + 0.008) / 1.008 * pi/2),  beta_t <= 0.999
    alpha_bar_t = prod_{s<=t} (1 - beta_s),   q(x_t | x_0) = N( sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I )
    log-SNR(t) = log( alpha_bar_t / (1 - alpha_bar_t) )
    loss = || eps - eps_theta( sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t ) ||^2,  t ~ U{1..T}
The signal left at t = T is sqrt(alpha_bar_T): 0.219 for linear at T = 300 (0.0002 for cosine).
Training shows the model x_T ~ q(x_T | x_0), sampling starts it from x_T ~ N(0, I); per digit the gap is
    L_T = KL( q(x_T | x_0) || N(0, I) ) = 1/2 [ ab ||x_0||^2 - D (ab + log(1 - ab)) ],  ab = alpha_bar_T, D = 784,
the prior term of the DDPM bound, which training ignores: 2.6 nats for linear at T = 300 on MNIST, 0 for
cosine. To see it: the component of x_T along the mean digit (scaled to length 1) is N(0, 1) for pure
noise, but 1.3 +- 1.0 in training under linear: a threshold tells the two apart about 3 times in 4.
The two loss curves are not directly comparable: the loss averages the eps error over t ~ U{1..T}, how
hard a t is depends on its noise level, and the schedules put the T noise levels in different places.
Compare the samples (evaluate.py), not the losses.
Conventions (ddpm_time.py's): pixels uint8 0..255 -> x = p / 255 in [0, 1] for the model (black is 0, so
    the signal left in x_T is on the strokes only); everything saved is in [0, 1]. Sampling runs
    t = T, ..., 1, clips the predicted x_0 to [0, 1] at every step and adds no noise at t = 1. The clip
    matters here: cosine's beta_T = 0.999, so the first DDPM step divides by sqrt(alpha_T) = 0.032 and,
    unclipped, turns a 0.03 eps error into 0.9 of noise in x_{T-1} (white blobs; FID 45 instead of 5.7).
Writes to --out-dir (default runs/compare_schedules):
    schedules.png (alpha_bar, log-SNR, x_T along the mean digit), forward.png (one digit at the same t under
    each schedule), loss.png (both loss curves), samples.png (the grids side by side), results.json (the
    table); per schedule NAME/ckpt.pt (ddpm_time.py's format, every epoch, atomically; after sampling it
    also holds the grid and the table row) and NAME/samples.pt ({"x": (N,1,28,28) in [0,1], "y": None}).
A third schedule: add a branch for it to make_schedule (the shared schedule block: change it in every
script) and its name to SCHEDULES below; it gets its own row, curves and subfolder.
"""
import argparse
import copy
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.datasets.mnist import read_image_file, read_label_file

import matplotlib
matplotlib.use("Agg")  # no display needed: we only write PNG files
import matplotlib.pyplot as plt
from tqdm import tqdm

SCRIPT = "compare_schedules"
SCHEDULES = ("linear", "cosine")  # the kinds make_schedule builds; the choices of --schedules
GRID = 64                         # digits per schedule in samples.png (the first 64 of the samples)
N_STATS = 10_000                  # training digits used for the x_T statistics


# --- Config ------------------------------------------------------------------------------------
def get_args(argv=None):
    ap = argparse.ArgumentParser(description="Linear vs cosine beta schedules: the same DDPM trained under each")
    ap.add_argument("--data-dir", default="./data", help="MNIST folder (downloaded here if missing)")
    ap.add_argument("--out-dir", default=f"runs/{SCRIPT}", help="figures and results.json; a subfolder per schedule")
    ap.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES),
                    help="beta schedules to train and compare, in this order")
    ap.add_argument("--epochs", type=int, default=4, help="passes over the 60,000 training digits, per schedule")
    ap.add_argument("--batch-size", type=int, default=128, help="digits per optimizer step")
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    ap.add_argument("--ema-decay", type=float, default=0.999, help="EMA of the weights, used to sample")
    ap.add_argument("--T", type=int, default=300, help="number of diffusion steps (every schedule)")
    ap.add_argument("--channels", type=int, nargs=3, default=[16, 64, 64],
                    help="UNet widths at 28x28, 14x14, 7x7 (multiples of 8)")
    ap.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm", help="sampler of samples.png/.pt")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps, at most T (DDPM uses all T)")
    ap.add_argument("--n-samples", type=int, default=1000, help="digits per schedule in samples.pt (0: none)")
    ap.add_argument("--resume", action="store_true", help="continue a killed run; finished schedules are kept")
    ap.add_argument("--limit", type=int, default=0, help="train on the first N digits only (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="same seed, same run (on the same device)")
    ap.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), or e.g. cpu")
    args = ap.parse_args(argv)
    if min(args.limit, args.n_samples) < 0 or min(args.epochs, args.batch_size) < 1 or args.lr <= 0:
        ap.error("--limit and --n-samples must be >= 0, --epochs and --batch-size >= 1 and --lr > 0")
    if args.T < 2 or args.steps < 1:
        ap.error(f"need --T >= 2 and --steps >= 1 (got T={args.T}, steps={args.steps})")
    if any(c < 8 or c % 8 for c in args.channels):
        ap.error("--channels must be positive multiples of 8 (GroupNorm uses 8 groups)")
    if not 0 <= args.ema_decay < 1:
        ap.error("--ema-decay must be in [0, 1)")
    if len(set(args.schedules)) < len(args.schedules):
        ap.error("--schedules names a schedule twice")
    return args


# --- shared: errors, device and seed ---
def die(msg, code=2):
    """A user error: one clear line on stderr, no traceback."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


def pick_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        die(f"unknown --device {name!r} (use auto, cpu, cuda, cuda:1 or mps)")


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


def load_mnist(data_dir, train=True):
    """MNIST as uint8 images (N, 28, 28) and int64 labels (N,), read by torchvision's IDX readers."""
    paths = find_idx_files(data_dir, train)
    if paths is None:  # not on disk: download the way torchvision users expect
        try:
            torchvision.datasets.MNIST(data_dir, train=train, download=True)
        except Exception as e:  # offline, no permission, ...: say where the files go instead
            die(f"MNIST is not in {data_dir!r} and could not be downloaded ({type(e).__name__}). "
                f"Put the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, or the Kaggle .idx names) "
                f"in {data_dir!r} or pass --data-dir")
        paths = find_idx_files(data_dir, train)
    try:
        images, labels = read_image_file(paths[0]), read_label_file(paths[1])
    except Exception as e:
        die(f"cannot read MNIST IDX files {paths}: {e}")
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        die(f"{paths[0]} does not hold 28x28 MNIST digits matching {paths[1]}")
    return images, labels


def to_model_range(images_uint8):
    """uint8 0..255 (N, 28, 28) -> float in [0, 1] (N, 1, 28, 28), the range the model sees."""
    return images_uint8.unsqueeze(1).float().div(255)


def to_unit_range(x):
    """Model output -> [0, 1] for saving and plotting: clamped, since samples can overshoot."""
    return x.clamp(0, 1)


# --- shared: schedule ---
def make_schedule(T, kind, device):
    """beta, alpha, alpha_bar as tensors of length T + 1, indexed by t = 0..T (index 0 is x_0:
    beta_0 = 0, alpha_bar_0 = 1). Computed in float64, stored in float32."""
    t = torch.arange(T + 1, dtype=torch.float64)
    if kind == "linear":  # Ho et al.: beta_1 = 1e-4 .. beta_T = 0.02, evenly spaced
        beta = torch.cat([torch.zeros(1, dtype=torch.float64), torch.linspace(1e-4, 0.02, T, dtype=torch.float64)])
    elif kind == "cosine":  # Nichol & Dhariwal: alpha_bar_t = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi/2)
        s = 0.008
        f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        beta = (1 - f[1:] / f[:-1]).clamp(max=0.999)  # clipped so the last step is not singular
        beta = torch.cat([torch.zeros(1, dtype=torch.float64), beta])
    else:  # a new schedule is one more branch here (and a name in --schedule's choices)
        raise ValueError(f"unknown schedule {kind!r}")
    alpha = 1 - beta
    alpha_bar = torch.cumprod(alpha, 0)
    return {k: v.float().to(device) for k, v in dict(beta=beta, alpha=alpha, alpha_bar=alpha_bar).items()}


def q_sample(x0, t, eps, sched):
    """Forward process: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t of shape (B,)."""
    ab = sched["alpha_bar"][t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


# --- shared: model blocks ---
def time_embedding(t, dim):
    """Sinusoidal embedding of the integer step t (B,) -> (B, dim), as in the Transformer."""
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


# --- Model ----------------------------------------------------------------------------------
class UNet(nn.Module):
    """eps_theta(x_t, t): 28x28 -> 14x14 -> 7x7 (+ attention) -> back up, skips by concatenation."""

    def __init__(self, channels=(16, 64, 64), emb_dim=128):
        super().__init__()
        c1, c2, c3 = channels
        self.emb_dim = emb_dim
        self.t_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Conv2d(1, c1, 3, padding=1)
        self.down1, self.pool1 = ResBlock(c1, c1, emb_dim), nn.Conv2d(c1, c1, 3, stride=2, padding=1)
        self.down2, self.pool2 = ResBlock(c1, c2, emb_dim), nn.Conv2d(c2, c2, 3, stride=2, padding=1)
        self.down3 = ResBlock(c2, c3, emb_dim)
        self.mid1, self.attn, self.mid2 = ResBlock(c3, c3, emb_dim), SelfAttention(c3), ResBlock(c3, c3, emb_dim)
        self.up3 = ResBlock(2 * c3, c2, emb_dim)
        self.unpool2, self.up2 = nn.ConvTranspose2d(c2, c2, 4, 2, 1), ResBlock(2 * c2, c1, emb_dim)
        self.unpool1, self.up1 = nn.ConvTranspose2d(c1, c1, 4, 2, 1), ResBlock(2 * c1, c1, emb_dim)
        self.out = nn.Sequential(nn.GroupNorm(8, c1), nn.SiLU(), nn.Conv2d(c1, 1, 3, padding=1))

    def forward(self, x, t):                                      # x (B, 1, 28, 28), t (B,) in 1..T
        emb = self.t_mlp(time_embedding(t, self.emb_dim))         # (B, emb_dim)
        h1 = self.down1(self.inp(x), emb)                         # (B, c1, 28, 28)
        h2 = self.down2(self.pool1(h1), emb)                      # (B, c2, 14, 14)
        h3 = self.down3(self.pool2(h2), emb)                      # (B, c3, 7, 7)
        h = self.mid2(self.attn(self.mid1(h3, emb)), emb)         # (B, c3, 7, 7)
        h = self.up3(torch.cat([h, h3], 1), emb)                  # (B, c2, 7, 7)
        h = self.up2(torch.cat([self.unpool2(h), h2], 1), emb)    # (B, c1, 14, 14)
        h = self.up1(torch.cat([self.unpool1(h), h1], 1), emb)    # (B, c1, 28, 28)
        return self.out(h)                                        # (B, 1, 28, 28): predicted eps


# --- shared: samplers ---
@torch.no_grad()
def sample(eps_fn, x_T, sched, sampler="ddpm", steps=50, gen=None, keep_trajectory=False):
    """Reverse process from x_T to x_0. eps_fn(x_t, t) -> predicted eps, t an int in 1..T.
    Every step predicts x_0, clips it to the data range [0, 1] and uses the eps that matches it, then
    ddpm: Algorithm 2 of Ho et al. over all T steps, sigma_t^2 = beta_t, no noise at t = 1 (with the
          clipped x_0 this is their code's clip_denoised=True: the mean of q(x_{t-1} | x_t, x_0));
    ddim: deterministic (eta = 0) over `steps` evenly spaced t. Returns x_0 (and the frames)."""
    T = len(sched["beta"]) - 1
    if sampler == "ddpm":
        ts = list(range(T, -1, -1))                                     # T, T-1, ..., 0
    else:                                                               # e.g. 300, 294, ..., 6, 0
        ts = torch.linspace(T, 0, min(steps, T) + 1).round().long().tolist()
    x, frames = x_T, [x_T.cpu()] if keep_trajectory else None
    for t, t_prev in zip(ts[:-1], ts[1:]):
        eps = eps_fn(x, t)
        ab, ab_prev = sched["alpha_bar"][t], sched["alpha_bar"][t_prev]
        # both samplers clip the predicted x_0 to the data range and use the eps that matches it. Without
        # it, DDPM's 1 / sqrt(alpha_t) blows up under cosine at T = 300 (beta_T = 0.999: 31.6x the eps error)
        x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(0, 1)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()  # unchanged wherever x_0 was inside [0, 1]
        if sampler == "ddpm":  # x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) + sigma_t z
            x = (x - sched["beta"][t] / (1 - ab).sqrt() * eps) / sched["alpha"][t].sqrt()
            if t > 1:  # no noise at the last step: x_0 is the mean
                x = x + sched["beta"][t].sqrt() * torch.randn(x.shape, generator=gen, device=x.device)
        else:  # jump to t_prev along the same (clipped) x_0 and eps; with the raw eps, guided DDIM gave blobs
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
        if keep_trajectory:
            frames.append(x.cpu())
    return (x, torch.tensor(ts), torch.stack(frames)) if keep_trajectory else x


# --- shared: checkpoints ---
ARCH_KEYS = ("T", "schedule", "channels")  # a checkpoint only fits a model built with these


def save_checkpoint(state, path):
    """Atomic: write a temp file, then rename over the old one (a kill never leaves half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, args):
    if not os.path.isfile(path):
        die(f"no checkpoint at {path}: train first (without --resume / --sample-only)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        script, config = ckpt["script"], ckpt["config"]
    except Exception as e:
        die(f"{path} is not a readable checkpoint ({type(e).__name__}); delete it or use another --out-dir")
    if script != SCRIPT:
        die(f"{path} was written by {script}.py, not {SCRIPT}.py; use another --out-dir")
    for k in ARCH_KEYS:
        if config[k] != getattr(args, k):
            die(f"{path} was trained with --{k.replace('_', '-')} {config[k]}, not {getattr(args, k)}; "
                f"pass the same value or use another --out-dir")
    return ckpt


def rng_state():
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    torch.set_rng_state(state["cpu"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


# --- shared: EMA ---
@torch.no_grad()
def ema_update(ema, model, decay, step):
    """theta_ema <- d theta_ema + (1 - d) theta, with d = min(decay, (1 + step) / (10 + step)):
    the warm-up lets the EMA forget the random initial weights within the first epoch."""
    d = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - d)


# --- Training -------------------------------------------------------------------------------
def train_epoch(model, ema, opt, step0, x_all, sched, args, epoch, name):
    """ddpm_time.py's train_epoch: one pass in shuffled batches (randperm on the device). step0 =
    optimizer steps before this epoch. Returns the per-step losses; host syncs only for the bar."""
    model.train()
    N, B = len(x_all), args.batch_size
    perm = torch.randperm(N, device=x_all.device)
    losses = []
    bar = tqdm(total=N, desc=f"{name} epoch {epoch}/{args.epochs}", unit="img", unit_scale=True, leave=True)
    for i in range(0, N, B):
        x0 = x_all[perm[i:i + B]]                                           # (B, 1, 28, 28) in [0, 1]
        t = torch.randint(1, args.T + 1, (len(x0),), device=x0.device)     # t ~ U{1..T}
        eps = torch.randn_like(x0)
        loss = F.mse_loss(model(q_sample(x0, t, eps, sched), t), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, model, args.ema_decay, step0 + len(losses))
        losses.append(loss.detach())
        bar.update(len(x0))
        if len(losses) % 25 == 0:  # one host sync every 25 steps, not every step
            bar.set_postfix(loss=f"{torch.stack(losses[-25:]).mean().item():.4f}")
    bar.close()
    return torch.stack(losses).cpu()


def run_schedule(name, sched, x_all, x_T, args, device):
    """Train (or resume) the model under one schedule, then sample from x_T with its EMA weights.
    Returns {"loss_history", "row", "grid"}; NAME/ckpt.pt keeps all of it, so --resume skips a
    schedule that is done (same --epochs, --n-samples, --sampler, --steps)."""
    out = os.path.join(args.out_dir, name)
    os.makedirs(out, exist_ok=True)
    ckpt_path = os.path.join(out, "ckpt.pt")
    cfg = argparse.Namespace(**vars(args), schedule=name)  # this run's config, as ddpm_time.py stores it
    torch.manual_seed(args.seed)  # the same initial weights, batch order, t and eps for every schedule
    model = UNet(args.channels).to(device, memory_format=torch.channels_last)  # channels_last: 1.2x on CPU
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    epoch, loss_history, train_s, result = 0, torch.zeros(0), 0.0, None
    if args.resume and os.path.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path, cfg)
        model.load_state_dict(ckpt["model"]), ema.load_state_dict(ckpt["ema"]), opt.load_state_dict(ckpt["opt"])
        epoch, loss_history, train_s, result = ckpt["epoch"], ckpt["loss_history"], ckpt["train_s"], ckpt["result"]
        set_rng_state(ckpt["rng"])
        print(f"{name}: resumed {ckpt_path}, {epoch} epochs done")
    key = [max(epoch, args.epochs), args.n_samples, args.sampler, args.steps]  # what a finished result is for
    if result is not None and result["key"] == key:
        print(f"{name}: finished earlier, not retrained")
        return {"loss_history": loss_history, **result}

    def checkpoint(result=None):
        save_checkpoint({"script": SCRIPT, "config": vars(cfg), "epoch": epoch, "model": model.state_dict(),
                         "ema": ema.state_dict(), "opt": opt.state_dict(), "loss_history": loss_history,
                         "rng": rng_state(), "train_s": train_s, "result": result}, ckpt_path)

    t_start, n_img = time.time(), 0
    for epoch in range(epoch + 1, args.epochs + 1):
        t0 = time.time()
        loss_history = torch.cat([loss_history, train_epoch(model, ema, opt, len(loss_history), x_all,
                                                             sched, args, epoch, name)])
        train_s, n_img = train_s + time.time() - t0, n_img + len(x_all)
        checkpoint()
    if n_img:
        print(f"{name}: {n_img / (time.time() - t_start):.0f} img/s")

    ema.eval()
    eps_fn = lambda x, t: ema(x, torch.full((len(x),), t, device=device))  # noqa: E731  sample with EMA
    gen = torch.Generator(device).manual_seed(args.seed + 2)  # the same sampler noise z for every schedule
    t0, xs = time.time(), []
    for i in range(0, len(x_T), 500):  # batches of 500 keep memory flat
        xs.append(sample(eps_fn, x_T[i:i + 500], sched, args.sampler, args.steps, gen).cpu())
    x0 = torch.cat(xs)                                               # (max(GRID, N), 1, 28, 28), ~[0, 1]
    sample_s = time.time() - t0
    if args.n_samples:
        torch.save({"x": to_unit_range(x0[:args.n_samples]), "y": None}, os.path.join(out, "samples.pt"))
    steps_per_epoch = math.ceil(len(x_all) / args.batch_size)
    row = {"schedule": name, "final_loss": loss_history[-steps_per_epoch:].mean().item(), "train_s": train_s,
           "sample_s": sample_s, "sqrt_alpha_bar_T": sched["alpha_bar"][-1].sqrt().item(),
           "sample_ink": to_unit_range(x0[:args.n_samples or GRID]).mean().item()}
    result = {"key": key, "row": row, "grid": to_uint8(x0[:GRID])}
    checkpoint(result)
    print(f"{name}: {len(x0)} digits sampled ({args.sampler}) in {sample_s:.1f} s")
    return {"loss_history": loss_history, **result}


# --- The start of sampling: q(x_T | x_0) against N(0, I) -----------------------------------------
def start_gap(x0, scheds, seed):
    """How far training's x_T ~ q(x_T | x_0) is from sampling's x_T ~ N(0, I). x0 (N, 1, 28, 28), model range.
    Per schedule: each x_T's component along the mean digit m / ||m|| (N,), which is N(0, 1) for pure
    noise, and L_T = KL(q(x_T | x_0) || N(0, I)) in nats per digit (closed form, header), averaged.
    Also the same component for N pure-noise images."""
    gen = torch.Generator().manual_seed(seed)
    m = x0.mean(0).flatten()
    u = m / m.norm()                                                 # (784,) the mean digit, length 1
    eps = torch.randn(x0.shape, generator=gen).to(x0.device)         # the same eps for every schedule
    noise_proj = (torch.randn(x0.shape, generator=gen).to(x0.device).flatten(1) @ u).cpu()
    sq = x0.double().flatten(1).square().sum(1)                      # ||x_0||^2 per digit
    gap = {}
    for name, s in scheds.items():
        T, ab = len(s["alpha_bar"]) - 1, s["alpha_bar"][-1].double()
        x_T = q_sample(x0, torch.full((len(x0),), T, device=x0.device), eps, s)   # (N, 1, 28, 28)
        kl = 0.5 * (ab * sq - x0[0].numel() * (ab + torch.log1p(-ab)))
        gap[name] = {"proj": (x_T.flatten(1) @ u).cpu(), "prior_kl": kl.mean().item()}
    return gap, noise_proj


# --- shared: plots ---
def save_grid(x01, path, nrow, title, row_labels=None):
    """x01 (N, 1, 28, 28) in [0, 1] -> one PNG of a grid, nrow images per row."""
    grid = torchvision.utils.make_grid(x01.float().cpu(), nrow=nrow, padding=2, pad_value=1.0)[0]
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


def plot_loss(losses, path, title):
    """Per-step loss (light) and its moving average (dark), log scale."""
    k = max(1, len(losses) // 100)
    smooth = losses.unfold(0, k, 1).mean(1) if len(losses) >= k else losses
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses.numpy(), alpha=0.3, lw=0.5, label="per step")
    ax.plot(range(k - 1, k - 1 + len(smooth)), smooth.numpy(), lw=1.5, label=f"mean of {k} steps")
    ax.set(yscale="log", xlabel="step", ylabel="MSE loss (eps)", title=title)
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_strip(frames, ts, path, title, row_labels=None, n_cols=11):
    """Reverse process: one row per digit, columns from t = T (noise) down to t = 0."""
    cols = torch.linspace(0, len(ts) - 1, n_cols).round().long()
    rows = frames.shape[1]
    fig, axes = plt.subplots(rows, n_cols, figsize=(0.7 * n_cols, 0.7 * rows + 0.4), squeeze=False,
                             layout="constrained")  # keeps the title next to the panels
    for r in range(rows):
        for c, i in enumerate(cols.tolist()):
            axes[r, c].imshow(to_unit_range(frames[i, r, 0]).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(f"t={ts[i].item()}", fontsize=7)
            if c == 0 and row_labels:
                axes[r, c].set_ylabel(row_labels[r], fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def to_uint8(x):
    return (to_unit_range(x) * 255).round().to(torch.uint8)


# --- Plots: the comparison ----------------------------------------------------------------------
def plot_schedules(scheds, gap, noise_proj, path):
    """alpha_bar(t), log-SNR(t), and histograms of x_T along the mean digit: training's x_T vs sampling's."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    values = torch.cat([noise_proj, *(g["proj"] for g in gap.values())])
    bins = torch.linspace(values.min().item(), values.max().item(), 61).numpy()
    for name, s in scheds.items():
        ab = s["alpha_bar"][1:].double().cpu()
        t = torch.arange(1, len(ab) + 1).numpy()
        axes[0].plot(t, ab.numpy(), label=f"{name}: sqrt(alpha_bar_T) = {ab[-1].sqrt().item():.4f}")
        axes[1].plot(t, (ab / (1 - ab)).log().numpy(), label=name)
        p = gap[name]["proj"]
        axes[2].hist(p.numpy(), bins, histtype="step", lw=1.5, label=f"{name}: q(x_T | x_0), mean {p.mean():.2f}")
    axes[2].hist(noise_proj.numpy(), bins, histtype="stepfilled", alpha=0.3, color="gray",
                 label=f"N(0, I), where sampling starts: mean {noise_proj.mean():.2f}")
    axes[0].set(xlabel="t", ylabel="alpha_bar", title="alpha_bar(t): signal variance in x_t")
    axes[1].set(xlabel="t", ylabel="log SNR", title="log(alpha_bar / (1 - alpha_bar))")
    axes[2].set(xlabel="x_T . m / ||m||, m = the mean training digit", ylabel="images",
                title=f"x_T in training vs at the start of sampling, {len(noise_proj)} images")
    axes[2].set_ylim(top=1.4 * axes[2].get_ylim()[1])  # room for the legend above the bars
    for ax, where in zip(axes, ("lower left", "upper right", "upper left")):  # where the curves are not
        ax.legend(fontsize=7, loc=where)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_losses(histories, path):
    """Every schedule's per-step loss (light) and moving average (dark) on one log-scale plot."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, losses in histories.items():
        k = max(1, len(losses) // 100)
        line, = ax.plot(losses.numpy(), alpha=0.25, lw=0.5)
        ax.plot(range(k - 1, len(losses)), losses.unfold(0, k, 1).mean(1).numpy(), color=line.get_color(),
                lw=1.5, label=f"{name} (mean of {k} steps)")
    ax.set(yscale="log", xlabel="step", ylabel="MSE loss (eps)",
           title="training loss: same weights, batches, t and eps draws\n"
                 "(not directly comparable: each schedule puts the T noise levels elsewhere)")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_side_by_side(grids, path, title):
    """grids {name: (n, 1, 28, 28) uint8}: one 8-wide grid per schedule, next to each other."""
    fig, axes = plt.subplots(1, len(grids), figsize=(3.6 * len(grids), 4), squeeze=False,
                             layout="constrained")  # keeps the title next to the grids
    for ax, (name, g) in zip(axes[0], grids.items()):
        grid = torchvision.utils.make_grid(g.float() / 255, nrow=8, padding=2, pad_value=1.0)[0]
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set(xticks=[], yticks=[])
        ax.set_title(name, fontsize=10)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# --- main ---------------------------------------------------------------------------------------
def main(argv=None):
    args = get_args(argv)
    print(vars(args))
    device = pick_device(args.device)
    os.makedirs(args.out_dir, exist_ok=True)
    for name in args.schedules:
        path = os.path.join(args.out_dir, name, "ckpt.pt")
        if os.path.exists(path) and not args.resume:
            die(f"{path} exists: pass --resume to continue the comparison, or another --out-dir")
    images, _ = load_mnist(args.data_dir, train=True)
    images = images[:args.limit] if args.limit else images
    x_all = to_model_range(images).to(device)                     # whole set on the device, (N, 1, 28, 28)
    scheds = {name: make_schedule(args.T, name, device) for name in args.schedules}
    print(f"device {device}  threads {torch.get_num_threads()}  T={args.T}  training on {len(x_all)} digits  "
          + "  ".join(f"{n}: sqrt(alpha_bar_T) = {s['alpha_bar'][-1].sqrt().item():.4f}" for n, s in scheds.items()))
    # the same starting noise for every schedule, from its own generator (training RNG untouched)
    x_T = torch.randn(max(GRID, args.n_samples), 1, 28, 28, generator=torch.Generator().manual_seed(args.seed + 1))
    runs = {name: run_schedule(name, scheds[name], x_all, x_T.to(device), args, device) for name in args.schedules}

    gap, noise_proj = start_gap(x_all[:N_STATS], scheds, args.seed + 3)
    plot_schedules(scheds, gap, noise_proj, os.path.join(args.out_dir, "schedules.png"))
    ts = torch.linspace(0, args.T, 9).round().long()                 # the same t for every schedule
    eps = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed + 4)).to(device)
    frames = torch.stack([torch.cat([q_sample(x_all[:1], t.view(1).to(device), eps, s) for s in scheds.values()])
                          for t in ts]).cpu()                          # (len(ts), schedules, 1, 28, 28)
    # no title: plot_strip's title would cover the t labels of a 2-row figure; the row labels say it
    plot_strip(frames, ts, os.path.join(args.out_dir, "forward.png"), "",
               row_labels=[f"{n}\nq(x_t | x_0)" for n in scheds], n_cols=len(ts))
    plot_losses({n: r["loss_history"] for n, r in runs.items()}, os.path.join(args.out_dir, "loss.png"))
    label = f"{args.sampler.upper()} {args.T if args.sampler == 'ddpm' else min(args.steps, args.T)} steps"
    plot_side_by_side({n: r["grid"] for n, r in runs.items()}, os.path.join(args.out_dir, "samples.png"),
                      f"EMA samples, {label}, the same x_T and z for every schedule")

    rows = [{**r["row"], "prior_kl": gap[n]["prior_kl"], "xT_proj": gap[n]["proj"].mean().item()}
            for n, r in runs.items()]
    data_ink = to_unit_range(x_all).mean().item()
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump({"config": vars(args), "rows": rows, "data_ink": data_ink,
                   "noise_xT_proj": noise_proj.mean().item()}, f, indent=1)
    print(f"\n{'schedule':10s}{'final loss':>11s}{'train s':>9s}{'sample s':>9s}{'sqrt(ab_T)':>11s}"
          f"{'L_T nats':>10s}{'x_T.m':>8s}{'ink':>7s}")
    for r in rows:
        print(f"{r['schedule']:10s}{r['final_loss']:11.4f}{r['train_s']:9.0f}{r['sample_s']:9.0f}"
              f"{r['sqrt_alpha_bar_T']:11.4f}{r['prior_kl']:10.2f}{r['xT_proj']:8.2f}{r['sample_ink']:7.3f}")
    print(f"{'N(0, I) / data':50s}{0:10.2f}{noise_proj.mean().item():8.2f}{data_ink:7.3f}")
    print("final loss: mean of the last epoch. L_T: KL(q(x_T|x_0) || N(0,I)) in nats per digit. x_T.m: mean of "
          "x_T along the unit mean digit in training (N(0, I), where sampling starts: 0 +- 1). ink: mean pixel of "
          "the samples (data: of the real digits)")
    print(f"outputs in {args.out_dir}/: " + ", ".join(sorted(os.listdir(args.out_dir))))


if __name__ == "__main__":
    main()
