r"""The speed baseline: CS180 Project 5B's class-conditioned DDPM (Fall 2024) as the course describes it.

Not part of the product. RESULTS.md measures ddpm_class.py against this file, run one right after the
other on the same machine (absolute speed drifts between machines and hours; the ratio is what to read):

    python reference/cs180_recipe.py --max-steps 200                    # training img/s and GFLOP per image
    python ddpm_class.py --limit 25600 --epochs 1 --out-dir /tmp/ours   # ours, the same 200 steps of 128
    python reference/cs180_recipe.py --max-steps 1 --per-class 5        # guided DDPM digits per second

The recipe, from the course's public description (UC Berkeley CS180, Project 5B, part 2):
    UNet of Conv / DownConv / UpConv blocks (3x3 conv or 4x4 transposed conv, BatchNorm, GELU), hidden
    width D = 64, 28 -> 14 -> 7 -> 1 (average pool) and back, skips concatenated. The class c (one-hot,
    all zeros for "no class" with p_uncond = 0.1) and t / T each pass through an FCBlock (Linear, GELU,
    Linear) at the two lowest levels, where they modulate the features: h <- c_emb * h + t_emb.
    DDPM: T = 300, beta linear 1e-4 .. 0.02, x in [0, 1], loss || eps - eps_theta(x_t, c, t / T) ||^2.
    Adam, lr 1e-3, decayed by ExponentialLR with gamma = 0.1 ** (1 / epochs); batch 128; 20 epochs.
    Sampling: x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) + sqrt(beta_t) z,
    no z at the last step; guidance eps = eps_u + 5 (eps_c - eps_u).
Conventions here (the course's notebook indexes t from 0): t in {0..T-1}, the network sees t / T.
The one change from the course: channels_last memory (faster on CPUs, the same math), as ddpm_class.py uses.
Writes OUT_DIR/samples.pt = {"x": (N, 1, 28, 28) in [0, 1], "y": (N,)} with --per-class, for evaluate.py.
"""
import argparse
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.utils.flop_counter import FlopCounterMode
from torchvision.datasets.mnist import read_image_file, read_label_file

T = 300
CL = torch.channels_last


# --- the course's UNet --------------------------------------------------------------------------
def Conv(c_in, c_out):       # 3x3, same size
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.GELU())


def DownConv(c_in, c_out):   # 3x3, stride 2: H -> H / 2
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1), nn.BatchNorm2d(c_out), nn.GELU())


def UpConv(c_in, c_out):     # 4x4 transposed, stride 2: H -> 2 H
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.GELU())


def ConvBlock(c_in, c_out):
    return nn.Sequential(Conv(c_in, c_out), Conv(c_out, c_out))


def FCBlock(c_in, c_out):    # embeds c or t / T
    return nn.Sequential(nn.Linear(c_in, c_out), nn.GELU(), nn.Linear(c_out, c_out))


class ClassConditionalUNet(nn.Module):
    def __init__(self, D=64, n_classes=10):
        super().__init__()
        self.conv_in = ConvBlock(1, D)
        self.down1 = nn.Sequential(DownConv(D, D), ConvBlock(D, D))
        self.down2 = nn.Sequential(DownConv(D, 2 * D), ConvBlock(2 * D, 2 * D))
        self.flatten = nn.Sequential(nn.AvgPool2d(7), nn.GELU())                               # 7x7 -> 1x1
        self.unflatten = nn.Sequential(nn.ConvTranspose2d(2 * D, 2 * D, 7, 7), nn.BatchNorm2d(2 * D), nn.GELU())
        self.up1 = nn.Sequential(UpConv(4 * D, D), ConvBlock(D, D))
        self.up2 = nn.Sequential(UpConv(2 * D, D), ConvBlock(D, D))
        self.conv_out = nn.Sequential(ConvBlock(2 * D, D), nn.Conv2d(D, 1, 3, 1, 1))
        self.fc1_c, self.fc1_t = FCBlock(n_classes, 2 * D), FCBlock(1, 2 * D)
        self.fc2_c, self.fc2_t = FCBlock(n_classes, D), FCBlock(1, D)

    def forward(self, x, c, t):          # x (B, 1, 28, 28), c (B, 10) one-hot or zeros, t (B, 1) = t / T
        x1 = self.conv_in(x)             # (B, D, 28, 28)
        x2 = self.down1(x1)              # (B, D, 14, 14)
        x3 = self.down2(x2)              # (B, 2D, 7, 7)
        h = self.unflatten(self.flatten(x3))                              # (B, 2D, 7, 7)
        h = self.fc1_c(c)[..., None, None] * h + self.fc1_t(t)[..., None, None]
        h = self.up1(torch.cat([h, x3], 1))                               # (B, D, 14, 14)
        h = self.fc2_c(c)[..., None, None] * h + self.fc2_t(t)[..., None, None]
        h = self.up2(torch.cat([h, x2], 1))                               # (B, D, 28, 28)
        return self.conv_out(torch.cat([h, x1], 1))                       # eps, (B, 1, 28, 28)


# --- training and sampling -------------------------------------------------------------------------
def loss_fn(model, x0, y, alpha_bar, p_uncond=0.1):
    B = len(x0)
    t = torch.randint(0, T, (B,))
    eps = torch.randn_like(x0)
    ab = alpha_bar[t].view(B, 1, 1, 1)
    xt = (ab.sqrt() * x0 + (1 - ab).sqrt() * eps).contiguous(memory_format=CL)
    c = F.one_hot(y, 10).float() * (torch.rand(B) >= p_uncond).float()[:, None]   # dropped: all zeros
    return F.mse_loss(model(xt, c, t[:, None].float() / T), eps)


@torch.inference_mode()
def sample(model, y, beta, alpha, alpha_bar, guidance, gen):
    """Guided DDPM from t = T-1 down to 0; the conditional and unconditional passes in one batch."""
    B = len(y)
    c = torch.cat([F.one_hot(y, 10).float(), torch.zeros(B, 10)])
    x = torch.randn(B, 1, 28, 28, generator=gen).contiguous(memory_format=CL)
    for t in range(T - 1, -1, -1):
        eps_c, eps_u = model(torch.cat([x, x]), c, torch.full((2 * B, 1), t / T)).chunk(2)
        eps = eps_u + guidance * (eps_c - eps_u)
        x = (x - beta[t] / (1 - alpha_bar[t]).sqrt() * eps) / alpha[t].sqrt()
        if t > 0:  # no noise at the last step
            x = x + beta[t].sqrt() * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def load_train_digits(data_dir):
    """The 60,000 training digits (uint8) and labels: DIR/train-images-idx3-ubyte, or torchvision's
    DIR/MNIST/raw/..., downloaded there if neither is present."""
    for folder in (data_dir, os.path.join(data_dir, "MNIST", "raw")):
        files = [os.path.join(folder, f) for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")]
        if all(os.path.isfile(f) for f in files):
            return read_image_file(files[0]), read_label_file(files[1])
    mnist = torchvision.datasets.MNIST(data_dir, train=True, download=True)
    return mnist.data, mnist.targets


def main():
    ap = argparse.ArgumentParser(description="CS180 Project 5B class-conditioned DDPM recipe (the speed baseline)")
    ap.add_argument("--data-dir", default="./data", help="folder of the MNIST IDX files (downloaded here if missing)")
    ap.add_argument("--out-dir", default="runs/cs180_recipe", help="samples.pt goes here")
    ap.add_argument("--epochs", type=int, default=20, help="the course's 20")
    ap.add_argument("--max-steps", type=int, default=0, help="stop training after this many steps (0: no limit)")
    ap.add_argument("--per-class", type=int, default=0, help="guided samples of each digit after training")
    ap.add_argument("--guidance", type=float, default=5.0, help="w in eps_u + w (eps_c - eps_u)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    images, y_all = load_train_digits(args.data_dir)
    x_all = images.unsqueeze(1).float() / 255                                # (60000, 1, 28, 28) in [0, 1]
    beta = torch.linspace(1e-4, 0.02, T)
    alpha = 1 - beta
    alpha_bar = torch.cumprod(alpha, 0)

    model = ClassConditionalUNet().to(memory_format=CL)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lr_decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1 / args.epochs))
    with FlopCounterMode(display=False) as fc:  # forward + backward of 8 digits, per image
        loss_fn(model, x_all[:8], y_all[:8], alpha_bar).backward()
    opt.zero_grad(set_to_none=True)
    gflop = fc.get_total_flops() / 8 / 1e9
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {gflop:.3f} GFLOP per training "
          f"image, {torch.get_num_threads()} threads")

    step, t0 = 0, time.time()
    for epoch in range(1, args.epochs + 1):
        perm = torch.randperm(len(x_all))
        for i in range(0, len(perm), 128):
            idx = perm[i:i + 128]
            loss = loss_fn(model, x_all[idx], y_all[idx], alpha_bar)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0:
                print(f"epoch {epoch} step {step} loss {loss.item():.4f} {step * 128 / (time.time() - t0):.1f} img/s")
            if step == args.max_steps:
                break
        lr_decay.step()
        if step == args.max_steps:
            break
    seconds = time.time() - t0
    print(f"train: {step} steps of 128 in {seconds:.1f} s = {step * 128 / seconds:.1f} img/s "
          f"= {step * 128 * gflop / seconds:.0f} GFLOP/s")

    if args.per_class:
        model.eval()
        os.makedirs(args.out_dir, exist_ok=True)
        gen, t0, xs = torch.Generator().manual_seed(args.seed + 1), time.time(), []
        y = torch.arange(10).repeat(args.per_class)
        for y_chunk in y.split(250):
            xs.append(sample(model, y_chunk, beta, alpha, alpha_bar, args.guidance, gen))
        seconds = time.time() - t0
        torch.save({"x": torch.cat(xs).contiguous(), "y": y}, os.path.join(args.out_dir, "samples.pt"))
        print(f"sample: {len(y)} digits in {seconds:.1f} s = {len(y) / seconds:.2f} digits/s "
              f"-> {os.path.join(args.out_dir, 'samples.pt')}")


if __name__ == "__main__":
    main()
