r"""One-step denoiser on MNIST: a UNet maps a noisy digit z = x + sigma eps back to x (sigma = 0.5).

The warm-up of UC Berkeley CS180 (Fall 2024) Project 5B, part 1: before diffusion, one network
removes one fixed level of Gaussian noise in one step. Train, then look at what it does at other
noise levels (it never saw them) and measure it in PSNR.

    python denoise_single_step.py                                # 5 epochs, D = 32: train, figures, PSNR
    python denoise_single_step.py --data-dir ../shared/mnist     # MNIST already on disk (IDX files)
    python denoise_single_step.py --resume                       # continue a killed run from its checkpoint
    python denoise_single_step.py --eval-only                    # figures and PSNR from the saved checkpoint
    python denoise_single_step.py --D 128 --epochs 5 --batch-size 256 --lr 1e-4   # the CS180 spec exactly

Math (x a clean digit, eps ~ N(0, I) of the same shape, sigma a fixed noise level):
    z = x + sigma eps                                  the noisy digit (sigma = --sigma = 0.5 in training)
    loss = || D_theta(z) - x ||^2                      L2, the mean over pixels and batch (F.mse_loss)
    its minimiser is D(z) = E[x | z], the posterior mean: blurry where several digits fit z.
    PSNR = 10 log10(1 / MSE) dB, MSE = the mean over the 784 pixels of ONE image (peak value 1);
           the number reported is the mean of the per-image PSNRs over the test digits.
Conventions:
    pixels: the data set is uint8 0..255; x = p / 255 in [0, 1] (to_model_range, as in the DDPM
    scripts). z is not clipped: the model sees x + sigma eps.
    The denoised output is clipped to [0, 1] for PSNR and plots. The noisy input's PSNR uses the
    unclipped z (so it is about -20 log10 sigma: 6.0 dB at 0.5); plots show z clipped to [0, 1].
    Training draws fresh eps for every batch. Figures and PSNR use one fixed eps per test digit
    (generator seed + 1), scaled by each sigma, so every row and every point sees the same noise.
Model: the course's UNet (Conv = 3x3 conv + BatchNorm + GELU), hidden width D (the spec's D = 128 has
    16x the FLOPs of D = 32 and trains ~10x slower: ~45 min per epoch on a 2-core CPU), concatenated skips:
    28x28 ConvBlock(1, D) -> 14x14 DownBlock(D, D) -> 7x7 DownBlock(D, 2D) -> Flatten (1x1)
    -> Unflatten(2D, 2D) -> UpBlock(4D, D) -> UpBlock(2D, D) -> ConvBlock(2D, D) -> Conv2d(D, 1).
Writes to --out-dir (default runs/denoise_single_step):
    ckpt.pt (model, optimizer, epoch, config, loss history, RNG; every epoch, atomically),
    noising.png (the same test digits at every sigma in SIGMAS), loss.png, denoised_epoch001.png and
    denoised_final.png (rows: clean, noisy, denoised at --sigma), ood.png (noisy and denoised at
    every sigma), psnr.png and psnr.json (PSNR of noisy and denoised vs sigma on the test set).
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

SCRIPT = "denoise_single_step"
SIGMAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)  # noise levels of noising.png, ood.png and the PSNR sweep
CONFIG_KEYS = ("D", "sigma")                   # a checkpoint only fits a run with these values


# --- Config ------------------------------------------------------------------------------------
def get_args(argv=None):
    ap = argparse.ArgumentParser(description="One-step denoiser (UNet, L2) on MNIST at a fixed sigma")
    ap.add_argument("--data-dir", default="./data", help="MNIST folder (downloaded here if missing)")
    ap.add_argument("--out-dir", default=f"runs/{SCRIPT}", help="checkpoint, plots and PSNR go here")
    ap.add_argument("--epochs", type=int, default=5, help="passes over the 60,000 training digits")
    ap.add_argument("--batch-size", type=int, default=256, help="digits per optimizer step")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (the spec's 1e-4 is for D = 128)")
    ap.add_argument("--D", type=int, default=32, help="UNet hidden width (the spec's 128 is ~10x slower)")
    ap.add_argument("--sigma", type=float, default=0.5, help="noise level of training: z = x + sigma eps")
    ap.add_argument("--n-test", type=int, default=0, help="PSNR on the first N test digits (0: all 10,000)")
    ap.add_argument("--eval-only", action="store_true", help="load ckpt.pt, make figures and PSNR, no training")
    ap.add_argument("--resume", action="store_true", help="continue training from ckpt.pt")
    ap.add_argument("--limit", type=int, default=0, help="train on the first N digits only (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="same seed, same run (on the same device)")
    ap.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), or e.g. cpu")
    args = ap.parse_args(argv)
    if min(args.epochs, args.limit, args.n_test) < 0 or args.batch_size < 1 or args.lr <= 0:
        ap.error("--epochs, --limit and --n-test must be >= 0, --batch-size >= 1 and --lr > 0")
    if args.D < 1 or not args.sigma > 0:
        ap.error(f"need --D >= 1 and --sigma > 0 (got D={args.D}, sigma={args.sigma})")
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


# --- Noise ---------------------------------------------------------------------------------------
def add_noise(x, sigma, eps):
    """z = x + sigma eps: the noisy digit (not clipped). sigma = 0 gives x itself."""
    return x + sigma * eps


def one_per_digit(labels):
    """Index of the first image of each digit 0..9 (digits that do not occur are skipped)."""
    return torch.tensor([int((labels == k).nonzero()[0]) for k in range(10) if (labels == k).any()])


# --- Model -------------------------------------------------------------------------------------
# The course's building blocks; each keeps the spatial size unless it says otherwise.
def Conv(c_in, c_out):       # 3x3 conv, BatchNorm, GELU
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.GELU())


def DownConv(c_in, c_out):   # 3x3 conv with stride 2: H -> H / 2
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1), nn.BatchNorm2d(c_out), nn.GELU())


def UpConv(c_in, c_out):     # 4x4 transposed conv with stride 2: H -> 2 H
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.GELU())


def Flatten():               # 7x7 average pool: 7x7 -> 1x1
    return nn.Sequential(nn.AvgPool2d(7), nn.GELU())


def Unflatten(c_in, c_out):  # 7x7 transposed conv with stride 7: 1x1 -> 7x7
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 7, 7, 0), nn.BatchNorm2d(c_out), nn.GELU())


def ConvBlock(c_in, c_out):  # two Convs
    return nn.Sequential(Conv(c_in, c_out), Conv(c_out, c_out))


def DownBlock(c_in, c_out):  # DownConv, then a ConvBlock: H -> H / 2
    return nn.Sequential(DownConv(c_in, c_out), ConvBlock(c_out, c_out))


def UpBlock(c_in, c_out):    # UpConv, then a ConvBlock: H -> 2 H
    return nn.Sequential(UpConv(c_in, c_out), ConvBlock(c_out, c_out))


class UNet(nn.Module):
    """D_theta(z): unconditional UNet of CS180 5B part 1, skips by concatenation."""

    def __init__(self, D=32):
        super().__init__()
        self.inp, self.down1, self.down2 = ConvBlock(1, D), DownBlock(D, D), DownBlock(D, 2 * D)
        self.flatten, self.unflatten = Flatten(), Unflatten(2 * D, 2 * D)
        self.up1, self.up2 = UpBlock(4 * D, D), UpBlock(2 * D, D)
        self.out = nn.Sequential(ConvBlock(2 * D, D), nn.Conv2d(D, 1, 3, 1, 1))

    def forward(self, z):                                 # z (B, 1, 28, 28)
        h1 = self.inp(z)                                  # (B, D, 28, 28)
        h2 = self.down1(h1)                               # (B, D, 14, 14)
        h3 = self.down2(h2)                               # (B, 2D, 7, 7)
        h = self.unflatten(self.flatten(h3))              # (B, 2D, 1, 1) -> (B, 2D, 7, 7)
        h = self.up1(torch.cat([h, h3], 1))               # (B, 4D, 7, 7) -> (B, D, 14, 14)
        h = self.up2(torch.cat([h, h2], 1))               # (B, 2D, 14, 14) -> (B, D, 28, 28)
        return self.out(torch.cat([h, h1], 1))            # (B, 2D, 28, 28) -> (B, 1, 28, 28): x estimate


# --- Checkpoints -------------------------------------------------------------------------------
# Not the DDPM scripts' shared block: that one checks --T, --schedule, --channels; this checks CONFIG_KEYS.
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
        die(f"no checkpoint at {path}: train first (without --resume / --eval-only)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        script, config = ckpt["script"], ckpt["config"]
    except Exception as e:
        die(f"{path} is not a readable checkpoint ({type(e).__name__}); delete it or use another --out-dir")
    if script != SCRIPT:
        die(f"{path} was written by {script}.py, not {SCRIPT}.py; use another --out-dir")
    for k in CONFIG_KEYS:
        if config.get(k) != getattr(args, k):
            die(f"{path} was trained with --{k} {config.get(k)}, not {getattr(args, k)}; "
                f"pass the same value or use another --out-dir")
    return ckpt


def rng_state():
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    torch.set_rng_state(state["cpu"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


# --- Training ----------------------------------------------------------------------------------
def train_epoch(model, opt, x_all, args, epoch):
    """One pass over the data in shuffled batches (randperm on the device, no DataLoader), with
    fresh noise for every batch. Returns the per-step losses; the only host syncs are the
    progress-bar updates."""
    model.train()
    N, B = len(x_all), args.batch_size
    perm = torch.randperm(N, device=x_all.device)
    losses = []
    bar = tqdm(total=N, desc=f"epoch {epoch}/{args.epochs}", unit="img", unit_scale=True, leave=True)
    for i in range(0, N, B):
        x = x_all[perm[i:i + B]]                               # (B, 1, 28, 28) in [0, 1]
        z = add_noise(x, args.sigma, torch.randn_like(x))      # a new eps every time a batch is drawn
        loss = F.mse_loss(model(z), x)                         # || D_theta(z) - x ||^2, mean over pixels
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        bar.update(len(x))
        if len(losses) % 25 == 0:  # one host sync every 25 steps, not every step
            bar.set_postfix(loss=f"{torch.stack(losses[-25:]).mean().item():.4f}")
    bar.close()
    return torch.stack(losses).cpu()


def train_flops_per_image(model, device):
    """FLOPs of one training step (forward + backward) per image, counted by PyTorch on a copy
    (a training-mode pass would move the BatchNorm running statistics of the real model)."""
    from torch.utils.flop_counter import FlopCounterMode
    model = copy.deepcopy(model)
    with FlopCounterMode(display=False) as fc:
        model(torch.zeros(8, 1, 28, 28, device=device)).square().mean().backward()
    return fc.get_total_flops() / 8


# --- Evaluation --------------------------------------------------------------------------------
@torch.no_grad()
def denoise(model, z, batch=500):
    """D_theta(z) clipped to [0, 1], in eval mode (BatchNorm uses its running statistics), on the CPU."""
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    out = torch.cat([model(z[i:i + batch].to(device)).clamp(0, 1).cpu() for i in range(0, len(z), batch)])
    model.train(was_training)
    return out


def psnr(x_hat, x):
    """Per-image PSNR in dB, peak 1: 10 log10(1 / MSE), MSE over the pixels of each image. (N,)"""
    mse = (x_hat - x).square().flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)  # inf where x_hat == x


def psnr_sweep(model, x, eps, sigmas):
    """[(sigma, PSNR of z, PSNR of D_theta(z))], each the mean over the N digits of x, same eps."""
    rows = []
    for sigma in sigmas:
        z = add_noise(x, sigma, eps)
        rows.append((sigma, psnr(z, x).mean().item(), psnr(denoise(model, z), x).mean().item()))
    return rows


def print_psnr(rows, n, sigma_train, black):
    print(f"PSNR on {n} test digits (dB, mean of per-image PSNR; denoised clipped to [0, 1]):")
    print(" sigma   noisy z   denoised    gain")
    for s, p_noisy, p_den in rows:
        gain = f"{p_den - p_noisy:+7.2f}" if math.isfinite(p_noisy) else "      -"
        print(f"{s:6.2f} {p_noisy:9.2f} {p_den:10.2f} {gain}" + ("   <- training sigma" if s == sigma_train else ""))
    print(f"for scale: an all-black output scores {black:.2f} dB on the same digits")


# --- Plots -------------------------------------------------------------------------------------
def plot_rows(panels, path, title, row_labels, panel_titles=None):
    """Side-by-side panels, each (rows, ncol, 1, 28, 28) in [0, 1], drawn as a grid with labelled rows."""
    rows, ncol = panels[0].shape[:2]
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (0.4 * ncol + 0.2) + 0.8, 0.4 * rows + 0.6),
                             squeeze=False)
    for j, (ax, p) in enumerate(zip(axes[0], panels)):
        grid = torchvision.utils.make_grid(p.flatten(0, 1).float().clamp(0, 1), nrow=ncol, padding=2, pad_value=1.0)
        ax.imshow(grid[0], cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([30 * r + 15 for r in range(rows)])
        ax.set_yticklabels(row_labels if j == 0 else [], fontsize=8)
        if panel_titles:
            ax.set_title(panel_titles[j], fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_loss(losses, path, title, steps_per_epoch):
    """Per-step loss (light), its moving average (dark) and epoch boundaries (dotted), log scale."""
    k = max(1, len(losses) // 100)
    smooth = losses.unfold(0, k, 1).mean(1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses.numpy(), alpha=0.3 if k > 1 else 1, lw=0.5 if k > 1 else 1.5, label="per step")
    if k > 1:
        ax.plot(range(k - 1, k - 1 + len(smooth)), smooth.numpy(), lw=1.5, label=f"mean of {k} steps")
    for e in range(steps_per_epoch, len(losses), steps_per_epoch):
        ax.axvline(e, color="grey", lw=0.5, ls=":")
    ax.set(yscale="log", xlabel=f"step ({steps_per_epoch} per epoch)", ylabel="MSE  ||D(z) - x||^2  (per pixel)",
           title=title)
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_psnr(rows, path, title, sigma_train, black):
    """PSNR of the denoised output and of the noisy input against sigma (infinite points left out),
    and of an all-black image for scale."""
    s, p_noisy, p_den = (torch.tensor(c) for c in zip(*rows))
    fin = torch.isfinite(p_noisy)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(s.numpy(), p_den.numpy(), "o-", label="denoised  D(z), clipped to [0, 1]")
    ax.plot(s[fin].numpy(), p_noisy[fin].numpy(), "s--", label="noisy input  z = x + sigma eps (infinite at 0)")
    for x_, y_ in zip(s.tolist(), p_den.tolist()):
        ax.annotate(f"{y_:.1f}", (x_, y_), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.axhline(black, color="black", lw=0.8, ls="-.", label=f"all-black output ({black:.1f} dB)")
    ax.axvline(sigma_train, color="grey", lw=0.8, ls=":", label=f"training sigma = {sigma_train}")
    ax.set(xlabel="sigma", ylabel="PSNR (dB), mean over test digits", title=title)
    ax.set_ylim(top=ax.get_ylim()[1] + 1.5)  # room for the value labels
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)  # below the axes
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# --- main ---------------------------------------------------------------------------------------
def main(argv=None):
    args = get_args(argv)
    print(vars(args))
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    os.makedirs(args.out_dir, exist_ok=True)
    out = lambda name: os.path.join(args.out_dir, name)  # noqa: E731
    ckpt_path = out("ckpt.pt")
    if os.path.exists(ckpt_path) and not (args.resume or args.eval_only):
        die(f"{ckpt_path} exists: pass --resume to continue it, --eval-only to evaluate it, or another --out-dir")
    print(f"device {device}  threads {torch.get_num_threads()}  sigma {args.sigma}  D {args.D}")

    model = UNet(args.D).to(device, memory_format=torch.channels_last)  # channels_last: 1.25x on CPU
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"UNet {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, D = {args.D}")
    start_epoch, loss_history = 1, torch.zeros(0)
    if args.resume or args.eval_only:
        ckpt = load_checkpoint(ckpt_path, args)
        model.load_state_dict(ckpt["model"]), opt.load_state_dict(ckpt["opt"])
        start_epoch, loss_history = ckpt["epoch"] + 1, ckpt["loss_history"]
        set_rng_state(ckpt["rng"])
        print(f"loaded {ckpt_path}: {ckpt['epoch']} epochs done")

    # fixed test digits and noise for every figure and the PSNR (own generator: training RNG untouched)
    test_images, test_labels = load_mnist(args.data_dir, train=False)
    x_test = to_model_range(test_images)                              # (10000, 1, 28, 28) in [0, 1]
    eps_test = torch.randn(x_test.shape, generator=torch.Generator().manual_seed(args.seed + 1))
    show = one_per_digit(test_labels)                                   # one test digit of each class
    x_show, eps_show = x_test[show], eps_test[show]
    noisy_rows = torch.stack([add_noise(x_show, s, eps_show) for s in SIGMAS])   # (len(SIGMAS), 10, 1, 28, 28)
    sigma_labels = [f"sigma={s}" for s in SIGMAS]
    plot_rows([noisy_rows], out("noising.png"), f"{SCRIPT}: z = x + sigma eps, test digits, same eps (clipped)",
              sigma_labels)

    z_show = add_noise(x_show, args.sigma, eps_show)                    # the noisy digits of figure 3
    fig3_rows = ["clean", "noisy", "denoised"]
    fig3_title = f"{SCRIPT}: test digits at sigma = {args.sigma}, after epoch"

    train_s, n_img, epochs_done = 0.0, 0, start_epoch - 1
    if not args.eval_only and start_epoch <= args.epochs:
        images, _ = load_mnist(args.data_dir, train=True)
        images = images[:args.limit] if args.limit else images
        x_all = to_model_range(images).to(device)                     # whole set on the device, (N, 1, 28, 28)
        flops = train_flops_per_image(model, device)
        print(f"training on {len(x_all)} digits, {flops / 1e9:.3f} GFLOP per image per training step")
        for epoch in range(start_epoch, args.epochs + 1):
            t0 = time.time()
            loss_history = torch.cat([loss_history, train_epoch(model, opt, x_all, args, epoch)])
            train_s, n_img = train_s + time.time() - t0, n_img + len(x_all)
            epochs_done = epoch
            if epoch == 1:
                plot_rows([torch.stack([x_show, z_show, denoise(model, z_show)])], out("denoised_epoch001.png"),
                          f"{fig3_title} 1", fig3_rows)
            save_checkpoint({"script": SCRIPT, "config": vars(args), "epoch": epoch, "model": model.state_dict(),
                             "opt": opt.state_dict(), "loss_history": loss_history, "rng": rng_state()}, ckpt_path)
        print(f"train: {train_s / max(1, args.epochs - start_epoch + 1):.1f} s/epoch, "
              f"{n_img / train_s:.0f} img/s, {n_img / train_s * flops / 1e9:.0f} GFLOP/s")
    if epochs_done:
        plot_loss(loss_history, out("loss.png"), f"{SCRIPT}: training loss (sigma = {args.sigma}, D = {args.D})",
                  len(loss_history) // epochs_done)

    # after training: the same digits again, at sigma and at every sigma of the sweep; PSNR on the test set
    t0 = time.time()
    plot_rows([torch.stack([x_show, z_show, denoise(model, z_show)])], out("denoised_final.png"),
              f"{fig3_title} {epochs_done}", fig3_rows)
    plot_rows([noisy_rows, torch.stack([denoise(model, z) for z in noisy_rows])], out("ood.png"),
              f"{SCRIPT}: trained at sigma = {args.sigma} only, applied at every sigma", sigma_labels,
              ["noisy input z (clipped)", "denoised D(z)"])
    n = args.n_test or len(x_test)
    rows = psnr_sweep(model, x_test[:n], eps_test[:n], SIGMAS)
    black = psnr(torch.zeros_like(x_test[:n]), x_test[:n]).mean().item()  # a baseline that needs no model
    print_psnr(rows, n, args.sigma, black)
    plot_psnr(rows, out("psnr.png"), f"{SCRIPT}: {n} test digits, trained at sigma = {args.sigma}", args.sigma, black)
    with open(out("psnr.json"), "w") as f:
        json.dump({"n_test": n, "sigma_train": args.sigma, "D": args.D, "epochs": epochs_done,
                   "definition": "mean over test digits of 10 log10(1 / MSE), MSE over one image's pixels, "
                                 "denoised clipped to [0, 1], noisy not clipped; null = infinite",
                   "psnr_all_black": black,
                   "rows": [{"sigma": s, "psnr_noisy": p if math.isfinite(p) else None, "psnr_denoised": d}
                            for s, p, d in rows]}, f, indent=1)
    print(f"eval: figures and PSNR at {len(SIGMAS)} sigmas on {n} digits in {time.time() - t0:.1f} s")
    print(f"outputs in {args.out_dir}/: " + ", ".join(sorted(os.listdir(args.out_dir))))


if __name__ == "__main__":
    main()
