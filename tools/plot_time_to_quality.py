"""RESULTS.md's plot of quality against training minutes, from evaluate.py's JSON (assets/time_to_quality.png).

    python evaluate.py runs/ttq_flow_class/samples_e*.pt runs/ttq_ddpm_class/samples_e*.pt \
        runs/shipped_flow_class runs/shipped_ddpm_class runs/sweep_flow_e2_w3gf04 --data-dir ~/mnist --json \
        > runs/ttq.json
    python tools/plot_time_to_quality.py runs/ttq.json assets/time_to_quality.png \
        --series flow_class.py=ttq_flow_class:201 flow_class.py=shipped_flow_class:201 \
                 ddpm_class.py=ttq_ddpm_class:203 ddpm_class.py=shipped_ddpm_class:203 \
        --points "the short run (w = 3 from t = 0.4)=sweep_flow_e2_w3gf04:201"

Each --series (a line) or --points (markers only) is LABEL=PATTERN:SECONDS_PER_EPOCH: the scored files whose path
holds PATTERN, placed at their epoch (read from the samples file) times SECONDS_PER_EPOCH, the model's own training
time per epoch measured alone. Series of the same label join into one line.
"""
import argparse
import json
import sys

import matplotlib
import matplotlib.ticker
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="evaluate.py --json output")
    ap.add_argument("png", help="the plot to write")
    ap.add_argument("--series", nargs="+", required=True, help="LABEL=PATTERN:SECONDS_PER_EPOCH, joined by a line")
    ap.add_argument("--points", nargs="*", default=[], help="LABEL=PATTERN:SECONDS_PER_EPOCH, markers only")
    ap.add_argument("--target-acc", type=float, default=99.5, help="a dotted line at this accuracy (%%)")
    ap.add_argument("--target-floor-x", type=float, default=3.0, help="a dotted line at this many times the floor")
    args = ap.parse_args()
    scores = json.load(open(args.json))
    floor = scores["real"]["fid"]
    fig, (ax_acc, ax_fid) = plt.subplots(1, 2, figsize=(10, 3.8))
    def points(spec):
        label, rest = spec.rsplit("=", 1)
        pattern, s_per_epoch = rest.rsplit(":", 1)
        found = []
        for path, m in scores["files"].items():
            if pattern in path:
                epoch = torch.load(path, map_location="cpu", weights_only=True)["epoch"]
                found.append((epoch * float(s_per_epoch) / 60, 100 * m["acc"], m["fid"], epoch))
        if not found:
            sys.exit(f"error: no scored file in {args.json} has {pattern!r} in its path")
        return label, found

    lines = {}
    for label, found in map(points, args.series):
        lines.setdefault(label, []).extend(found)
    for label, found in [*lines.items(), *map(points, args.points)]:
        minutes, acc, fid, epochs = zip(*sorted(found))
        style = dict(marker="o", ls="-") if label in lines else dict(marker="*", ls="", ms=12, c="black")
        for ax, y in ((ax_acc, acc), (ax_fid, fid)):
            ax.plot(minutes, y, label=label, **style)
            for x_, y_, e in zip(minutes, y, epochs):
                ax.annotate(f"{e} ep", (x_, y_), textcoords="offset points", xytext=(3, 4), fontsize=7)
    ax_acc.axhline(args.target_acc, ls=":", c="gray", label=f"{args.target_acc:g} %")
    floor_label = f"{args.target_floor_x:g}x the real-digit floor"
    ax_fid.axhline(args.target_floor_x * floor, ls=":", c="gray", label=floor_label)
    ax_fid.axhline(floor, ls="--", c="gray", label="real digits")
    xlabel = "training minutes, 2 CPU cores (log scale)"
    ax_acc.set(xscale="log", xlabel=xlabel, ylabel="% read as the digit asked for")
    ax_fid.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="FID (evaluate.py)")
    for ax in (ax_acc, ax_fid):
        ax.set_xticks([3, 5, 10, 20, 50], ["3", "5", "10", "20", "50"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=7)
    fig.suptitle("1,000 guided digits per point; the lines: each script's default sampler", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.png, dpi=90)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
