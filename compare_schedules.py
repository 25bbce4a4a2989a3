r"""Linear vs cosine beta schedules, side by side: one time-conditioned DDPM trained under each.

Papers: Ho, Jain, Abbeel 2020 (DDPM, linear schedule), https://arxiv.org/abs/2006.11239
        Nichol & Dhariwal 2021 (cosine schedule), https://arxiv.org/abs/2102.09672

    python compare_schedules.py                              # both schedules, 4 epochs each
    python compare_schedules.py --data-dir ~/mnist --resume  # MNIST on disk; continue a killed run
    python compare_schedules.py --resume --sampler ddim      # sample again (DDIM), no training
    python evaluate.py runs/compare_schedules/{linear,cosine}/samples.pt  # score both

Only the schedule differs: each run starts from torch.manual_seed(seed) (the same weights, batches,
t and eps), its samples from the same x_T and sampler noise z (DDPM over all T steps by default).
Math (t in {1..T}; x_0 a digit, x_T noise; the model, loss and sampler are ddpm_time.py's):
    linear   beta_t evenly spaced from beta_1 = 1e-4 to beta_T = 0.02
    cosine   alpha_bar_t = f(t) / f(0), f(t) = cos^2((t/T + 0.008) / 1.008 * pi/2), beta_t <= 0.999
    alpha_bar_t = prod_{s<=t} (1 - beta_s),  log-SNR(t) = log(alpha_bar_t / (1 - alpha_bar_t))
    q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)
    L_T = KL(q(x_T | x_0) || N(0, I)) = [ab ||x_0||^2 - D (ab + log(1 - ab))] / 2, ab = alpha_bar_T
Training shows the model x_T ~ q(x_T | x_0), sampling starts from N(0, I): L_T (D = 784), the DDPM
bound's prior term, and x_T along the mean digit (x_T.m) measure the gap. Compare samples, not loss.
Conventions: ddpm_time.py's; each sampler step clips x_0 to [0, 1], as cosine's beta_T = 0.999 needs
Writes to --out-dir (default runs/compare_schedules), atomically: schedules.png, forward.png,
    samples.png, results.json (the table, its flags); per schedule NAME/ckpt.pt (ddpm_time.py's),
    NAME/samples.pt and NAME/result.pt (seconds trained; the samples' grid, row, flags: --resume
    samples again unless every flag behind them is the same).
What you can delete for an assignment: without --resume, open_runs, load_result, restore_run and
    the RNG state; start_gap and prior_kl explain the result but train nothing.
"""
import argparse
import copy
import json
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

SCRIPT = "compare_schedules"
SCHEDULES = ("linear", "cosine")  # --schedules' choices (a third: a branch in make_schedule)
GRID = 64                         # digits per schedule in samples.png (the first 64 samples)
SAMPLE_BATCH = 500                # digits sampled at once: memory stays flat
N_STATS = 10_000                  # training digits used for the x_T statistics
FORWARD_COLS = 9                  # forward.png: t = 0 .. T in 9 evenly spaced columns
DDIM_STEPS = 50                   # --steps of --sampler ddim
TRAIN_KEYS = ("limit", "channels", "T", "batch_size", "lr", "ema_decay", "seed")  # training's
RESULT_KEYS = (*TRAIN_KEYS, "sampler", "steps", "n_samples")  # the samples' (and epochs trained)
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
    ap = argparse.ArgumentParser(description="Linear vs cosine beta schedules: one DDPM under each")
    count, whole = number(int, 1), number(int, 0)
    positive, fraction = number(float, 0, lo_included=False), number(float, 0, 1)
    g = ap.add_argument_group("data")
    g.add_argument("--data-dir", default="./data", help="MNIST folder (downloaded if missing)")
    g.add_argument("--limit", type=whole, default=0, help="train on the first N digits (0: all)")
    g = ap.add_argument_group("model")
    g.add_argument("--channels", type=number(int, 8), nargs=3, default=[16, 64, 64],
                   help="UNet widths at 28, 14, 7 px")
    g = ap.add_argument_group("diffusion")
    g.add_argument("--T", type=number(int, 2), default=300, help="diffusion steps (every schedule)")
    g.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES),
                   help="beta schedules to train and compare, in this order")
    g = ap.add_argument_group("training")
    g.add_argument("--epochs", type=count, default=4, help="passes over the data, per schedule")
    g.add_argument("--batch-size", type=count, default=128, help="digits per optimizer step")
    g.add_argument("--lr", type=positive, default=1e-3, help="AdamW learning rate")
    g.add_argument("--ema-decay", type=fraction, default=0.999, help="EMA of the weights: samples")
    g = ap.add_argument_group("sampling")
    g.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm", help="samples' sampler")
    g.add_argument("--steps", type=count, default=None, help="DDIM steps (default 50); DDPM: all T")
    g.add_argument("--n-samples", type=whole, default=1000, help="digits in samples.pt (0: none)")
    g = ap.add_argument_group("run")
    g.add_argument("--out-dir", default=f"runs/{SCRIPT}", help="figures; a folder per schedule")
    g.add_argument("--resume", action="store_true", help="continue a killed run (keeps finished)")
    g.add_argument("--seed", type=whole, default=0, help="same seed, same run (on the same device)")
    g.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or cpu, cuda, mps")
    args, given = parse_flags(ap, argv)  # given: the flags on the command line, for --resume
    if any(c % 8 for c in args.channels):
        ap.error(f"--channels must be multiples of 8 (GroupNorm's 8 groups), got {args.channels}")
    if len(set(args.schedules)) < len(args.schedules):
        ap.error(f"--schedules names a schedule twice: {args.schedules}")
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
# --- the start of sampling: q(x_T | x_0) against N(0, I) ---------------------------------------
def prior_kl(x0, alpha_bar_T):
    """L_T = KL(q(x_T | x_0) || N(0, I)) = [ab ||x_0||^2 - D (ab + log(1 - ab))] / 2 nats, D = 784,
    averaged over the digits x0 (N, 1, 28, 28). In float64: x0, alpha_bar_T on the CPU."""
    ab = alpha_bar_T.double()
    sq = x0.double().flatten(1).square().sum(1)                      # ||x_0||^2 per digit, (N,)
    return (0.5 * (ab * sq - x0[0].numel() * (ab + torch.log1p(-ab)))).mean().item()

def start_gap(x0, alpha_bar_T):
    """How far training's x_T ~ q(x_T | x_0), x0 (N, 1, 28, 28) on the CPU, is from N(0, I): L_T,
    and x_T's mean along the unit mean digit m / ||m||, sqrt(alpha_bar_T) ||m|| (N(0, I): 0)."""
    x_T_along_u = alpha_bar_T.sqrt() * x0.mean(0).norm()
    return {"prior_kl": prior_kl(x0, alpha_bar_T), "xT_proj": x_T_along_u.item()}
# --- one schedule: train it, then sample it ----------------------------------------------------
def train_schedule(sched, ckpt, x_all, cfg, device, out, train_s):
    """The model under one schedule from torch.manual_seed(seed) (every schedule's weights, batches,
    t, eps the same), or from ckpt. Writes out/ckpt.pt and out/result.pt (seconds) every epoch."""
    torch.manual_seed(cfg.seed)
    model = UNet(cfg.channels).to(device, memory_format=torch.channels_last)  # faster on CPU
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    run = restore_run(ckpt, model, ema, opt, device, out)  # epochs, losses (and weights) so far
    step = len(run["loss_history"])  # optimizer steps so far
    new_s, first = 0.0, run["epoch"] + 1
    for epoch in range(first, cfg.epochs + 1):
        losses = []  # this epoch's, kept on the device: no host sync per step
        with EpochLog(epoch, cfg.epochs, len(x_all), losses, run["epoch"]) as log:
            for idx in torch.randperm(len(x_all), device=device).split(cfg.batch_size):
                loss = ddpm_loss(model, x_all[idx], sched)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                ema_update(ema, model, cfg.ema_decay, step)
                step += 1
                losses.append(loss.detach())
                log.step(len(idx))  # progress bar, NaN stop, Ctrl-C
        run["loss_history"] = torch.cat([run["loss_history"], torch.stack(losses).cpu()])
        run["epoch"], new_s = epoch, new_s + log.seconds
        save_run(run, model, ema, opt, cfg, device, os.path.join(out, "ckpt.pt"), SCRIPT)
        save_atomic({"epoch": epoch, "train_s": train_s + new_s}, os.path.join(out, "result.pt"))
    if first <= cfg.epochs:
        n = cfg.epochs - first + 1
        print(f"{cfg.schedule}: train: {new_s / n:.1f} s/epoch, {n * len(x_all) / new_s:.0f} img/s")
    return ema, run, train_s + new_s

def run_schedule(name, sched, ckpt, x_all, x_T, args, device):
    """Train (or continue) one schedule, then sample x_T with its EMA weights, unless NAME/result.pt
    holds samples made with every one of the same flags. Returns its table row and its grid."""
    out = os.path.join(args.out_dir, name)
    cfg = argparse.Namespace(**vars(args), schedule=name)  # NAME/ckpt.pt's config: ddpm_time.py's
    stored = load_result(os.path.join(out, "result.pt")) if ckpt is not None else {}
    train_s = stored.get("train_s", 0.0)
    ema, run, train_s = train_schedule(sched, ckpt, x_all, cfg, device, out, train_s)
    flags = {**{k: getattr(args, k) for k in RESULT_KEYS}, "epoch": run["epoch"]}  # the samples'
    samples_path = os.path.join(out, "samples.pt")
    if stored.get("flags") == flags and (args.n_samples == 0 or os.path.exists(samples_path)):
        print(f"{name}: finished earlier, not retrained")
        return stored["row"], stored["grid"]
    gen = torch.Generator().manual_seed(args.seed + 2)  # the sampler's noise z, the same for all

    def eps_fn(x, t):  # eps_theta(x_t, t), the EMA weights'
        return ema(x, torch.full((len(x),), t, device=device))
    t0 = time.time()
    x0 = torch.cat([sample(eps_fn, x.to(device), sched, args.sampler, args.steps, gen).cpu()
                    for x in x_T.split(SAMPLE_BATCH)])  # (len(x_T), 1, 28, 28)
    sample_s = time.time() - t0
    if args.n_samples:
        save_atomic({"x": x0[:args.n_samples].clamp(0, 1), "y": None, "config": vars(cfg),
                     "epoch": run["epoch"]}, samples_path)  # the first N digits, for evaluate.py
    last_epoch = run["loss_history"][-math.ceil(len(x_all) / args.batch_size):]  # its steps
    row = {"schedule": name, "final_loss": last_epoch.mean().item(), "train_s": train_s,
           "sample_s": sample_s, "sqrt_alpha_bar_T": sched["alpha_bar"][-1].sqrt().item(),
           "sample_ink": x0[:args.n_samples or GRID].clamp(0, 1).mean().item()}  # samples.pt's
    grid = to_uint8(x0[:GRID])  # the first GRID digits: samples.png
    save_atomic({"epoch": run["epoch"], "train_s": train_s, "flags": flags, "row": row,
                 "grid": grid}, os.path.join(out, "result.pt"))
    print(f"{name}: {len(x0)} digits sampled ({args.sampler}) in {sample_s:.1f} s")
    return row, grid
# --- main ---------------------------------------------------------------------------------------
def main(argv=None):
    # setup: flags, device, a folder per schedule, data, schedules
    args, given = get_args(argv)
    device = pick_device(args.device)
    ckpts = open_runs(args, given)  # the flags not given: the stored ones
    print(vars(args))
    x_all = load_mnist(args.data_dir, limit=args.limit, device=device)[0]
    scheds = {n: make_schedule(args.T, n, device) for n in args.schedules}
    print(f"device {device}  threads {torch.get_num_threads()}  T={args.T}  "
          f"training on {len(x_all)} digits")
    # the same x_T for all, from its own generator (not the training RNG)
    x_T_gen = torch.Generator().manual_seed(args.seed + 1)
    x_T = torch.randn(max(GRID, args.n_samples), 1, 28, 28, generator=x_T_gen)

    # train each schedule in turn (the same seed), sample it (the same x_T, z)
    runs = {n: run_schedule(n, scheds[n], ckpts.get(n), x_all, x_T, args, device)
            for n in args.schedules}

    # figures: the schedules, one digit's forward process, the samples
    png = {f: os.path.join(args.out_dir, f"{f}.png") for f in ("schedules", "forward", "samples")}
    cpu_scheds = {n: make_schedule(args.T, n, "cpu") for n in args.schedules}  # float64
    x_stats = x_all[:N_STATS].cpu()  # the first N_STATS training digits
    plot_schedules(cpu_scheds, png["schedules"])
    plot_forward(x_stats[:1], cpu_scheds, args.T, args.seed + 4, png["forward"])
    plot_samples(runs, args, png["samples"])

    # results: the table and the flags that made it, in results.json and on screen
    rows = [{**row, **start_gap(x_stats, cpu_scheds[n]["alpha_bar"][-1])}
            for n, (row, _) in runs.items()]
    data_ink = x_all.mean().item()
    save_json_atomic({"config": vars(args), "rows": rows, "data_ink": data_ink},
                     os.path.join(args.out_dir, "results.json"))
    print_comparison(rows, data_ink)
    print(f"outputs in {args.out_dir}/: " + ", ".join(sorted(os.listdir(args.out_dir))))
    show(*png.values())  # in a notebook: below the cell
# --- this script's bookkeeping: a folder per schedule, resume, results.json --------------------
def open_runs(args, given):
    """A subfolder of --out-dir per schedule; one holding a comparison needs --resume. Then open_run
    reads each schedule's ckpt.pt: the flags not given take its values, the same in every one (only
    the schedule may differ), and all train as far as the furthest. Returns {name: checkpoint}."""
    ckpt_paths = [os.path.join(args.out_dir, n, "ckpt.pt") for n in args.schedules]
    if not args.resume and any(os.path.exists(p) for p in ckpt_paths):
        die(f"{args.out_dir} holds a comparison: pass --resume to go on, or another --out-dir")
    ckpts, epochs = {}, []  # epochs: each checkpoint's --epochs
    for name in args.schedules:
        out = os.path.join(args.out_dir, name)
        resume = args.resume and os.path.exists(os.path.join(out, "ckpt.pt"))
        run_args = argparse.Namespace(**{**vars(args), "out_dir": out, "ckpt": "",
                                         "sample_only": False, "resume": resume})
        path, ckpt = open_run(run_args, given, SCRIPT, TRAIN_KEYS)  # run_args: the stored flags
        if ckpt is None:
            continue
        for k in TRAIN_KEYS:
            if ckpts and getattr(run_args, k) != getattr(args, k):
                flag = "--" + k.replace("_", "-")
                die(f"{path} was trained with {flag} {getattr(run_args, k)}, the others with "
                    f"{flag} {getattr(args, k)}: only the schedule may differ (or --out-dir)")
            setattr(args, k, getattr(run_args, k))
        ckpts[name] = ckpt
        epochs.append(run_args.epochs)
    if epochs and "epochs" not in given:
        args.epochs = max(epochs)
    return ckpts

def load_result(path):
    """NAME/result.pt: seconds trained and, once sampled, grid, row, flags; {} if unreadable."""
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # nothing to reuse: the schedule is sampled again
        return {}
# --- plots and the table: the comparison -------------------------------------------------------
def plot_schedules(scheds, path):
    """alpha_bar(t) and log-SNR(t) of each schedule (on the CPU: log-SNR in float64)."""
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    for name, s in scheds.items():
        ab = s["alpha_bar"][1:].double()                              # t = 1..T
        t = torch.arange(1, len(ab) + 1).numpy()
        axes[0].plot(t, ab.numpy(), label=f"{name}: sqrt(alpha_bar_T) = {ab[-1].sqrt().item():.4f}")
        axes[1].plot(t, (ab / (1 - ab)).log().numpy(), label=name)
    axes[0].set(xlabel="t", ylabel="alpha_bar", title="alpha_bar(t): signal variance in x_t")
    axes[1].set(xlabel="t", ylabel="log SNR", title="log(alpha_bar / (1 - alpha_bar))")
    for ax, where in zip(axes, ("lower left", "upper right")):  # where the curves are not
        ax.legend(fontsize=7, loc=where)
    fig.savefig(path, dpi=100, bbox_inches="tight")

def plot_forward(x0, scheds, T, seed, path):
    """One digit x0 (1, 1, 28, 28), the same eps, at FORWARD_COLS t in 0..T: a row per schedule."""
    ts = torch.linspace(0, T, FORWARD_COLS).round().long()          # the same t for every schedule
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x_t = torch.cat([q_sample(x0.expand(len(ts), -1, -1, -1), ts, eps, s) for s in scheds.values()])
    save_grid(x_t, path, len(ts), "q(x_t | x_0): one digit and eps under each schedule",
              list(scheds), [f"t={t}" for t in ts.tolist()])

def plot_samples(runs, args, path):
    """runs' grids (64, 1, 28, 28) uint8 side by side, 8 by 8, with a white column between."""
    blank = torch.full((GRID // 8, 1, 1, 28, 28), 255, dtype=torch.uint8)  # a white digit a row
    blocks = [torch.cat([grid.view(-1, 8, 1, 28, 28), blank], 1) for _, grid in runs.values()]
    grid = torch.cat(blocks, 1)[:, :-1]  # (8, 9 S - 1, ...): no white column at the end
    n_steps = len(timesteps(args.sampler, args.T, args.steps)) - 1
    col_labels = [name if c == 4 else "" for name in runs for c in range(9)][:-1]  # centred
    save_grid(grid.flatten(0, 1) / 255, path, 9 * len(runs) - 1,
              f"EMA samples, {args.sampler.upper()} {n_steps} steps, the same x_T and z "
              "for every schedule", None, col_labels)

def print_comparison(rows, data_ink):
    """The table: a row per schedule, then pure noise and the data for reference."""
    print(f"\n{'schedule':10s}{'final loss':>11s}{'train s':>9s}{'sample s':>9s}{'sqrt(ab_T)':>11s}"
          f"{'L_T nats':>10s}{'x_T.m':>8s}{'ink':>7s}")
    for r in rows:
        print(f"{r['schedule']:10s}{r['final_loss']:11.4f}{r['train_s']:9.0f}"
              f"{r['sample_s']:9.0f}{r['sqrt_alpha_bar_T']:11.4f}{r['prior_kl']:10.2f}"
              f"{r['xT_proj']:8.2f}{r['sample_ink']:7.3f}")
    print(f"{'N(0, I) / data':50s}{0:10.2f}{0:8.2f}{data_ink:7.3f}")
    print("final loss: the last epoch's (schedules not comparable). L_T: KL(q(x_T|x_0) || N(0,I)) "
          "per digit. x_T.m: x_T along the unit mean digit (sampling's: 0 +- 1). ink: mean pixel")

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
# --- shared: atomic JSON ---
def save_json_atomic(obj, path):
    """save_atomic for JSON (results you read or plot later)."""
    save_atomic(json.dumps(obj, indent=1).encode(), path, lambda data, f: f.write(data))
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
