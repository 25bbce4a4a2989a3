"""Turn a finished run's ckpt.pt into a small shipped file in pretrained/: the weights a script samples
from (the EMA for the DDPM and flow scripts, the model with its BatchNorm statistics for the denoiser),
the training flags, the loss history, and a record of how it was made and what it scores.

    python tools/export_pretrained.py runs/ddpm_class/ckpt.pt pretrained/ddpm_class.pt \
        --about "made by=python ddpm_class.py (the default run)" --about "scores=..."

Dropped: the training weights and the optimizer state (two thirds of a checkpoint), the RNG state, and
every flag that does not change the weights (paths, device, sampling flags), so a shipped file names no
folder of the machine that made it. The scripts read it with --ckpt (which implies --sample-only):

    python ddpm_class.py --ckpt pretrained/ddpm_class.pt --digits 7
"""
import argparse
import importlib
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None):
    ap = argparse.ArgumentParser(description="ckpt.pt of a finished run -> a small file for pretrained/")
    ap.add_argument("ckpt", help="a run's ckpt.pt")
    ap.add_argument("out", help="the file to write, e.g. pretrained/ddpm_class.pt")
    ap.add_argument("--about", action="append", default=[], metavar="KEY=VALUE",
                    help="a line of the record printed when the file is loaded (repeatable)")
    args = ap.parse_args(argv)
    ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=True)
    script = importlib.import_module(ckpt["script"])  # its TRAIN_KEYS: the flags that shaped the weights
    config = {k: ckpt["config"][k] for k in (*script.TRAIN_KEYS, "epochs")}
    weights = {"ema": ckpt["ema"]} if "ema" in ckpt else {"model": ckpt["model"]}
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    about = {"weights": f"{next(iter(weights))} after epoch {ckpt['epoch']}", "exported at commit": commit.strip()}
    about.update(line.split("=", 1) for line in args.about)
    shipped = {"script": ckpt["script"], "config": config, "epoch": ckpt["epoch"], **weights,
               "loss_history": ckpt["loss_history"], "about": about}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save(shipped, args.out)
    print(f"{args.out}: {os.path.getsize(args.out) / 1e6:.2f} MB, {ckpt['script']}.py, epoch {ckpt['epoch']}")
    for k, v in about.items():
        print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
