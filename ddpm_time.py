r"""Time-conditioned DDPM on MNIST: train, sample, plot; every setting is a flag (get_args).

Papers: Ho, Jain, Abbeel 2020, "Denoising Diffusion Probabilistic Models", https://arxiv.org/abs/2006.11239
        Song, Meng, Ermon 2020, "Denoising Diffusion Implicit Models" (DDIM), https://arxiv.org/abs/2010.02502

    python ddpm_time.py                               # train 20 epochs, sample 64 digits, plot
    python ddpm_time.py --data-dir ~/mnist --resume   # MNIST already on disk; continue a killed run
    python ddpm_time.py --sample-only --sampler ddim --n-samples 1000   # digits for evaluate.py
    python ddpm_time.py --ckpt pretrained/ddpm_time.pt   # 64 digits from the shipped weights

Math (t in {1..T} as in the paper; x_0 is a digit, x_T noise; z ~ N(0, I), sigma_t = sqrt(beta_t)):
    schedule     beta_t linear 1e-4 .. 0.02 (or cosine);  alpha_bar_t = prod_{s<=t} (1 - beta_s)
    q_sample     x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,  eps ~ N(0, I)
    loss         || eps - eps_theta(x_t, t) ||^2,  t ~ U{1..T}
    predict_x0   x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), clipped to [0, 1]
    eps_from_x0  eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)
    ddpm_step    x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) + sigma_t z
    ddim_step    x_s = sqrt(alpha_bar_s) x_0 + sqrt(1 - alpha_bar_s) eps,  s < t  (eta = 0)
Conventions: training draws t in {1..T}; sampling runs t = T, ..., 1, with no noise added at t = 1.
    The course's schedule leaves sqrt(alpha_bar_T) = 0.219 of x_0 in x_T (compare_schedules.py).
    pixels: uint8 0..255 -> x = p / 255 in [0, 1] (as CS180); saved in [0, 1] or uint8. Every
    sampler step clips its x_0 to [0, 1] and uses the matching eps (Ho et al.'s clip_denoised).
Writes to --out-dir (runs/ddpm_time): ckpt.pt (every epoch, atomically), samples.png, loss.png,
    samples_epochNNN.png, snapshots.pt (SNAPSHOT_EPOCHS), trajectory.pt (make_gif.py), samples.pt.
What you can delete for an assignment (test_smoke.py does): without --resume, --sample-only and
    --ckpt, open_run (call prepare_out_dir), restore_run (start from an empty run) and the RNG
    state; find_idx_files' Kaggle dirs.
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

SCRIPT = "ddpm_time"
SNAPSHOT_EPOCHS = (1, 5, 10, 15, 20)  # grids saved after these epochs (if in the run) and the last
DDIM_STEPS = 50                        # --sampler ddim's --steps; the snapshots take --steps or 50
GRID = 64                              # samples.png and the snapshots: 8 rows of 8 digits
SAMPLE_BATCH = 500                     # --n-samples are drawn this many at a time
TRAIN_KEYS = ("limit", "channels", "T", "schedule", "batch_size", "lr", "lr_decay", "weight_decay",
              "ema_decay", "seed")
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
    ap = argparse.ArgumentParser(description="Time-conditioned DDPM on MNIST")
    positive = number(float, 0, lo_included=False)  # a flag's type: a number > 0
    g = ap.add_argument_group("data")
    g.add_argument("--data-dir", default="./data", help="MNIST folder (downloaded here if missing)")
    g.add_argument("--limit", type=number(int, 0), default=0, help="first N digits only (0: all)")
    g = ap.add_argument_group("model")
    g.add_argument("--channels", type=number(int, 8), nargs=3, default=[16, 64, 64],
                   help="UNet widths at 28, 14, 7 px")
    g = ap.add_argument_group("diffusion")
    g.add_argument("--T", type=number(int, 2), default=300, help="number of diffusion steps")
    g.add_argument("--schedule", choices=["linear", "cosine"], default="linear", help="of beta_t")
    g = ap.add_argument_group("training")
    g.add_argument("--epochs", type=number(int, 0), default=20, help="passes over the data")
    g.add_argument("--batch-size", type=number(int, 1), default=128, help="digits per step")
    g.add_argument("--lr", type=positive, default=1e-3, help="AdamW learning rate")
    g.add_argument("--lr-decay", type=positive, default=1.0, help="lr *= this^(1/epochs) per epoch")
    g.add_argument("--weight-decay", type=number(float, 0), default=0.01, help="AdamW's (0: Adam)")
    g.add_argument("--ema-decay", type=number(float, 0, 1), default=0.999, help="EMA of weights")
    g = ap.add_argument_group("sampling")
    g.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm",
                   help="ddpm (all T steps, the course's; unguided, it beats DDIM) or ddim")
    g.add_argument("--steps", type=number(int, 1), help="DDIM steps (default 50); DDPM runs all T")
    g.add_argument("--n-samples", type=number(int, 0), default=0, help="also N into samples.pt")
    g = ap.add_argument_group("run")
    g.add_argument("--out-dir", default=f"runs/{SCRIPT}", help="checkpoint, plots, samples go here")
    g.add_argument("--resume", action="store_true", help="continue training from ckpt.pt")
    g.add_argument("--sample-only", action="store_true", help="sample from ckpt.pt, no training")
    g.add_argument("--ckpt", default="", help="sample this file (implies --sample-only)")
    g.add_argument("--seed", type=number(int, 0), default=0, help="same seed, same run")
    g.add_argument("--device", default="auto", help="auto (cuda, mps, then cpu), cpu, cuda, mps")
    args, given = parse_flags(ap, argv)  # given: the flags on the command line, checked by --resume
    if any(c % 8 for c in args.channels):
        ap.error(f"--channels must be multiples of 8 (GroupNorm's 8 groups), got {args.channels}")
    if args.sampler == "ddpm" and args.steps is not None:
        ap.error("--steps is for --sampler ddim: DDPM runs every one of the T steps")
    if args.sampler == "ddim":
        args.steps = args.steps or DDIM_STEPS
    return args, given
# --- shared: schedule ---
def make_schedule(T, kind, device):
    """beta, alpha, alpha_bar (T + 1,) by t = 0..T: float64 on the CPU, then float32 on device."""
    t = torch.arange(T + 1, dtype=torch.float64)
    if kind == "linear":  # Ho et al.: beta_1 = 1e-4 .. beta_T = 0.02, evenly spaced
        beta = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    elif kind == "cosine":  # Nichol & Dhariwal: alpha_bar_t = f(t) / f(0),
        s = 0.008           # f(t) = cos^2((t/T + s) / (1 + s) * pi/2)
        f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        beta = (1 - f[1:] / f[:-1]).clamp(max=0.999)  # clipped: the last step is not singular
    else:  # a new schedule is one more branch here (and a name in --schedule's choices)
        raise ValueError(f"unknown schedule {kind!r}")
    beta = torch.cat([torch.zeros(1, dtype=torch.float64), beta])  # beta_0 = 0: t = 0 is x_0
    alpha = 1 - beta
    alpha_bar = torch.cumprod(alpha, 0)
    table = dict(beta=beta, alpha=alpha, alpha_bar=alpha_bar)
    return {k: v.float().to(device) for k, v in table.items()}
# --- shared: forward process ---
def q_sample(x0, t, eps, sched):
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, for a batch of t (B,)."""
    ab = sched["alpha_bar"][t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps
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
# --- shared: sampler ---
def predict_x0(x_t, t, eps, sched):
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t): q_sample solved for x_0."""
    ab = sched["alpha_bar"][t]
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

def eps_from_x0(x_t, t, x0, sched):
    """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t): q_sample solved for eps."""
    ab = sched["alpha_bar"][t]
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

def ddpm_step(x_t, t, eps, sched, gen):
    """Algorithm 2 of Ho et al.: sigma_t^2 = beta_t, and z = 0 at t = 1 (x_0 is the mean),
    x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) + sigma_t z."""
    beta, alpha, ab = sched["beta"][t], sched["alpha"][t], sched["alpha_bar"][t]
    mean = (x_t - beta / (1 - ab).sqrt() * eps) / alpha.sqrt()
    if t == 1:
        return mean
    z = torch.randn(x_t.shape, generator=gen).to(x_t.device)  # drawn on the CPU, from gen
    return mean + beta.sqrt() * z

def ddim_step(x0, eps, t_prev, sched):
    """DDIM (eta = 0): x_s = sqrt(alpha_bar_s) x_0 + sqrt(1 - alpha_bar_s) eps, s = t_prev < t."""
    ab_prev = sched["alpha_bar"][t_prev]
    return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps

def timesteps(sampler, T, steps):
    """The t the sampler visits, T down to 0: every one for DDPM, `steps` evenly spaced for DDIM."""
    if sampler == "ddpm":
        return list(range(T, -1, -1))                 # T, T-1, ..., 1, 0
    return torch.linspace(T, 0, min(steps, T) + 1).round().long().tolist()  # 300, 294, ..., 0

@torch.no_grad()
def sample(eps_fn, x_T, sched, sampler, steps, gen, path=None):
    """Reverse process from x_T to x_0 (returned); eps_fn(x_t, t) predicts eps, t an int in 1..T.
    Each step clips its x_0 to [0, 1], takes the eps that matches it, then a DDPM or DDIM step.
    `path`, a list if given, receives every x_t, one per t of timesteps() (for plots, GIFs)."""
    ts = timesteps(sampler, len(sched["beta"]) - 1, steps)
    x = x_T
    for t, t_prev in zip(ts[:-1], ts[1:]):
        if path is not None:
            path.append(x)
        x0 = predict_x0(x, t, eps_fn(x, t), sched).clamp(0, 1)
        eps = eps_from_x0(x, t, x0, sched)
        if sampler == "ddpm":
            x = ddpm_step(x, t, eps, sched, gen)
        else:
            x = ddim_step(x0, eps, t_prev, sched)
    if path is not None:
        path.append(x)
    return x
# --- shared: DDPM loss ---
def ddpm_loss(model, x0, sched):
    """|| eps - eps_theta(x_t, t) ||^2 for digits x_0 (B, 1, 28, 28) in [0, 1], t ~ U{1..T}."""
    T = len(sched["beta"]) - 1
    t = torch.randint(1, T + 1, (len(x0),), device=x0.device)     # t ~ U{1..T}
    eps = torch.randn_like(x0)
    x_t = q_sample(x0, t, eps, sched)
    return F.mse_loss(model(x_t, t), eps)
# --- shared: EMA ---
@torch.no_grad()
def ema_update(ema, model, decay, step):
    """theta_ema <- d theta_ema + (1 - d) theta, d = min(decay, (1 + step) / (10 + step))."""
    d = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - d)
# --- main ---------------------------------------------------------------------------------------
def main(argv=None):
    # setup: flags, device, the checkpoint of --resume / --sample-only
    args, given = get_args(argv)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    ckpt_path, ckpt = open_run(args, given, SCRIPT, TRAIN_KEYS)
    print(vars(args))

    def out(name):  # a file in --out-dir
        return os.path.join(args.out_dir, name)

    # the schedule, eps_theta(x_t, t), its EMA (which samples), AdamW
    sched = make_schedule(args.T, args.schedule, device)
    signal_left = sched["alpha_bar"][-1].sqrt().item()
    print(f"device {device}  threads {torch.get_num_threads()}  T={args.T} {args.schedule}  "
          f"sqrt(alpha_bar_T) = {signal_left:.3f} (signal left at t = T)")
    model = UNet(args.channels)
    model = model.to(device, memory_format=torch.channels_last)  # faster on CPU
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"UNet {n_params / 1e6:.2f}M parameters, channels {args.channels}")
    run = restore_run(ckpt, model, ema, opt, device, args.out_dir)

    # the grid: 8 rows of 8 digits; the same x_T every epoch
    grid_gen = torch.Generator().manual_seed(args.seed + 1)  # not the training RNG
    x_T = torch.randn(GRID, 1, 28, 28, generator=grid_gen).to(device)
    ddim_steps = args.steps or DDIM_STEPS  # the snapshots'

    def eps_fn(x, t):  # eps_theta(x_t, t) for an int t
        return ema(x, torch.full((len(x),), t, device=device))

    # train: all data on the device, no DataLoader; ckpt.pt every epoch
    if not args.sample_only and run["epoch"] < args.epochs:
        x_all = load_mnist(args.data_dir, limit=args.limit, device=device)[0]  # no labels
        print(f"training on {len(x_all)} digits")
        step = len(run["loss_history"])  # optimizer steps so far
        first = run["epoch"] + 1
        train_s = 0.0
        for epoch in range(first, args.epochs + 1):
            for group in opt.param_groups:
                group["lr"] = args.lr * args.lr_decay ** ((epoch - 1) / args.epochs)
            losses = []  # on the device: no host sync per step
            with EpochLog(epoch, args.epochs, len(x_all), losses, run["epoch"]) as log:
                for idx in torch.randperm(len(x_all), device=device).split(args.batch_size):
                    loss = ddpm_loss(model, x_all[idx], sched)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    ema_update(ema, model, args.ema_decay, step)
                    step += 1
                    losses.append(loss.detach())
                    log.step(len(idx))  # progress bar, NaN stop, Ctrl-C
            run["loss_history"] = torch.cat([run["loss_history"], torch.stack(losses).cpu()])
            run["epoch"] = epoch
            train_s += log.seconds
            if epoch in SNAPSHOT_EPOCHS or epoch == args.epochs:
                x0 = sample(eps_fn, x_T, sched, "ddim", ddim_steps, None)
                title = f"{SCRIPT}: epoch {epoch} (EMA, DDIM {ddim_steps})"
                save_snapshot(run, epoch, x0, None, args.out_dir, None, title)
            save_run(run, model, ema, opt, args, device, ckpt_path, SCRIPT)
        n = args.epochs - first + 1
        print(f"train: {train_s / n:.1f} s/epoch, {n * len(x_all) / train_s:.0f} img/s")
    if len(run["loss_history"]):
        plot_loss(run["loss_history"], out("loss.png"), f"{SCRIPT}: training loss")

    # figures: the grid with --sampler, and its reverse process
    gen = torch.Generator().manual_seed(args.seed + 2)  # the sampler's noise z
    t0 = time.time()
    path = []  # every x_t, for make_gif.py
    x0 = sample(eps_fn, x_T, sched, args.sampler, args.steps, gen, path)
    ts = timesteps(args.sampler, args.T, args.steps)  # the t of each x_t
    label = f"{args.sampler.upper()} {len(ts) - 1} steps"
    print(f"sample: {len(x0)} digits, {label}, in {time.time() - t0:.1f} s")
    save_grid(x0, out("samples.png"), 8, f"{SCRIPT}: EMA, {label}")
    frames = to_uint8(torch.stack(path)).cpu()  # (len(ts), B, 1, 28, 28)
    trajectory = {"frames": frames, "t": torch.tensor(ts), "y": None, "nrow": 8}
    save_atomic(trajectory, out("trajectory.pt"))

    # samples: N digits for evaluate.py, SAMPLE_BATCH at a time (memory stays flat)
    if args.n_samples:
        t0 = time.time()
        xs = []
        for i in range(0, args.n_samples, SAMPLE_BATCH):
            n = min(SAMPLE_BATCH, args.n_samples - i)
            noise = torch.randn(n, 1, 28, 28, generator=gen).to(device)
            x0 = sample(eps_fn, noise, sched, args.sampler, args.steps, gen)
            xs.append(x0.clamp(0, 1).cpu())  # x_0 in [0, 1]
        samples = {"x": torch.cat(xs), "y": None, "config": vars(args), "epoch": run["epoch"]}
        save_atomic(samples, out("samples.pt"))
        print(f"sample: {args.n_samples} digits in {time.time() - t0:.1f} s -> samples.pt")
    print(f"outputs in {args.out_dir}/: " + ", ".join(sorted(os.listdir(args.out_dir))))
    figures = [out(f) for f in ("samples.png", "loss.png")]
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
# --- shared: MNIST ---
def find_idx_files(data_dir, train):
    """The IDX image and label paths, or None: in DIR, DIR/MNIST/raw (torchvision), or Kaggle's."""
    names = [f"{'train' if train else 't10k'}-{k}-ubyte" for k in ("images-idx3", "labels-idx1")]
    for folder in ("", "MNIST/raw", "raw", "archive"):
        for files in (names, [n.replace("-idx", ".idx") for n in names]):
            paths = [os.path.join(data_dir, folder, n) for n in files]
            paths = [os.path.join(p, n) if os.path.isdir(p) else p for p, n in zip(paths, files)]
            if all(os.path.isfile(p) for p in paths):
                return paths
def read_idx(path, ndim):
    """One IDX file (bytes 0, 0, 8, ndim; ndim 4-byte big-endian sizes; uint8s) as a tensor."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != bytes([0, 0, 8, ndim]):
        raise ValueError(f"{path} is not an IDX file of {ndim}-d uint8 values")
    sizes = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    values = data[4 + 4 * ndim:]
    if len(values) != math.prod(sizes) or not values:
        raise ValueError(f"{path} holds {len(values)} values, its header says {sizes}")
    return torch.frombuffer(bytearray(values), dtype=torch.uint8).view(sizes)
def load_mnist(data_dir, train=True, limit=0, device="cpu"):
    """Digits x = p / 255 in [0, 1] (N, 1, 28, 28), pixels p; labels (N,); limit > 0: the first"""
    if find_idx_files(data_dir, train) is None:
        try:
            import torchvision  # here, not at the top: only a download needs it
            torchvision.datasets.MNIST(data_dir, train=train, download=True)
        except Exception as e:  # offline, no permission, ...: say where the files go instead
            die(f"MNIST is not in {data_dir!r} and could not be downloaded ({type(e).__name__}): "
                f"put its four IDX files (train-images-idx3-ubyte, ...) there, or pass --data-dir")
    paths = find_idx_files(data_dir, train)
    try:
        images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1).long()
    except Exception as e:
        die(f"cannot read MNIST IDX files {paths}: {e}")
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        die(f"{paths[0]} does not hold 28x28 MNIST digits matching {paths[1]}")
    images, labels = images[:limit or None], labels[:limit or None]
    return images.unsqueeze(1).float().div(255).to(device), labels.to(device)
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
# --- shared: loss plot ---
def plot_loss(losses, path, title):
    """Per-step loss (light) and its moving average (dark), log scale."""
    k = max(1, len(losses) // 100)  # the moving average's window
    ax = Figure(figsize=(6, 3.5)).subplots()
    ax.plot(losses.numpy(), alpha=0.3, lw=0.5, label="per step")
    mean = losses.unfold(0, k, 1).mean(1)
    ax.plot(range(k - 1, len(losses)), mean.numpy(), lw=1.5, label=f"mean of {k} steps")
    ax.set(yscale="log", xlabel="step", ylabel="MSE loss", title=title)
    ax.legend()
    ax.figure.savefig(path, dpi=100, bbox_inches="tight")
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
