r"""One-step denoiser on MNIST: a UNet maps a noisy digit z = x + sigma eps back to x (sigma = 0.5).

UC Berkeley CS180 Project 5B, "Diffusion Models from Scratch", part 1: one network removes one
fixed level of Gaussian noise in one step; then, in PSNR, what it does at levels it never saw.
--pure-noise is part 1.2.3 (Fall 2025): the same network and loss, pure noise in.
https://cal-cs180.github.io/fa25/hw/proj5/partb.html

    python denoise_single_step.py                              # D = 32, 5 epochs: train, plot, PSNR
    python denoise_single_step.py --data-dir ~/mnist --resume  # MNIST on disk; go on after a kill
    python denoise_single_step.py --ckpt pretrained/denoise_single_step.pt  # the shipped weights
    python denoise_single_step.py --pure-noise                 # outputs -> the mean digit
    python denoise_single_step.py --D 128 --epochs 5 --batch-size 256 --lr 1e-4  # the CS180 spec

Math (x a clean digit, eps ~ N(0, I) of its shape, sigma a fixed noise level):
    add_noise     z = x + sigma eps, not clipped (sigma = --sigma = 0.5 in training)
    denoise_loss  || D_theta(z) - x ||^2, mean over pixels and batch; its minimiser D(z) = E[x | z],
                  the posterior mean, is blurry where several digits fit z.
    --pure-noise  z = eps tells nothing about x: E[x | z] = E[x], the outputs near the mean digit.
    psnr          10 log10(1 / MSE) dB, MSE over the 784 pixels of ONE image (peak 1), reported as
                  the mean over test digits. rms_distance: the RMS of (a - b), likewise.
Conventions: pixels p in 0..255 -> x = p / 255 in [0, 1] (load_mnist). The output is clipped to
    [0, 1] for PSNR, distances and plots; the noisy input's PSNR uses the unclipped z (about
    -20 log10 sigma); plots show z clipped. Training draws a fresh eps for every batch; figures and
    scores use fixed noise (generator seed + 1), one eps per test digit, scaled by each sigma.
Model: the course's UNet (Conv = 3x3 conv + BatchNorm + GELU), width D, concatenated skips:
    28x28 ConvBlock(1, D) -> 14x14 DownBlock(D, D) -> 7x7 DownBlock(D, 2D) -> Flatten (1x1)
    -> Unflatten(2D, 2D) -> UpBlock(4D, D) -> UpBlock(2D, D) -> ConvBlock(2D, D) -> Conv2d(D, 1).
Writes to --out-dir (default runs/denoise_single_step): ckpt.pt (each epoch), noising.png, loss.png,
    denoised_epoch001.png, denoised_final.png (clean, noisy, denoised), ood.png (every sigma),
    psnr.png, psnr.json (PSNR against sigma; the flags). --pure-noise (runs/denoise_pure_noise):
    ckpt.pt, loss.png, pure_noise_epoch001.png, _epoch005, _final (z, D(z), mean), pure_noise.json.
What you can delete for an assignment: without --resume and --eval-only, open_denoiser_run,
    restore_denoiser and the RNG state; without --pure-noise its branch in denoise_loss and the
    pure_noise helpers. The plumbing tail keeps runs safe, not the method.
"""
import argparse
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

SCRIPT = "denoise_single_step"
SIGMAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)  # noising.png's, ood.png's and the PSNR sweep's levels
SIGMA_LABELS = [f"sigma={s}" for s in SIGMAS]   # the rows of noising.png and ood.png
FIGURE_EPOCHS = (1,)                            # denoised_epochNNN.png after these
PURE_FIGURE_EPOCHS = (1, 5)                     # --pure-noise: pure_noise_epochNNN.png after these
N_PURE = 1000                                   # --pure-noise: noise images scored
TRAIN_KEYS = ("limit", "D", "sigma", "pure_noise", "batch_size", "lr", "seed")
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
    ap = argparse.ArgumentParser(description="One-step denoiser (UNet, L2), MNIST, fixed sigma")
    count, whole, positive = number(int, 1), number(int, 0), number(float, 0, lo_included=False)
    g = ap.add_argument_group("data")
    g.add_argument("--data-dir", default="./data", help="MNIST folder (downloaded here if missing)")
    g.add_argument("--limit", type=whole, default=0, help="train on the first N digits (0: all)")
    g = ap.add_argument_group("model")
    g.add_argument("--D", type=count, default=32, help="UNet hidden width (the spec's is 128)")
    g = ap.add_argument_group("noise")
    g.add_argument("--sigma", type=positive, default=0.5,
                   help="noise level of training: z = x + sigma eps")
    g.add_argument("--pure-noise", action="store_true",
                   help="train on z = eps, no digit in the input (part 1.2.3)")
    g = ap.add_argument_group("training")
    g.add_argument("--epochs", type=whole, default=5, help="passes over the 60,000 training digits")
    g.add_argument("--batch-size", type=count, default=256, help="digits per optimizer step")
    g.add_argument("--lr", type=positive, default=1e-3,
                   help="Adam learning rate (the spec's 1e-4 is for D = 128)")
    g = ap.add_argument_group("evaluation")
    g.add_argument("--n-test", type=whole, default=0,
                   help="PSNR on the first N test digits (0: all 10,000)")
    g.add_argument("--eval-only", "--sample-only", dest="eval_only", action="store_true",
                   help="load ckpt.pt, make the figures and scores, no training")
    g.add_argument("--ckpt", default="", help="evaluate these weights instead of OUT_DIR/ckpt.pt "
                   "(a file in pretrained/ or another run's ckpt.pt); implies --eval-only")
    g = ap.add_argument_group("run")
    g.add_argument("--out-dir", default=None, help="checkpoint, plots and scores go here "
                   f"(default runs/{SCRIPT}, runs/denoise_pure_noise)")
    g.add_argument("--resume", action="store_true", help="continue training from ckpt.pt")
    g.add_argument("--seed", type=whole, default=0, help="same seed, same run (on the same device)")
    g.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or cpu, cuda, mps")
    args, given = parse_flags(ap, argv)  # given: the flags on the command line, for --resume
    if args.ckpt and args.resume:
        ap.error("--ckpt is for evaluating (it implies --eval-only); "
                 "--resume continues OUT_DIR/ckpt.pt")
    args.eval_only = args.eval_only or bool(args.ckpt)
    pure_dir = "runs/denoise_pure_noise"
    args.out_dir = args.out_dir or (pure_dir if args.pure_noise else f"runs/{SCRIPT}")
    return args, given
# --- noise ---------------------------------------------------------------------------------------
def add_noise(x, sigma, eps):
    """z = x + sigma eps: the noisy digit (not clipped). sigma = 0 gives x itself."""
    return x + sigma * eps
# --- model: the course's building blocks; each keeps the spatial size unless it says otherwise ---
def Conv(c_in, c_out):       # 3x3 conv, BatchNorm, GELU
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.GELU())

def DownConv(c_in, c_out):   # 3x3 conv with stride 2: H -> H / 2
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1), nn.BatchNorm2d(c_out), nn.GELU())

def UpConv(c_in, c_out):     # 4x4 transposed conv with stride 2: H -> 2 H
    up = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)
    return nn.Sequential(up, nn.BatchNorm2d(c_out), nn.GELU())

def Flatten():               # 7x7 average pool: 7x7 -> 1x1
    return nn.Sequential(nn.AvgPool2d(7), nn.GELU())

def Unflatten(c_in, c_out):  # 7x7 transposed conv with stride 7: 1x1 -> 7x7
    up = nn.ConvTranspose2d(c_in, c_out, 7, 7, 0)
    return nn.Sequential(up, nn.BatchNorm2d(c_out), nn.GELU())

def ConvBlock(c_in, c_out):  # two Convs
    return nn.Sequential(Conv(c_in, c_out), Conv(c_out, c_out))

def DownBlock(c_in, c_out):  # DownConv, then a ConvBlock: H -> H / 2
    return nn.Sequential(DownConv(c_in, c_out), ConvBlock(c_out, c_out))

def UpBlock(c_in, c_out):    # UpConv, then a ConvBlock: H -> 2 H
    return nn.Sequential(UpConv(c_in, c_out), ConvBlock(c_out, c_out))

class UnconditionalUNet(nn.Module):
    """D_theta(z): the unconditional UNet of CS180 5B part 1, skips by concatenation (not the DDPM
    scripts' UNet: no time input, BatchNorm instead of GroupNorm)."""
    def __init__(self, D=32):
        super().__init__()
        self.inp, self.down1, self.down2 = ConvBlock(1, D), DownBlock(D, D), DownBlock(D, 2 * D)
        self.flatten, self.unflatten = Flatten(), Unflatten(2 * D, 2 * D)
        self.up1, self.up2 = UpBlock(4 * D, D), UpBlock(2 * D, D)
        self.out = nn.Sequential(ConvBlock(2 * D, D), nn.Conv2d(D, 1, 3, 1, 1))

    def forward(self, z):                      # z (B, 1, 28, 28)
        h1 = self.inp(z)                       # (B, D, 28, 28)
        h2 = self.down1(h1)                    # (B, D, 14, 14)
        h3 = self.down2(h2)                    # (B, 2D, 7, 7)
        h = self.unflatten(self.flatten(h3))   # (B, 2D, 1, 1) -> (B, 2D, 7, 7)
        h = self.up1(torch.cat([h, h3], 1))    # (B, 4D, 7, 7) -> (B, D, 14, 14)
        h = self.up2(torch.cat([h, h2], 1))    # (B, 2D, 14, 14) -> (B, D, 28, 28)
        return self.out(torch.cat([h, h1], 1))  # (B, 2D, 28, 28) -> (B, 1, 28, 28): x's estimate
# --- training step -------------------------------------------------------------------------------
def denoise_loss(model, x, sigma, pure_noise):
    """|| D_theta(z) - x ||^2, the mean over pixels and batch, for digits x (B, 1, 28, 28) in
    [0, 1]: z = x + sigma eps, or z = eps with pure_noise. A fresh eps for every batch."""
    eps = torch.randn_like(x)
    z = eps if pure_noise else add_noise(x, sigma, eps)
    return F.mse_loss(model(z), x)
# --- evaluation ----------------------------------------------------------------------------------
@torch.no_grad()
def denoise(model, z, batch=500):
    """D_theta(z) clipped to [0, 1], on the CPU; in eval mode (BatchNorm's running statistics)."""
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    out = [model(z_b.to(device)).clamp(0, 1).cpu() for z_b in z.split(batch)]
    model.train(was_training)
    return torch.cat(out)

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

def rms_distance(x, ref):
    """Per-image RMS distance sqrt(mean (x - ref)^2), x (N, 1, 28, 28), ref broadcast. (N,)"""
    return (x - ref).square().flatten(1).mean(1).sqrt()

def psnr_probe(x_test, eps_test, labels, sigma):
    """The fixed inputs of the default figures and PSNR: the test digits (N, 1, 28, 28), one eps
    each, and a digit of each class to show, noisy at the training sigma and at each of SIGMAS."""
    classes = [k for k in range(10) if (labels == k).any()]
    first = torch.tensor([int((labels == k).nonzero()[0]) for k in classes])  # of each class
    x, eps = x_test[first], eps_test[first]  # (10, 1, 28, 28) each
    noisy_rows = torch.stack([add_noise(x, s, eps) for s in SIGMAS])  # (len(SIGMAS), 10, ...)
    return {"x_test": x_test, "eps_test": eps_test, "x": x, "z": add_noise(x, sigma, eps),
            "noisy_rows": noisy_rows}

def pure_noise_probe(x_train, gen):
    """The fixed inputs of --pure-noise: N_PURE noise images z ~ N(0, I), the mean training digit
    E[x] (1, 1, 28, 28) that the outputs should approach, and the training digits' RMS to it."""
    mean = x_train.mean(0, keepdim=True)
    return {"z": torch.randn(N_PURE, 1, 28, 28, generator=gen), "mean": mean,
            "rms_train": rms_distance(x_train, mean).mean().item()}
# --- main ---------------------------------------------------------------------------------------
def main(argv=None):
    # setup: flags, device; with --resume or --eval-only the checkpoint (its flags are the run's)
    args, given = get_args(argv)
    device = pick_device(args.device)
    ckpt_path, ckpt = open_denoiser_run(args, given)
    print(vars(args))
    torch.manual_seed(args.seed)  # after open_denoiser_run: the run's own seed

    # the model D_theta(z) and Adam; to continue: weights, optimizer, RNG and losses put back
    task = "pure noise z = eps" if args.pure_noise else f"sigma {args.sigma}"
    print(f"device {device}  threads {torch.get_num_threads()}  {task}  D {args.D}")
    model = UnconditionalUNet(args.D)
    model = model.to(device, memory_format=torch.channels_last)  # faster on CPU
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"UNet {n_params / 1e6:.2f}M parameters, D = {args.D}")
    run = restore_denoiser(ckpt, model, opt, device, args.out_dir)

    # fixed inputs of every figure and score, from their own generator (not the training RNG)
    gen = torch.Generator().manual_seed(args.seed + 1)
    if args.pure_noise:  # noise images with no digit in them, and the mean training digit
        x_train = load_mnist(args.data_dir, train=True, limit=args.limit)[0]
        probe = pure_noise_probe(x_train, gen)
    else:  # the test digits with an eps each, and ten (one per class) at every sigma
        x_test, test_labels = load_mnist(args.data_dir, train=False)  # in [0, 1]
        eps_test = torch.randn(x_test.shape, generator=gen)
        probe = psnr_probe(x_test, eps_test, test_labels, args.sigma)
        plot_rows([probe["noisy_rows"]], os.path.join(args.out_dir, "noising.png"),
                  f"{SCRIPT}: z = x + sigma eps, test digits, same eps (clipped)",
                  SIGMA_LABELS)

    # train: all data on the device, shuffled batches (no DataLoader); a figure after
    # FIGURE_EPOCHS, a checkpoint every epoch. BatchNorm trains on batch statistics:
    # denoise() puts the train mode back.
    if not args.eval_only and run["epoch"] < args.epochs:
        x_all = load_mnist(args.data_dir, train=True, limit=args.limit)[0]
        x_all = x_all.to(device)  # (N, 1, 28, 28) in [0, 1]
        print(f"training on {len(x_all)} digits")
        train_s, first = 0.0, run["epoch"] + 1
        figure_epochs = PURE_FIGURE_EPOCHS if args.pure_noise else FIGURE_EPOCHS
        for epoch in range(first, args.epochs + 1):
            losses = []  # this epoch's, on the device: no host sync per step
            with EpochLog(epoch, args.epochs, len(x_all), losses, run["epoch"]) as log:
                batches = torch.randperm(len(x_all), device=device).split(args.batch_size)
                for idx in batches:
                    loss = denoise_loss(model, x_all[idx], args.sigma, args.pure_noise)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    losses.append(loss.detach())
                    log.step(len(idx))  # progress bar, NaN stop, Ctrl-C
            losses = torch.stack(losses).cpu()
            run["loss_history"] = torch.cat([run["loss_history"], losses])
            run["epoch"], train_s = epoch, train_s + log.seconds
            if epoch in figure_epochs:
                plot_epoch(model, probe, args, epoch, f"epoch{epoch:03d}")
            save_denoiser(run, model, opt, args, device, ckpt_path)
        n = args.epochs - first + 1
        print(f"train: {train_s / n:.1f} s/epoch, {n * len(x_all) / train_s:.0f} img/s")
    if run["epoch"]:
        steps_per_epoch = len(run["loss_history"]) // run["epoch"]
        plot_loss_by_epoch(run["loss_history"], os.path.join(args.out_dir, "loss.png"),
                           f"{SCRIPT}: training loss ({task}, D = {args.D})",
                           steps_per_epoch)

    # scores and final figures: the distance to the mean digit, or PSNR against sigma
    t0 = time.time()
    plot_epoch(model, probe, args, run["epoch"], "final")
    if args.pure_noise:
        report_pure_noise(model, probe, args, run["epoch"])
    else:
        report_psnr(model, probe, args, run["epoch"])
    print(f"eval: figures and scores in {time.time() - t0:.1f} s")
    outputs = sorted(os.listdir(args.out_dir))
    print(f"outputs in {args.out_dir}/: " + ", ".join(outputs))
    shown = [f for f in outputs  # in a notebook, below the cell
             if f.endswith("final.png") or f in ("loss.png", "ood.png", "psnr.png")]
    show(*[os.path.join(args.out_dir, f) for f in shown])
# --- reports: scores printed, plotted and saved -------------------------------------------------
def report_psnr(model, probe, args, epochs):
    """ood.png (the ten digits denoised at every sigma), then PSNR against sigma on the first
    --n-test test digits: printed, psnr.png and psnr.json."""
    noisy_rows = probe["noisy_rows"]  # (len(SIGMAS), 10, 1, 28, 28)
    denoised_rows = torch.stack([denoise(model, z) for z in noisy_rows])
    plot_rows([noisy_rows, denoised_rows], os.path.join(args.out_dir, "ood.png"),
              f"{SCRIPT}: trained at sigma = {args.sigma} only, applied at every sigma",
              SIGMA_LABELS, ["noisy input z (clipped)", "denoised D(z)"])
    n = args.n_test or None  # the first --n-test digits (0: all)
    x, eps = probe["x_test"][:n], probe["eps_test"][:n]
    n = len(x)
    rows = psnr_sweep(model, x, eps, SIGMAS)
    black = psnr(torch.zeros_like(x), x).mean().item()  # a baseline that needs no model
    print(f"PSNR on {n} test digits (dB, mean of per-image PSNR; denoised clipped to [0, 1]):")
    print(" sigma   noisy z   denoised    gain")
    for s, p_noisy, p_den in rows:
        gain = f"{p_den - p_noisy:+7.2f}" if math.isfinite(p_noisy) else "      -"
        mark = "   <- training sigma" if s == args.sigma else ""
        print(f"{s:6.2f} {p_noisy:9.2f} {p_den:10.2f} {gain}{mark}")
    print(f"for scale: an all-black output scores {black:.2f} dB on the same digits")
    plot_psnr(rows, os.path.join(args.out_dir, "psnr.png"),
              f"{SCRIPT}: {n} test digits, trained at sigma = {args.sigma}", args.sigma, black)
    table = [{"sigma": s, "psnr_noisy": p if math.isfinite(p) else None, "psnr_denoised": d}
             for s, p, d in rows]
    definition = ("mean over test digits of 10 log10(1 / MSE), MSE over one image's pixels, "
                  "denoised clipped to [0, 1], noisy not clipped; null = infinite")
    save_json_atomic({"n_test": n, "sigma_train": args.sigma, "D": args.D, "epochs": epochs,
                      "definition": definition, "psnr_all_black": black, "rows": table,
                      "config": vars(args)}, os.path.join(args.out_dir, "psnr.json"))

def report_pure_noise(model, probe, args, epochs):
    """How close D(z) of the N_PURE fixed noise images comes to the mean training digit, next to
    how far the training digits themselves are from it: printed and pure_noise.json."""
    rms_out = rms_distance(denoise(model, probe["z"]), probe["mean"]).mean().item()
    print(f"pure noise: the outputs D(z) of {len(probe['z'])} noise images are {rms_out:.4f} RMS "
          f"from the mean training digit; the training digits are {probe['rms_train']:.4f} "
          "from it (for scale)")
    definition = "per-image RMS over the 784 pixels, mean over images; outputs clipped to [0, 1]"
    save_json_atomic({"n_inputs": len(probe["z"]), "D": args.D, "epochs": epochs,
                      "definition": definition, "rms_outputs_to_mean_digit": rms_out,
                      "rms_train_digits_to_mean_digit": probe["rms_train"],
                      "config": vars(args)}, os.path.join(args.out_dir, "pure_noise.json"))
# --- checkpoints: the shared open_run, restore_run, save_run for a run with no EMA, --eval-only ---
def open_denoiser_run(args, given):
    """ckpt.pt's path, and for --resume or --eval-only the checkpoint (--ckpt, else ckpt.pt; None
    for a new run), whose training flags the run takes: one given with another value is a one-line
    error. --epochs may grow."""
    ckpt_path = prepare_out_dir(args.out_dir, args.resume or args.eval_only)
    path = args.ckpt or ckpt_path
    if not (args.resume or args.eval_only):
        return ckpt_path, None
    if not os.path.isfile(path):
        die(f"no checkpoint at {path}: train first (without --resume / --eval-only)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        stored, config = ckpt["script"], ckpt["config"]
    except Exception as e:
        die(f"{path} is not a readable checkpoint ({type(e).__name__}); "
            "delete it or use another --out-dir")
    if stored != SCRIPT:
        die(f"{path} was written by {stored}.py, not {SCRIPT}.py; use another --out-dir")
    if args.resume and "opt" not in ckpt:  # a shipped file: the weights only, no optimizer
        die(f"{path} holds evaluation weights only (no optimizer state): "
            "use it with --ckpt, not --resume")
    for k in TRAIN_KEYS:
        if k in given and k in config and getattr(args, k) != config[k]:
            flag = "--" + k.replace("_", "-")
            die(f"{path} was trained with {flag} {config[k]}, you gave {flag} {getattr(args, k)}: "
                f"drop the flag to continue that run, or use another --out-dir")
        setattr(args, k, config.get(k, getattr(args, k)))
    if "epochs" not in given:
        args.epochs = max(config["epochs"], ckpt["epoch"])
    print(f"loaded {path}: {ckpt['epoch']} epochs done")
    if "about" in ckpt:  # a shipped file (pretrained/) says how it was made and what it scores
        print("\n".join(f"  {k}: {v}" for k, v in ckpt["about"].items()))
    return ckpt_path, ckpt

def restore_denoiser(ckpt, model, opt, device, out_dir):
    """The run so far: epochs done and losses, with the weights (and BatchNorm statistics),
    optimizer and RNG put back (a fresh run if ckpt is None)."""
    run = {"epoch": 0, "loss_history": torch.zeros(0)}
    if ckpt is None:
        return run
    try:
        model.load_state_dict(ckpt["model"])
        if "opt" in ckpt:  # a training checkpoint; a shipped file holds the weights only
            opt.load_state_dict(ckpt["opt"])
            set_rng_state(ckpt["rng"], device)
    except (KeyError, RuntimeError, ValueError) as e:
        die(f"the checkpoint for {out_dir} does not fit this model ({type(e).__name__}); "
            "use another --out-dir")
    run.update(epoch=ckpt["epoch"], loss_history=ckpt["loss_history"])
    return run

def save_denoiser(run, model, opt, args, device, path):
    """The checkpoint: weights, optimizer, RNG, loss history and the flags that made them."""
    save_atomic({"script": SCRIPT, "config": vars(args), "epoch": run["epoch"],
                 "model": model.state_dict(), "opt": opt.state_dict(),
                 "loss_history": run["loss_history"], "rng": rng_state(device)}, path)
# --- plots -------------------------------------------------------------------------------------
def plot_epoch(model, probe, args, epoch, name):
    """The model's outputs on the fixed inputs after an epoch: rows clean, noisy, denoised
    (denoised_NAME.png); with --pure-noise noise z, D(z), the mean digit (pure_noise_NAME.png)."""
    if args.pure_noise:
        z = probe["z"][:10]  # the first ten noise images
        out = denoise(model, z)
        rms = rms_distance(denoise(model, probe["z"]), probe["mean"]).mean().item()
        plot_rows([torch.stack([z, out, probe["mean"].expand_as(out)])],
                  os.path.join(args.out_dir, f"pure_noise_{name}.png"),
                  f"{SCRIPT} --pure-noise, after epoch {epoch}: D(z) is {rms:.3f} RMS from the "
                  f"mean digit (the digits: {probe['rms_train']:.3f})",
                  ["noise z", "D(z)", "mean digit"])
    else:
        x_hat = denoise(model, probe["z"])
        plot_rows([torch.stack([probe["x"], probe["z"], x_hat])],
                  os.path.join(args.out_dir, f"denoised_{name}.png"),
                  f"{SCRIPT}: test digits at sigma = {args.sigma}, after epoch {epoch}",
                  ["clean", "noisy", "denoised"])

def plot_rows(panels, path, title, row_labels, panel_titles=None):
    """Side-by-side panels, each (rows, ncol, 1, 28, 28) in [0, 1], grids with labelled rows."""
    rows, ncol = panels[0].shape[:2]
    fig = Figure(figsize=(len(panels) * (0.4 * ncol + 0.2) + 0.8, 0.4 * rows + 0.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for j, (ax, p) in enumerate(zip(axes[0], panels)):
        grid = image_grid(p.flatten(0, 1).float().clamp(0, 1), ncol)
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([30 * r + 15 for r in range(rows)])
        ax.set_yticklabels(row_labels if j == 0 else [], fontsize=8)
        if panel_titles:
            ax.set_title(panel_titles[j], fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")

def plot_loss_by_epoch(losses, path, title, steps_per_epoch):
    """Per-step loss (light), its moving average (dark) and epoch boundaries (dotted), log scale."""
    k = max(1, len(losses) // 100)
    smooth = losses.unfold(0, k, 1).mean(1)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(losses.numpy(), alpha=0.3 if k > 1 else 1, lw=0.5 if k > 1 else 1.5, label="per step")
    if k > 1:
        steps = range(k - 1, k - 1 + len(smooth))  # the last step of each mean
        ax.plot(steps, smooth.numpy(), lw=1.5, label=f"mean of {k} steps")
    for e in range(steps_per_epoch, len(losses), steps_per_epoch):
        ax.axvline(e, color="grey", lw=0.5, ls=":")
    ax.set(yscale="log", xlabel=f"step ({steps_per_epoch} per epoch)",
           ylabel="MSE  ||D(z) - x||^2  (per pixel)", title=title)
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")

def plot_psnr(rows, path, title, sigma_train, black):
    """PSNR of the denoised output and of the noisy input against sigma (infinite points left
    out), and of an all-black image for scale."""
    s, p_noisy, p_den = (torch.tensor(c) for c in zip(*rows))
    fin = torch.isfinite(p_noisy)
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    ax.plot(s.numpy(), p_den.numpy(), "o-", label="denoised  D(z), clipped to [0, 1]")
    ax.plot(s[fin].numpy(), p_noisy[fin].numpy(), "s--",
            label="noisy input  z = x + sigma eps (infinite at 0)")
    for x_, y_ in zip(s.tolist(), p_den.tolist()):
        ax.annotate(f"{y_:.1f}", (x_, y_), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=7)
    ax.axhline(black, color="black", lw=0.8, ls="-.", label=f"all-black output ({black:.1f} dB)")
    ax.axvline(sigma_train, color="grey", lw=0.8, ls=":", label=f"training sigma = {sigma_train}")
    ax.set(xlabel="sigma", ylabel="PSNR (dB), mean over test digits", title=title)
    ax.set_ylim(top=ax.get_ylim()[1] + 1.5)  # room for the value labels
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)  # below
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")

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
