r"""Time-conditioned flow matching on MNIST: train, sample, plot. No flags needed to run it.

Papers: Lipman et al. 2022, "Flow Matching for Generative Modeling", https://arxiv.org/abs/2210.02747
        Liu, Gong, Liu 2022, "Flow Straight and Fast", https://arxiv.org/abs/2209.03003

    python flow_time.py                                  # train 15 epochs, sample 64 digits, plot
    python flow_time.py --data-dir ~/mnist --resume      # MNIST on disk; continue a killed run
    python flow_time.py --ckpt pretrained/flow_time.pt   # 64 digits from the shipped weights
    python flow_time.py --sample-only --sampler heun --steps 10 --n-samples 1000  # for evaluate.py

Math (t in [0, 1]; x_0 is noise, x_1 a digit: the OPPOSITE of DDPM, whose x_0 is the digit):
    interpolate      x_t = (1 - t) x_0 + t x_1,  x_0 ~ N(0, I): a straight line from noise to digit
    target_velocity  u = d x_t / dt = x_1 - x_0, the same at every t of one line
    flow_loss        || u - u_theta(x_t, t) ||^2,  t ~ U[0, 1)
    euler_step       x_{t+dt} = x_t + dt u(x_t, t)                 1 network evaluation (NFE) a step
    heun_step        x' = x_t + dt u(x_t, t),  x_{t+dt} = x_t + dt (u(x_t, t) + u(x', t + dt)) / 2
    flow_sample      t = 0 (noise) to t = 1 (a digit) in --steps steps; Heun's last step is Euler's
Conventions:
    t: training draws t ~ U[0, 1); sampling visits t = i / steps, i = 0..steps. Our t counts signal,
    DDPM's noise: x_t is DDPM's x at noise level 1 - t, mixed linearly. u predicts both ends:
    x_1 = x_t + (1 - t) u, x_0 = x_t - t u. The UNet (the DDPM scripts') sees --time-scale * t =
    1000 t: its sinusoids' frequencies run from 1 to 1/10000, and would barely see t in [0, 1].
    pixels: uint8 p -> x = p / 255 in [0, 1] (as CS180); saved clamped to [0, 1], or as uint8.
    x_t is never clipped; clip_x1 (--clip, default) aims each step at its x_1 clamped to [0, 1].
    NFE, network evaluations a sample (printed, in samples.pt): Euler 1 a step, Heun 2 (last: 1).
Course (CS180 Fall 2025, 5B): own UNet (t through an MLP), Adam 1e-2 decayed 10x over the run
    (--lr 1e-2 --lr-decay 0.1 --weight-decay 0). Ours: ddpm_time.py's UNet, AdamW 1e-3, batch 128,
    EMA; besides the method only 15 epochs (not 20) and the time input (1000 t, not 1..T = 300).
Writes to --out-dir (runs/flow_time): ckpt.pt (every epoch, atomically), samples_epochNNN.png
    (epochs 1, 5, 10, 15, last), samples.png, loss.png, trajectory.pt and snapshots.pt (make_gif.py:
    GIFs, strip.png), samples.pt (evaluate.py).
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

SCRIPT = "flow_time"
SNAPSHOT_EPOCHS = (1, 5, 10, 15)   # grids saved after these epochs (if in the run), and the last
GRID_ROWS = GRID_COLS = 8          # samples.png and the snapshots: 8 rows of 8 digits
TRAIN_KEYS = ("limit", "channels", "time_scale", "batch_size", "lr", "lr_decay", "weight_decay",
              "ema_decay", "seed")  # the flags a --resume keeps
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
# --- config --------------------------------------------------------------------------------------
def get_args(argv=None):
    ap = argparse.ArgumentParser(description="Time-conditioned flow matching on MNIST")
    positive = number(float, 0, lo_included=False)  # a number > 0
    g = ap.add_argument_group("data")
    g.add_argument("--data-dir", default="./data", help="MNIST folder (downloaded here if missing)")
    g.add_argument("--limit", type=number(int, 0), default=0, help="first N digits only (0: all)")
    g = ap.add_argument_group("model")
    g.add_argument("--channels", type=number(int, 8), nargs=3, default=[16, 64, 64],
                   help="UNet widths at 28, 14, 7 px")
    g.add_argument("--time-scale", type=positive, default=1000.0, help="the UNet sees t times this")
    g = ap.add_argument_group("training")
    g.add_argument("--epochs", type=number(int, 0), default=15, help="passes over the training set")
    g.add_argument("--batch-size", type=number(int, 1), default=128, help="digits per AdamW step")
    g.add_argument("--lr", type=positive, default=1e-3, help="AdamW learning rate (course: 1e-2)")
    g.add_argument("--lr-decay", type=positive, default=1.0, help="lr x this^(1 / epochs) an epoch")
    g.add_argument("--weight-decay", type=number(float, 0), default=0.01, help="AdamW's (0: Adam)")
    g.add_argument("--ema-decay", type=number(float, 0, 1), default=0.999, help="weights' EMA")
    g = ap.add_argument_group("sampling")
    g.add_argument("--sampler", choices=["euler", "heun"], default="euler", help="the ODE solver")
    g.add_argument("--steps", type=number(int, 1), default=50, help="equal steps from t = 0 to 1")
    g.add_argument("--clip", action=argparse.BooleanOptionalAction, default=True,
                   help="aim each step at the predicted digit x_1 clipped to [0, 1] (clip_x1)")
    g.add_argument("--n-samples", type=number(int, 0), default=0, help="N digits into samples.pt")
    g = ap.add_argument_group("run")
    g.add_argument("--out-dir", default=f"runs/{SCRIPT}", help="checkpoint, plots and samples")
    g.add_argument("--resume", action="store_true", help="continue training from ckpt.pt")
    g.add_argument("--sample-only", action="store_true", help="sample from ckpt.pt, no training")
    g.add_argument("--ckpt", default="", help="sample this file (implies --sample-only)")
    g.add_argument("--seed", type=number(int, 0), default=0, help="same seed and device: same run")
    g.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or cpu, cuda, mps")
    args, given = parse_flags(ap, argv)  # given: the flags on the command line (for --resume)
    if any(c % 8 for c in args.channels):
        ap.error(f"--channels must be multiples of 8 (GroupNorm's 8 groups): {args.channels}")
    args.nfe = count_nfe(args.sampler, args.steps)  # network evaluations a sample
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
# --- training step: the flow loss ----------------------------------------------------------------
def flow_loss(model, x1, scale):
    """|| u - u_theta(x_t, t) ||^2, u = x_1 - x_0, x_0 ~ N(0, I), t ~ U[0, 1), for digits x_1
    (B, 1, 28, 28) in [0, 1]; x_t lies on the straight line between x_0 and x_1."""
    x0 = torch.randn_like(x1)
    t = torch.rand(len(x1), device=x1.device)                   # t ~ U[0, 1)
    u_pred = velocity(model, interpolate(x0, x1, t), t, scale)
    return F.mse_loss(u_pred, target_velocity(x0, x1))
# --- shared: EMA ---
@torch.no_grad()
def ema_update(ema, model, decay, step):
    """theta_ema <- d theta_ema + (1 - d) theta, d = min(decay, (1 + step) / (10 + step))."""
    d = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - d)
# --- main ----------------------------------------------------------------------------------------
def main(argv=None):
    # setup: flags, device, and the checkpoint to resume or sample from
    args, given = get_args(argv)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    ckpt_path, ckpt = open_run(args, given, SCRIPT, TRAIN_KEYS)
    print(vars(args))
    print(f"device {device}  threads {torch.get_num_threads()}")
    def out(name):  # a file in --out-dir
        return os.path.join(args.out_dir, name)

    # the model: u_theta(x_t, t), its EMA (which samples), AdamW
    model = UNet(args.channels).to(device, memory_format=torch.channels_last)  # faster on CPU
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    print(f"UNet {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    run = restore_run(ckpt, model, ema, opt, device, args.out_dir)  # epochs done, losses

    # the grid: the same noise x_0 after every epoch
    gen = torch.Generator().manual_seed(args.seed + 1)  # not the training RNG
    x_0 = torch.randn(GRID_ROWS * GRID_COLS, 1, 28, 28, generator=gen).to(device)
    def u_ema(x, t):  # u_theta(x_t, t) of the EMA weights, t a float
        return velocity(ema, x, torch.full((len(x),), t, device=device), args.time_scale)
    u_fn = clip_x1(u_ema) if args.clip else u_ema  # what the sampler follows

    # train: all digits on the device (no DataLoader), a checkpoint each epoch
    if not args.sample_only and run["epoch"] < args.epochs:
        x_all, _ = load_mnist(args.data_dir, limit=args.limit, device=device)  # the x_1
        step = len(run["loss_history"])  # optimizer steps so far
        first = run["epoch"] + 1
        train_s = 0.0
        for epoch in range(first, args.epochs + 1):
            for group in opt.param_groups:
                group["lr"] = args.lr * args.lr_decay ** ((epoch - 1) / args.epochs)
            losses = []  # on the device: no host sync a step
            batches = torch.randperm(len(x_all), device=device).split(args.batch_size)
            with EpochLog(epoch, args.epochs, len(x_all), losses, run["epoch"]) as log:
                for idx in batches:
                    loss = flow_loss(model, x_all[idx], args.time_scale)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    ema_update(ema, model, args.ema_decay, step)
                    step += 1
                    losses.append(loss.detach())
                    log.step(len(idx))  # progress bar, NaN stop, Ctrl-C
            losses = torch.stack(losses).cpu()
            run["loss_history"] = torch.cat([run["loss_history"], losses])
            run["epoch"] = epoch
            train_s += log.seconds
            if epoch in SNAPSHOT_EPOCHS or epoch == args.epochs:
                x_1 = flow_sample(u_fn, x_0, "euler", args.steps)
                title = f"{SCRIPT}: epoch {epoch} (EMA, Euler {args.steps}, NFE {args.steps})"
                save_snapshot(run, epoch, x_1, None, args.out_dir, None, title)
            save_run(run, model, ema, opt, args, device, ckpt_path, SCRIPT)
        n = args.epochs - first + 1
        print(f"train: {train_s / n:.1f} s/epoch, {n * len(x_all) / train_s:.0f} img/s")
    if len(run["loss_history"]):
        plot_loss(run["loss_history"], out("loss.png"), f"{SCRIPT}: training loss")

    # figures: the grid (--sampler), and its path from noise to digits
    t0 = time.time()
    path = []  # every x_t, for make_gif.py
    x_1 = flow_sample(u_fn, x_0, args.sampler, args.steps, path)
    label = f"{args.sampler.capitalize()} {args.steps} steps, NFE {args.nfe}"
    if args.clip:
        label += ", x_1 clipped"
    print(f"sample: {len(x_1)} digits, {label}, in {time.time() - t0:.1f} s")
    save_grid(x_1, out("samples.png"), GRID_COLS, f"{SCRIPT}: EMA, {label}")
    frames = to_uint8(torch.stack(path)).cpu()  # (steps + 1, 64, 1, 28, 28)
    save_atomic({"frames": frames, "t": flow_timesteps(args.steps), "y": None,
                 "nrow": GRID_COLS}, out("trajectory.pt"))

    # samples: N digits for evaluate.py, in batches of 500 (memory stays flat)
    if args.n_samples:
        gen = torch.Generator().manual_seed(args.seed + 2)  # on the CPU
        t0 = time.time()
        xs = []
        for i in range(0, args.n_samples, 500):
            n = min(500, args.n_samples - i)  # the last batch: what is left
            noise = torch.randn(n, 1, 28, 28, generator=gen).to(device)
            xs.append(flow_sample(u_fn, noise, args.sampler, args.steps).clamp(0, 1).cpu())
        save_atomic({"x": torch.cat(xs), "y": None, "config": vars(args),
                     "epoch": run["epoch"]}, out("samples.pt"))
        print(f"sample: {args.n_samples} digits, {label}, in {time.time() - t0:.1f} s")
    print(f"outputs in {args.out_dir}/:", ", ".join(sorted(os.listdir(args.out_dir))))
    pngs = [out(name) for name in ("samples.png", "loss.png")]
    show(*[png for png in pngs if os.path.exists(png)])  # in a notebook

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
