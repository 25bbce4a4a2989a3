r"""Animated GIFs of a DDPM run: the reverse process (noise -> digits) and the training progress.

Reads the files that ddpm_time.py and ddpm_class.py write to their run folder. Needs no model code
and no GPU: copy this file next to a run folder and run it.

    python make_gif.py runs/ddpm_class                    # -> runs/ddpm_class/reverse.gif
    python make_gif.py runs/ddpm_class --progress         # -> runs/ddpm_class/progress.gif
    python make_gif.py runs/ddpm_time --scale 3 --stride 10 --fps 15 --out big.gif

Inputs (in RUN_DIR, loaded with torch.load(..., weights_only=True)):
    trajectory.pt  {"frames": uint8 (F, N, 1, 28, 28) in 0..255, "t": int64 (F,) from T down to 0,
                    "y": int64 (N,) digit labels or None, "nrow": images per grid row}
    snapshots.pt   {"grids": {epoch: uint8 (N, 1, 28, 28)}, "y": labels or None, "nrow" (optional, 8)}
Which steps become frames (t counts diffusion steps, so DDPM and DDIM runs look alike):
    one every --stride steps of t from t = T, every step with t <= --dense, always t = T and t = 0.
    DDPM, T = 300, defaults: t = 300, 285, ..., 30, then 15, 14, ..., 0 -> 35 frames, 4.4 s + 2 s held.
Each frame: a header "t = 300" (or "epoch 5"), for class-conditioned runs a column with the digit
of each row, then the grid upscaled --scale times (nearest neighbour) in --levels grey levels.
The last frame stays --hold seconds longer, and the GIF loops forever.
Size: noise does not compress, so the noisy frames cost the most bytes (about 100 KB each for
80 digits at --scale 2, 10 KB near t = 0): 80 digits, T = 300 make about 2 MB at the defaults.
Finer steps (--stride 5), --scale 3 or exact greys (--levels 256) each cost about 2x the bytes.
"""
import argparse
import math
import os
import sys

import torch
from PIL import Image, ImageDraw, ImageFont

PAD = 2  # white pixels between digits in the grid (before upscaling), as in the scripts' PNGs


# --- Config ------------------------------------------------------------------------------------
def get_args(argv=None):
    ap = argparse.ArgumentParser(description="Reverse-process or training-progress GIF of a DDPM run")
    ap.add_argument("run_dir", help="run folder of ddpm_time.py or ddpm_class.py, e.g. runs/ddpm_class")
    ap.add_argument("--progress", action="store_true", help="GIF of the per-epoch sample grids instead")
    ap.add_argument("--out", default=None, help="GIF path (default RUN_DIR/reverse.gif or progress.gif)")
    ap.add_argument("--fps", type=float, default=None, help="frames per second (default 8; 2 with --progress)")
    ap.add_argument("--hold", type=float, default=2.0, help="extra seconds on the last frame before the loop")
    ap.add_argument("--scale", type=int, default=2, help="integer upscaling, nearest neighbour (28 px -> 56 px)")
    ap.add_argument("--stride", type=int, default=15, help="one frame every k steps of t, from t = T down")
    ap.add_argument("--dense", type=int, default=15, help="also every frame with t <= N (digits sharpen there)")
    ap.add_argument("--levels", type=int, default=16, help="grey levels, 2..256 (fewer: smaller file; 256: exact)")
    args = ap.parse_args(argv)
    if args.fps is not None and not 0 < args.fps <= 50:
        ap.error("--fps must be in (0, 50]: GIF delays are in 1/100 s, browsers slow down anything faster")
    if not 1 <= args.scale <= 16 or args.stride < 1 or args.dense < 0 or args.hold < 0:
        ap.error("need 1 <= --scale <= 16, --stride >= 1, --dense >= 0 and --hold >= 0")
    if not 2 <= args.levels <= 256:
        ap.error("--levels must be in 2..256")
    return args


def die(msg, code=2):
    """A user error: one clear line on stderr, no traceback."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


# --- Inputs ------------------------------------------------------------------------------------
def describe(x):
    return f"{x.dtype} tensor {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__


def load_dict(path, keys, writer):
    """torch.load a run file and check it is a dict holding `keys`; any failure is one clear line."""
    if not os.path.isfile(path):
        die(f"no {os.path.basename(path)} in {os.path.dirname(path) or '.'}: {writer}")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, pickled objects weights_only refuses, ...
        die(f"{path} is not a file torch.load can read ({type(e).__name__}); {writer}")
    if not isinstance(d, dict) or not all(k in d for k in keys):
        got = sorted(map(str, d)) if isinstance(d, dict) else describe(d)
        die(f"{path} should be a dict with keys {list(keys)}, got {got}; {writer}")
    return d


def check_images(x, path, what):
    """uint8 (..., 1, H, W): the grey 0..255 images the DDPM scripts save."""
    if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() >= 3 and x.shape[-3] == 1 and x.numel()):
        die(f"{path}: {what} should be a non-empty uint8 tensor of images (..., 1, H, W), got {describe(x)}")


def check_meta(y, nrow, n, path):
    """Labels (n,) or None, and a positive images-per-row count."""
    if y is not None and not (torch.is_tensor(y) and y.shape == (n,) and not y.is_floating_point()):
        die(f"{path}: 'y' should be None or an integer tensor ({n},), got {describe(y)}")
    if not isinstance(nrow, int) or nrow < 1:
        die(f"{path}: 'nrow' should be a positive int, got {nrow!r}")


def load_trajectory(run_dir):
    """frames uint8 (F, N, 1, H, W), t (F,) descending from T to 0, labels y (N,) or None, nrow."""
    path = os.path.join(run_dir, "trajectory.pt")
    d = load_dict(path, ("frames", "t"), "ddpm_time.py and ddpm_class.py write it after sampling")
    frames, t, y, nrow = d["frames"], d["t"], d.get("y"), d.get("nrow", 8)
    check_images(frames, path, "'frames'")
    if frames.dim() != 5:
        die(f"{path}: 'frames' should be (F, N, 1, H, W), one grid of N digits per step, got {describe(frames)}")
    if not (torch.is_tensor(t) and t.shape == (len(frames),) and not t.is_floating_point()):
        die(f"{path}: 't' should be an integer tensor ({len(frames)},), one step per frame, got {describe(t)}")
    if not (t[:-1] > t[1:]).all():
        die(f"{path}: 't' should descend from T to 0, got {t.tolist()[:5]} ...")
    check_meta(y, nrow, frames.shape[1], path)
    return frames, t, y, nrow


def load_snapshots(run_dir):
    """{epoch: uint8 (N, 1, H, W)} (all the same shape), labels y (N,) or None, nrow."""
    path = os.path.join(run_dir, "snapshots.pt")
    d = load_dict(path, ("grids",), "ddpm_time.py and ddpm_class.py write it at epochs 1, 5, 10, 15, 20")
    grids, y, nrow = d["grids"], d.get("y"), d.get("nrow", 8)  # the scripts draw 8 digits per row
    if not isinstance(grids, dict) or not grids or not all(isinstance(e, int) for e in grids):
        die(f"{path}: 'grids' should be a non-empty dict {{epoch (int): images}}, got {describe(grids)}")
    for e, x in grids.items():
        check_images(x, path, f"grids[{e}]")
        if x.dim() != 4 or x.shape != next(iter(grids.values())).shape:
            die(f"{path}: every grid should be (N, 1, H, W) of one shape, grids[{e}] is {describe(x)}")
    check_meta(y, nrow, len(next(iter(grids.values()))), path)
    return grids, y, nrow


# --- Frames ------------------------------------------------------------------------------------
def pick_frames(t, stride, dense):
    """Indices of the frames to show, ascending, for the steps t (descending from T to 0): the
    first frame at or below each of t = T, T - stride, T - 2 stride, ..., every frame with
    t <= dense, and always both ends. Counted in t, so DDPM (all steps) and DDIM (every 6th)
    runs give the same picture. The noisy start looks alike to the eye yet costs the most bytes
    (noise does not compress); the digits sharpen in the last steps, so those are all kept."""
    t = [int(s) for s in t]
    keep = {i for i, s in enumerate(t) if s <= dense} | {0, len(t) - 1}
    for mark in range(t[0], -1, -stride):
        keep.add(next((i for i, s in enumerate(t) if s <= mark), len(t) - 1))
    return sorted(keep)


def tile(images, nrow):
    """(N, 1, H, W) uint8 -> one grid (rows (H + PAD) + PAD, cols (W + PAD) + PAD), white between
    digits: the layout of torchvision's make_grid, without needing torchvision."""
    N, _, H, W = images.shape
    cols, rows = min(nrow, N), math.ceil(N / nrow)
    grid = torch.full((rows * (H + PAD) + PAD, cols * (W + PAD) + PAD), 255, dtype=torch.uint8)
    for i in range(N):
        r, c = divmod(i, cols)
        grid[PAD + r * (H + PAD):(r + 1) * (H + PAD), PAD + c * (W + PAD):(c + 1) * (W + PAD)] = images[i, 0]
    return grid


def load_font(px):
    """Pillow's built-in font at px pixels (scalable since Pillow 10.1); else its small bitmap font."""
    try:
        return ImageFont.load_default(size=px)
    except Exception:  # older Pillow (no size argument) or Pillow built without FreeType
        return ImageFont.load_default()


def draw_centered(draw, xy, text, font):
    """Text centred on xy, measured with textbbox (anchors are not supported by bitmap fonts)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((xy[0] - (left + right) / 2, xy[1] - (top + bottom) / 2), text, fill=0, font=font)


def render(images, text, row_labels, nrow, scale, font, px):
    """One frame, mode "L": header with `text` on top, digit labels on the left (if any), then the
    grid upscaled by nearest neighbour (so pixels stay sharp). The grid sits at the bottom right."""
    grid = Image.fromarray(tile(images, nrow).numpy())
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    header, left = round(1.7 * px), round(1.4 * px) if row_labels else 0  # px: the font size
    canvas = Image.new("L", (left + grid.width, header + grid.height), 255)
    canvas.paste(grid, (left, header))
    draw = ImageDraw.Draw(canvas)
    _, top, _, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((left + PAD * scale, (header - top - bottom) / 2), text, fill=0, font=font)
    H = images.shape[-2]
    for r, label in enumerate(row_labels or []):  # centre of grid row r, in upscaled pixels
        draw_centered(draw, (left / 2, header + scale * (PAD + r * (H + PAD) + H / 2)), label, font)
    return canvas


def to_palette(img, levels):
    """"L" -> "P" with `levels` evenly spaced greys. A small palette means short LZW codes, and
    leaves Pillow a free slot to mark the pixels that did not change since the last frame as
    transparent, so nearly still frames (near t = 0) cost few bytes."""
    index = img.point([round(v * (levels - 1) / 255) for v in range(256)])
    p = Image.frombytes("P", img.size, index.tobytes())
    p.putpalette([round(k * 255 / (levels - 1)) for k in range(levels) for _ in range(3)])
    return p


# --- GIF ---------------------------------------------------------------------------------------
def save_gif(frames, path, fps, hold):
    """Animated GIF that loops forever (loop=0); the last frame lasts `hold` seconds longer.
    Pillow merges identical consecutive frames, so count frames in the written file."""
    ms = round(1000 / fps)
    durations = [ms] * (len(frames) - 1) + [ms + round(1000 * hold)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:],
                       duration=durations, loop=0, disposal=1)  # disposal 1: draw over the last frame
    except OSError as e:
        die(f"cannot write {path}: {e}")
    with Image.open(path) as gif:
        return gif.n_frames


# --- main --------------------------------------------------------------------------------------
def main(argv=None):
    args = get_args(argv)
    print(vars(args))
    if not os.path.isdir(args.run_dir):
        die(f"{args.run_dir} is not a folder: pass the --out-dir of a ddpm_time.py or ddpm_class.py run")
    if args.progress:  # one frame per saved epoch, in epoch order
        grids, y, nrow = load_snapshots(args.run_dir)
        images, texts = [grids[e] for e in sorted(grids)], [f"epoch {e}" for e in sorted(grids)]
        name, fps = "progress.gif", args.fps or 2
        if len(grids) == 1:
            print(f"note: snapshots.pt holds epoch {sorted(grids)[0]} only, so the GIF is a still image")
    else:  # the reverse process, from t = T (noise) to t = 0 (digits)
        frames, t, y, nrow = load_trajectory(args.run_dir)
        keep = pick_frames(t.tolist(), args.stride, args.dense)
        images, texts = [frames[i] for i in keep], [f"t = {t[i].item()}" for i in keep]
        name, fps = "reverse.gif", args.fps or 8
    row_labels = [str(v) for v in y[::nrow].tolist()] if y is not None else None  # first digit of each row
    px = 6 * args.scale + 6  # font size: 18 px at --scale 2, next to 56 px digits
    font = load_font(px)
    pictures = [to_palette(render(x, s, row_labels, nrow, args.scale, font, px), args.levels)
                for x, s in zip(images, texts)]
    out = args.out or os.path.join(args.run_dir, name)
    n = save_gif(pictures, out, fps, args.hold)
    w, h = pictures[0].size
    print(f"wrote {out}: {n} frame{'s' * (n != 1)} ({texts[0]} ... {texts[-1]}), {w}x{h} px, "
          f"{os.path.getsize(out) / 1024:.0f} KB, {fps:g} fps + {args.hold:g} s on the last frame")


if __name__ == "__main__":
    main()
