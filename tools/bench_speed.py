"""How close the default training step runs to what these cores can do, and what each speed lever buys.

    python tools/bench_speed.py                 # fp32 matmul rate, ddpm_class.py's training rate, the ratio
    python tools/bench_speed.py --profile       # + the top operations of one training step by self time
    python tools/bench_speed.py --levers        # + img/s of each lever on its own, side by side with the baseline
    python tools/bench_speed.py --sampling      # + seconds for 1,000 guided DDIM-50 digits, new UNet and old, in turns

The training rate is that of ddpm_class.py's training step, as its main() runs it (loss, AdamW,
EMA, its EpochLog's progress bar and checks; train_epoch below is a copy of that loop), on random
digits, batch 128, counted in FLOPs by PyTorch here; the matmul rate is a 2048 x 2048 fp32 matmul.
Both run in turns in the same process (matmul, train, matmul, train, ...), so a machine that drifts
during the run moves both; the medians are printed. Run it alone: two torch processes share 2 cores badly.
"""
import argparse
import copy
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ddpm_class as D  # noqa: E402  the script under test, imported as a module
from tools.with_levers import foreach_ema_update, lever_model  # noqa: E402


def matmul_gflops(n=2048, reps=10):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def make_setup(batch_size=128, lr=1e-3, model_fn=None, opt_kwargs=None, memory_format=torch.channels_last,
               ema_update=D.ema_update):
    """The default run's model, EMA, optimizer, loss and flags, on the CPU."""
    args, _ = D.get_args(["--batch-size", str(batch_size), "--lr", str(lr), "--device", "cpu"])
    torch.manual_seed(0)
    model = (model_fn or (lambda: D.UNet(args.channels, n_classes=11)))().to(memory_format=memory_format)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, **(opt_kwargs or {}))
    sched = D.make_schedule(args.T, args.schedule, "cpu")
    loss_fn = lambda m, x0, y: D.ddpm_loss_cfg(m, x0, y, sched, args.p_uncond)  # noqa: E731
    return dict(model=model, ema=ema, opt=opt, loss_fn=loss_fn, args=args, ema_update=ema_update)


def train_epoch(setup, x_all, y_all):
    """One epoch of the training loop exactly as ddpm_class.py's main() writes it; returns its seconds."""
    model, ema, opt, args = setup["model"], setup["ema"], setup["opt"], setup["args"]
    losses = []
    with D.EpochLog(1, 1, len(x_all), losses, 0) as log:
        for step, idx in enumerate(torch.randperm(len(x_all)).split(args.batch_size)):
            loss = setup["loss_fn"](model, x_all[idx], y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            setup["ema_update"](ema, model, args.ema_decay, step)
            losses.append(loss.detach())
            log.step(len(idx))
    return log.seconds


def train_rate(setup, steps=30):
    """img/s of the training loop over `steps` batches of random digits (after 3 warm-up steps)."""
    B = setup["args"].batch_size
    x_all, y_all = torch.rand(B * steps, 1, 28, 28), torch.randint(0, 10, (B * steps,))
    train_epoch(setup, x_all[:3 * B], y_all[:3 * B])
    return len(x_all) / train_epoch(setup, x_all, y_all)


def flops_per_image(setup):
    """FLOPs of one training step (forward and backward) per image, counted by PyTorch on 8 digits."""
    from torch.utils.flop_counter import FlopCounterMode
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    with FlopCounterMode(display=False) as fc:
        setup["loss_fn"](setup["model"], x, y).backward()
    setup["model"].zero_grad(set_to_none=True)
    return fc.get_total_flops() / len(x)


def profile(setup, flops, matmul, steps=10):
    """The top operations of `steps` training steps by self time, and the ceiling the convolutions set:
    the rate the step would reach if everything but the convolutions took no time at all."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    train_rate(setup, steps=3)
    B = setup["args"].batch_size
    x_all, y_all = torch.rand(B * steps, 1, 28, 28), torch.randint(0, 10, (B * steps,))
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        train_epoch(setup, x_all, y_all)
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key)
    conv_rate = flops * B * steps / (conv / 1e6) / 1e9  # nearly all the FLOPs are in the convolutions
    print(f"convolutions (forward and backward): {conv / total:.0%} of the step's self time; alone they run at "
          f"{conv_rate:.0f} GFLOP/s = {conv_rate / matmul:.0%} of the matmul rate, the ceiling if all else were free")


def sampling_seconds(model, n=1000, steps=50, w=5.0):
    """Seconds for n guided DDIM digits drawn as `ddpm_class.py --sample-only --sampler ddim --n-samples n`
    draws them (chunks of 250 digits, conditional and unconditional passes in one batch)."""
    model.eval()
    args, _ = D.get_args(["--device", "cpu"])
    sched = D.make_schedule(args.T, args.schedule, "cpu")
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for y_chunk in torch.arange(10).repeat(n // 10).split(250):
        noise = torch.randn(len(y_chunk), 1, 28, 28, generator=gen)
        D.sample(D.guided_eps_fn(model, y_chunk, w, sched), noise, sched, "ddim", steps, gen)
    return time.perf_counter() - t0


# --- levers: each one changes one thing against the default ------------------------------------
class ConcatUNet(D.UNet):
    """The UNet as it was before 2026-11-23: the up path's skips concatenated (2c channels into each up
    block) instead of added. The "concatenated skips" lever is that old default, measured beside the new."""

    def __init__(self, channels=(16, 64, 64), emb_dim=128, n_classes=0):
        super().__init__(channels, emb_dim, n_classes)
        c1, c2, c3 = channels
        self.up3 = D.ResBlock(2 * c3, c2, emb_dim)
        self.up2 = D.ResBlock(2 * c2, c1, emb_dim)
        self.up1 = D.ResBlock(2 * c1, c1, emb_dim)

    def forward(self, x, t, y=None):
        emb = self.t_mlp(D.time_embedding(t, self.emb_dim))
        if y is not None:
            emb = emb + self.y_emb(y)
        h1 = self.down1(self.inp(x), emb)
        h2 = self.down2(self.pool1(h1), emb)
        h3 = self.down3(self.pool2(h2), emb)
        h = self.mid2(self.attn(self.mid1(h3, emb)), emb)
        h = self.up3(torch.cat([h, h3], 1), emb)
        h = self.up2(torch.cat([self.unpool2(h), h2], 1), emb)
        h = self.up1(torch.cat([self.unpool1(h), h1], 1), emb)
        return self.out(h)


def lever_setups():
    """name -> a function that builds the setup with that one lever changed."""
    return {
        "default": lambda: make_setup(),
        "NCHW instead of channels_last": lambda: make_setup(memory_format=torch.contiguous_format),
        "fused AdamW": lambda: make_setup(opt_kwargs={"fused": True}),
        "foreach AdamW off": lambda: make_setup(opt_kwargs={"foreach": False}),
        "foreach EMA": lambda: make_setup(ema_update=foreach_ema_update),
        "bf16 autocast": lambda: make_setup(model_fn=lambda: lever_model(D.UNet, {"bf16"})((16, 64, 64), n_classes=11)),
        "batch 256, lr 2e-3": lambda: make_setup(batch_size=256, lr=2e-3),
        "concatenated skips": lambda: make_setup(model_fn=lambda: ConcatUNet((16, 64, 64), n_classes=11)),
        "widths 16 32 64": lambda: make_setup(model_fn=lambda: D.UNet((16, 32, 64), n_classes=11)),
        "torch.compile": lambda: compiled(make_setup()),
    }


def compiled(setup):
    """torch.compile on the model (the EMA and the optimizer stay eager); compiles on the warm-up steps."""
    model = setup["model"]
    fast = torch.compile(model)
    setup["loss_fn_eager"] = setup["loss_fn"]
    setup["loss_fn"] = lambda m, x0, y: setup["loss_fn_eager"](fast, x0, y)
    return setup


def main():
    ap = argparse.ArgumentParser(description="training rate vs the fp32 matmul rate on this machine")
    ap.add_argument("--rounds", type=int, default=3, help="turns of (matmul, train)")
    ap.add_argument("--profile", action="store_true", help="print the top ops of a training step")
    ap.add_argument("--levers", action="store_true", help="measure each lever against the default, in turns")
    ap.add_argument("--sampling", action="store_true", help="time 1,000 guided DDIM-50 digits, new UNet and old")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    setup = make_setup()
    flops = flops_per_image(setup)
    mm, tr = [], []
    for _ in range(args.rounds):
        mm.append(matmul_gflops())
        tr.append(train_rate(setup))
    m, r = statistics.median(mm), statistics.median(tr)
    print(f"fp32 matmul 2048^2: {m:.0f} GFLOP/s   (rounds: {', '.join(f'{v:.0f}' for v in mm)})")
    print(f"ddpm_class training: {r:.0f} img/s x {flops / 1e9:.3f} GFLOP = {r * flops / 1e9:.0f} GFLOP/s"
          f"   (rounds: {', '.join(f'{v:.0f}' for v in tr)})")
    print(f"ratio: {r * flops / 1e9 / m:.0%} of the matmul rate")
    if args.profile:
        profile(make_setup(), flops, m)
    if args.sampling:  # weights do not change the speed: both models as initialised
        models = {"skips added (default)": make_setup()["model"],
                  "skips concatenated (before)": make_setup(model_fn=lambda: ConcatUNet((16, 64, 64), n_classes=11))["model"]}
        secs = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                secs[name].append(sampling_seconds(model))
        for name, v in secs.items():
            print(f"1,000 guided DDIM-50 digits, {name}: {statistics.median(v):.1f} s   "
                  f"(rounds: {', '.join(f'{x:.1f}' for x in v)})")
    if args.levers:
        builders = lever_setups()
        setups = {name: build() for name, build in builders.items()}
        rates = {name: [] for name in setups}
        for _ in range(args.rounds):  # in turns, so drift hits every lever alike
            for name, s in setups.items():
                rates[name].append(train_rate(s))
        base = statistics.median(rates["default"])
        print(f"\n| lever (alone, against the default) | img/s | x default |\n|---|---|---|")
        for name, v in rates.items():
            print(f"| {name} | {statistics.median(v):.0f} | {statistics.median(v) / base:.2f} |")


if __name__ == "__main__":
    main()
