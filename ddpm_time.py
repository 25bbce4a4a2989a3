r"""Time-conditioned DDPM on MNIST: train, sample, plot. One file, no config.

Paper: Ho, Jain, Abbeel 2020, "Denoising Diffusion Probabilistic Models", https://arxiv.org/abs/2006.11239
DDIM sampler: Song, Meng, Ermon 2020, https://arxiv.org/abs/2010.02502

    python ddpm_time.py                                  # train 20 epochs, sample, plot
    python ddpm_time.py --data-dir ../shared/mnist       # MNIST already on disk (IDX files)
    python ddpm_time.py --resume                         # continue a killed run from its checkpoint
    python ddpm_time.py --sample-only --sampler ddim --steps 50 --n-samples 1000

Math (t is 1-indexed as in the paper, t in {1..T}; x_0 is data, x_T is noise):
    beta_t           linear 1e-4 .. 0.02 (default) or cosine (Nichol & Dhariwal 2021)
    alpha_t = 1 - beta_t,   alpha_bar_t = prod_{s<=t} alpha_s,   alpha_bar_0 = 1
    q(x_t | x_0) = N( sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I )
    loss = || eps - eps_theta( sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t ) ||^2,  t ~ U{1..T}
    p_sample: x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_t) + sigma_t z,
              sigma_t^2 = beta_t,  z = 0 at the last step t = 1 (no noise is added to x_0),
              with eps_theta taken from the predicted x_0 clipped to [0, 1] (see sample())
Conventions:
    training draws every t in {1..T}; sampling runs t = T, T-1, ..., 1 and returns x_0.
    pixels: the data set is uint8 0..255; the model sees x = p / 255 in [0, 1] (as in CS180), and
    everything saved is in [0, 1] (PNG, samples.pt) or 0..255 uint8 (trajectory.pt, snapshots.pt).
    Why not [-1, 1]: at T = 300, sqrt(alpha_bar_T) = 0.22 of the digit is still in x_T. With [0, 1]
    the background is 0, so pure noise matches x_T everywhere but on the strokes; with [-1, 1] every
    background pixel would start off by 0.22 (we measured grey, blotchy samples that way).
Writes to --out-dir (default runs/ddpm_time):
    ckpt.pt (model, EMA, optimizer, epoch, config, loss history, RNG; every epoch, atomically),
    samples_epoch001.png ... (epochs 1, 5, 10, 15, 20 and the last), samples.png, loss.png, strip.png,
    snapshots.pt (per-epoch grids, for make_gif.py --progress), trajectory.pt (reverse process,
    for make_gif.py), samples.pt (with --n-samples N: {"x": (N,1,28,28) in [0,1], "y": None}).
"""
import argparse
import copy
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

SCRIPT = "ddpm_time"
SNAPSHOT_EPOCHS = (1, 5, 10, 15, 20)  # sample grids saved after these epochs (if within the run) and the last


# --- Config ------------------------------------------------------------------------------------
def get_args(argv=None):
    ap = argparse.ArgumentParser(description="Time-conditioned DDPM on MNIST")
    ap.add_argument("--data-dir", default="./data", help="MNIST folder (downloaded here if missing)")
    ap.add_argument("--out-dir", default=f"runs/{SCRIPT}", help="checkpoint, plots and samples go here")
    ap.add_argument("--epochs", type=int, default=20, help="passes over the 60,000 training digits")
    ap.add_argument("--batch-size", type=int, default=128, help="digits per optimizer step")
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    ap.add_argument("--ema-decay", type=float, default=0.999, help="EMA of the weights, used to sample")
    ap.add_argument("--T", type=int, default=300, help="number of diffusion steps")
    ap.add_argument("--schedule", choices=["linear", "cosine"], default="linear", help="beta schedule")
    ap.add_argument("--channels", type=int, nargs=3, default=[16, 64, 64],
                    help="UNet widths at 28x28, 14x14, 7x7 (multiples of 8; see README Performance)")
    ap.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm", help="final sampler")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps, at most T (DDPM uses all T)")
    ap.add_argument("--n-samples", type=int, default=0, help="also sample N digits into samples.pt")
    ap.add_argument("--sample-only", action="store_true", help="load ckpt.pt and sample, no training")
    ap.add_argument("--resume", action="store_true", help="continue training from ckpt.pt")
    ap.add_argument("--limit", type=int, default=0, help="train on the first N digits only (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="same seed, same run (on the same device)")
    ap.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), or e.g. cpu")
    args = ap.parse_args(argv)
    if min(args.epochs, args.limit, args.n_samples) < 0 or args.batch_size < 1 or args.lr <= 0:
        ap.error("--epochs, --limit and --n-samples must be >= 0, --batch-size >= 1 and --lr > 0")
    if args.T < 2 or args.steps < 1:
        ap.error(f"need --T >= 2 and --steps >= 1 (got T={args.T}, steps={args.steps})")
    if any(c < 8 or c % 8 for c in args.channels):
        ap.error("--channels must be positive multiples of 8 (GroupNorm uses 8 groups)")
    if not 0 <= args.ema_decay < 1:
        ap.error("--ema-decay must be in [0, 1)")
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
def train_epoch(model, ema, opt, step0, x_all, sched, args, epoch):
    """One pass over the data in shuffled batches (randperm on the device, no DataLoader).
    step0 = optimizer steps before this epoch. Returns the per-step losses as a tensor; the only
    host syncs are the progress-bar updates."""
    model.train()
    N, B = len(x_all), args.batch_size
    perm = torch.randperm(N, device=x_all.device)
    losses = []
    bar = tqdm(total=N, desc=f"epoch {epoch}/{args.epochs}", unit="img", unit_scale=True, leave=True)
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


def train_flops_per_image(model, device):
    """FLOPs of one training step (forward + backward) per image, counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode
    x, t = torch.zeros(8, 1, 28, 28, device=device), torch.ones(8, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as fc:
        model(x, t).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops() / 8


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


# --- main ---------------------------------------------------------------------------------------
def main(argv=None):
    args = get_args(argv)
    print(vars(args))
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    os.makedirs(args.out_dir, exist_ok=True)
    ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
    if os.path.exists(ckpt_path) and not (args.resume or args.sample_only):
        die(f"{ckpt_path} exists: pass --resume to continue it, --sample-only to sample, or another --out-dir")
    sched = make_schedule(args.T, args.schedule, device)
    print(f"device {device}  threads {torch.get_num_threads()}  T={args.T} {args.schedule}  "
          f"sqrt(alpha_bar_T) = {sched['alpha_bar'][-1].sqrt().item():.3f} (signal left at t = T)")

    model = UNet(args.channels).to(device, memory_format=torch.channels_last)  # channels_last: 1.2x on CPU
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    print(f"UNet {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, channels {args.channels}")
    start_epoch, loss_history, snapshots = 1, torch.zeros(0), {}
    if args.resume or args.sample_only:
        ckpt = load_checkpoint(ckpt_path, args)
        model.load_state_dict(ckpt["model"]), ema.load_state_dict(ckpt["ema"]), opt.load_state_dict(ckpt["opt"])
        start_epoch, loss_history = ckpt["epoch"] + 1, ckpt["loss_history"]
        set_rng_state(ckpt["rng"])
        print(f"{'loaded' if args.sample_only else 'resumed'} {ckpt_path}: {ckpt['epoch']} epochs done")
    snap_path = os.path.join(args.out_dir, "snapshots.pt")
    if os.path.exists(snap_path) and start_epoch > 1:
        snapshots = torch.load(snap_path, weights_only=True)["grids"]
    eps_fn = lambda x, t: ema(x, torch.full((len(x),), t, device=device))  # noqa: E731  sample with EMA
    # the same starting noise for every snapshot, from its own generator (training RNG untouched)
    x_T = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)

    train_s, n_img = 0.0, 0
    if not args.sample_only and start_epoch <= args.epochs:
        images, _ = load_mnist(args.data_dir, train=True)
        images = images[:args.limit] if args.limit else images
        x_all = to_model_range(images).to(device)                 # whole set on the device, (N, 1, 28, 28)
        flops = train_flops_per_image(model, device)
        print(f"training on {len(x_all)} digits, {flops / 1e9:.3f} GFLOP per image per training step")
        for epoch in range(start_epoch, args.epochs + 1):
            t0 = time.time()
            losses = train_epoch(model, ema, opt, len(loss_history), x_all, sched, args, epoch)
            loss_history = torch.cat([loss_history, losses])
            train_s, n_img = train_s + time.time() - t0, n_img + len(x_all)
            if epoch in SNAPSHOT_EPOCHS or epoch == args.epochs:  # grids: cheap DDIM (50 steps), EMA weights
                ema.eval()
                x0 = sample(eps_fn, x_T, sched, "ddim", 50)
                snapshots[epoch] = to_uint8(x0).cpu()
                save_grid(to_unit_range(x0), os.path.join(args.out_dir, f"samples_epoch{epoch:03d}.png"), 8,
                          f"{SCRIPT}: epoch {epoch} (EMA, DDIM 50)")
                save_checkpoint({"grids": snapshots, "y": None}, snap_path)
            save_checkpoint({"script": SCRIPT, "config": vars(args), "epoch": epoch, "model": model.state_dict(),
                             "ema": ema.state_dict(), "opt": opt.state_dict(), "loss_history": loss_history,
                             "rng": rng_state()}, ckpt_path)
        print(f"train: {train_s / max(1, args.epochs - start_epoch + 1):.1f} s/epoch, "
              f"{n_img / train_s:.0f} img/s, {n_img / train_s * flops / 1e9:.0f} GFLOP/s")
    if len(loss_history):
        plot_loss(loss_history, os.path.join(args.out_dir, "loss.png"), f"{SCRIPT}: training loss")

    # final samples with the chosen sampler, keeping every frame of the reverse process
    ema.eval()
    gen = torch.Generator(device).manual_seed(args.seed + 2)
    t0 = time.time()
    x0, ts, frames = sample(eps_fn, x_T, sched, args.sampler, args.steps, gen, keep_trajectory=True)
    sample_s = time.time() - t0
    label = f"{args.sampler.upper()} {len(ts) - 1} steps"
    save_grid(to_unit_range(x0), os.path.join(args.out_dir, "samples.png"), 8, f"{SCRIPT}: EMA, {label}")
    plot_strip(frames[:, :8], ts, os.path.join(args.out_dir, "strip.png"), f"{SCRIPT}: reverse process ({label})")
    torch.save({"frames": to_uint8(frames), "t": ts, "y": None, "nrow": 8},
               os.path.join(args.out_dir, "trajectory.pt"))
    print(f"sample: 64 digits, {label}, in {sample_s:.1f} s")
    if args.n_samples:
        t0, xs = time.time(), []
        for i in range(0, args.n_samples, 500):  # batches of 500 keep memory flat
            noise = torch.randn(min(500, args.n_samples - i), 1, 28, 28, generator=gen, device=device)
            xs.append(to_unit_range(sample(eps_fn, noise, sched, args.sampler, args.steps, gen)).cpu())
        torch.save({"x": torch.cat(xs), "y": None}, os.path.join(args.out_dir, "samples.pt"))
        print(f"sample: {args.n_samples} digits in {time.time() - t0:.1f} s -> samples.pt")
    print(f"outputs in {args.out_dir}/: " + ", ".join(sorted(os.listdir(args.out_dir))))


if __name__ == "__main__":
    main()
