r"""Animated GIFs of a diffusion or flow run: the reverse process (noise -> digits) and the training
progress; a still strip of the reverse process (--strip), for a write-up.

Reads the files that ddpm_time.py, ddpm_class.py and the flow-matching scripts write to their run
folder. Needs no model code and no GPU: copy this file next to a run folder and run it.
(GIF: the animation extension of GIF89a, https://www.w3.org/Graphics/GIF/spec-gif89a.txt)

    python make_gif.py runs/ddpm_class               # -> runs/ddpm_class/reverse.gif
    python make_gif.py runs/ddpm_class --progress    # -> runs/ddpm_class/progress.gif
    python make_gif.py runs/ddpm_class --strip       # -> runs/ddpm_class/strip.png, a still
    python make_gif.py runs/flow_time                # a flow-matching run: no flag needed
    python make_gif.py runs/ddpm_time --scale 3 --stride 10 --fps 15 --out big.gif

Inputs (in RUN_DIR, loaded with torch.load(..., weights_only=True)):
    trajectory.pt  {"frames": uint8 (F, N, 1, 28, 28) in 0..255, "t": (F,) each frame's step, "y":
                    int64 (N,) digit labels or None, "nrow": images per grid row}; "t" is DDPM's
                    integer t, descending from T (noise) to 0 (digits), or flow matching's float t,
                    ascending from 0.0 (noise) to 1.0 (digits).
    snapshots.pt   {"grids": {epoch: uint8 (N, 1, 28, 28)}, "y": labels or None, "nrow" (8)}
Frames, counted in diffusion steps (DDPM and DDIM runs look alike): one every --stride steps of t
    from t = T, every step with t <= --dense, always t = T and t = 0. DDPM, T = 300, defaults:
    t = 300, 285, ..., 30, then 15, 14, ..., 0 -> 35 frames, 4.4 s + 2 s held. Flow matching: its
    noise level s = 1 - t counts as FLOW_SCALE s = 300 s steps (a frame every 0.05 of s, then each
    step with t >= 0.95): Euler 50 gets DDIM 50's frames. Each frame is labelled with its t.
Each frame: a header "t = 300" (or "t = 0.50", "epoch 5"), for class-conditioned runs a column with
    each row's digit, then the grid upscaled --scale times (nearest neighbour) in --levels greys.
    The last frame stays --hold seconds longer, and the GIF loops forever. Noise does not compress:
    the noisy frames cost the most bytes; --stride 5, --scale 3 or --levels 256 make it larger.
Bad input (no run folder, a missing or malformed file, a bad flag): one line on stderr, exit code 2.
What you can delete for an assignment: the checks in load_trajectory and load_snapshots keep a
    wrong file from a traceback, not the picture; with torchvision at hand, tile is make_grid;
    without labels drop the label column in render; without flow runs the float branch of
    choose_frames.
"""
import argparse
import math
import os
import signal
import sys

import torch
from PIL import Image, ImageDraw, ImageFont

PAD = 2           # white pixels between digits in the grid (before upscaling), as in the PNGs
FLOW_SCALE = 300  # flow matching's noise level s = 1 - t in [0, 1] counts as FLOW_SCALE s steps
FPS = 8           # --fps default of the reverse process
PROGRESS_FPS = 2  # --fps default with --progress
STRIP_COLS = 11   # --strip: this many of the steps, evenly spaced from the noise to the digits
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
    ap = argparse.ArgumentParser(description="Reverse-process or training GIF (or strip) of a run")
    ap.add_argument("run_dir", help="run folder of ddpm_time.py, ddpm_class.py or a flow script, "
                    "e.g. runs/ddpm_class")
    ap.add_argument("--progress", action="store_true", help="GIF of the per-epoch sample grids")
    ap.add_argument("--strip", action="store_true",
                    help=f"a PNG instead: the first digit of each row at {STRIP_COLS} steps, noise "
                         "to digit (of the flags below only --out and --scale apply)")
    g = ap.add_argument_group("frames")
    g.add_argument("--stride", type=number(int, 1), default=15,
                   help="one frame every k steps of t, from t = T down")
    g.add_argument("--dense", type=number(int, 0), default=15,
                   help="also every frame with t <= N (digits sharpen there)")
    g = ap.add_argument_group("output")
    g.add_argument("--out", default=None,
                   help="output path (default RUN_DIR/reverse.gif, progress.gif or strip.png)")
    g.add_argument("--fps", type=number(float, 0, lo_included=False), default=None,
                   help=f"frames per second, at most 50 (default {FPS}; {PROGRESS_FPS} "
                        "with --progress)")
    g.add_argument("--hold", type=number(float, 0), default=2.0,
                   help="extra seconds on the last frame before the loop")
    g.add_argument("--scale", type=number(int, 1, 17), default=2,
                   help="integer upscaling 1..16, nearest neighbour (28 px -> 56 px)")
    g.add_argument("--levels", type=number(int, 2, 257), default=16,
                   help="grey levels, 2..256 (fewer: smaller file; 256: exact)")
    args = parse_flags(ap, argv)[0]
    if args.progress and args.strip:
        ap.error("--progress and --strip each make their own picture: pass one of them")
    if args.fps is not None and args.fps > 50:
        ap.error("--fps must be in (0, 50]: GIF delays are in 1/100 s, "
                 "browsers slow down anything faster")
    return args
# --- frames: which steps to show ----------------------------------------------------------------
def pick_frames(t, stride, dense):
    """Indices of the frames to show, ascending, for the steps t (descending to 0: DDPM's t, or a
    flow's noise level on that scale): the first frame at or below each of t = T, T - stride,
    T - 2 stride, ..., every frame with t <= dense, and always both ends. Counted in t, so DDPM
    (all steps) and DDIM (every 6th) runs give the same picture. The noisy start looks alike to the
    eye yet costs the most bytes (noise does not compress); the digits sharpen in the last steps,
    so those are all kept."""
    keep = {i for i, s in enumerate(t) if s <= dense} | {0, len(t) - 1}
    mark = t[0]
    while mark >= 0:
        keep.add(next((i for i, s in enumerate(t) if s <= mark), len(t) - 1))
        mark -= stride
    return sorted(keep)

def choose_frames(t, stride, dense):
    """The frames to show and their headers. DDPM: integer t from T down to 0, "t = 300". Flow
    matching: float t from 0.0 up to 1.0, chosen by its noise level s = 1 - t on DDPM's scale
    (FLOW_SCALE s, rounded to 1e-3 so t = 0.95 counts as 15 exactly), "t = 0.50"."""
    if t.is_floating_point():
        steps = [round(FLOW_SCALE * (1 - s), 3) for s in t.tolist()]  # s on DDPM's scale
        keep = pick_frames(steps, stride, dense)
        return keep, [f"t = {t[i].item():.2f}" for i in keep]
    keep = pick_frames(t.tolist(), stride, dense)
    return keep, [f"t = {t[i].item()}" for i in keep]
# --- frames: what each one shows -----------------------------------------------------------------
def tile(images, nrow):
    """(N, 1, H, W) uint8 -> one grid (rows (H + PAD) + PAD, cols (W + PAD) + PAD), white between
    digits: the layout of torchvision's make_grid, without needing torchvision."""
    N, _, H, W = images.shape
    cols, rows = min(nrow, N), math.ceil(N / nrow)
    grid = torch.full((rows * (H + PAD) + PAD, cols * (W + PAD) + PAD), 255, dtype=torch.uint8)
    for i in range(N):
        r, c = divmod(i, cols)
        top, left = PAD + r * (H + PAD), PAD + c * (W + PAD)  # the digit's corner
        grid[top:top + H, left:left + W] = images[i, 0]
    return grid

def load_font(px):
    """Pillow's built-in font at px pixels (scalable since Pillow 10.1); else its bitmap font."""
    try:
        return ImageFont.load_default(size=px)
    except Exception:  # older Pillow (no size argument) or Pillow built without FreeType
        return ImageFont.load_default()

def draw_centered(draw, xy, text, font):
    """Text centred on xy, measured with textbbox (bitmap fonts do not support anchors)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((xy[0] - (left + right) / 2, xy[1] - (top + bottom) / 2), text, fill=0, font=font)

def render(images, text, row_labels, nrow, scale, font, px, col_labels=()):
    """One frame, mode "L": a header with `text` (or a label over each column) on top, digit
    labels on the left (if any), then the grid upscaled by nearest neighbour (pixels stay sharp),
    at the bottom right."""
    grid = Image.fromarray(tile(images, nrow).numpy())
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    header = round(1.7 * px)  # px: the font size
    left = round(1.4 * px) if row_labels else 0
    canvas = Image.new("L", (left + grid.width, header + grid.height), 255)
    canvas.paste(grid, (left, header))
    draw = ImageDraw.Draw(canvas)
    _, top, _, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((left + PAD * scale, (header - top - bottom) / 2), text, fill=0, font=font)
    H, W = images.shape[-2:]
    for r, label in enumerate(row_labels or []):  # centre of grid row r, in upscaled pixels
        y = header + scale * (PAD + r * (H + PAD) + H / 2)
        draw_centered(draw, (left / 2, y), label, font)
    for c, label in enumerate(col_labels):  # centre of grid column c
        x = left + scale * (PAD + c * (W + PAD) + W / 2)
        draw_centered(draw, (x, header / 2), label, font)
    return canvas

def to_palette(img, levels):
    """"L" -> "P" with `levels` evenly spaced greys. A small palette means short LZW codes, and
    leaves Pillow a free slot to mark the pixels that did not change since the last frame as
    transparent, so nearly still frames (near t = 0) cost few bytes."""
    index = img.point([round(v * (levels - 1) / 255) for v in range(256)])
    p = Image.frombytes("P", img.size, index.tobytes())
    p.putpalette([round(k * 255 / (levels - 1)) for k in range(levels) for _ in range(3)])
    return p
# --- GIF and strip -----------------------------------------------------------------------------
def save_gif(frames, path, fps, hold):
    """Animated GIF that loops forever (loop=0); the last frame lasts `hold` seconds longer.
    Pillow merges identical consecutive frames, so count frames in the written file."""
    ms = round(1000 / fps)
    durations = [ms] * (len(frames) - 1) + [ms + round(1000 * hold)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:  # disposal 1: each frame is drawn over the last
        frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:],
                       duration=durations, loop=0, disposal=1)
    except OSError as e:
        die(f"cannot write {path}: {e}")
    with Image.open(path) as gif:
        return gif.n_frames

def save_strip(frames, t, nrow, row_labels, scale, font, px, path):
    """One PNG: the first digit of each grid row, a row each, at STRIP_COLS of the steps evenly
    spaced from the noise to the digits (both ends included), each column headed by its t.
    Returns its width, height, rows, columns."""
    cols = torch.linspace(0, len(t) - 1, min(STRIP_COLS, len(t))).round().long().tolist()
    images = frames[cols, ::nrow].transpose(0, 1).flatten(0, 1)  # (rows * cols, 1, H, W)
    if t.is_floating_point():
        heads = [f"t={t[i].item():.2f}" for i in cols]
    else:
        heads = [f"t={t[i].item()}" for i in cols]
    column_px = scale * (frames.shape[-1] + PAD) - 2
    while px > 6 and max(font.getlength(h) for h in heads) > column_px:
        px -= 1  # a smaller font, until each t fits over its column (--scale 1)
        font = load_font(px)
    picture = render(images, "", row_labels, len(cols), scale, font, px, heads)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        picture.save(path, format="PNG")
    except OSError as e:
        die(f"cannot write {path}: {e}")
    return (*picture.size, len(images) // len(cols), len(cols))
# --- main --------------------------------------------------------------------------------------
def main(argv=None):
    # setup: flags and the run folder
    args = get_args(argv)
    print(vars(args))
    if not os.path.isdir(args.run_dir):
        die(f"{args.run_dir} is not a folder: pass the --out-dir of a ddpm_time.py, "
            "ddpm_class.py or flow run")

    # frames: one per saved epoch (--progress), or the chosen steps of the reverse process
    if args.progress:
        grids, y, nrow = load_snapshots(args.run_dir)
        epochs = sorted(grids)
        images, texts = [grids[e] for e in epochs], [f"epoch {e}" for e in epochs]
        name, fps = "progress.gif", args.fps or PROGRESS_FPS
        if len(grids) == 1:
            print(f"note: snapshots.pt holds epoch {epochs[0]} only: the GIF is a still image")
    else:  # from the noise to the digits
        frames, t, y, nrow = load_trajectory(args.run_dir)
        keep, texts = choose_frames(t, args.stride, args.dense)
        images = [frames[i] for i in keep]
        name, fps = "reverse.gif", args.fps or FPS

    # pictures: header, digit labels, the upscaled grid, in a small palette; the GIF or strip
    row_labels = None
    if y is not None:
        row_labels = [str(v) for v in y[::nrow].tolist()]  # the first digit of each row
    px = 6 * args.scale + 6  # font size: 18 px at --scale 2, next to 56 px digits
    font = load_font(px)
    if args.strip:  # a still, not a GIF
        out = args.out or os.path.join(args.run_dir, "strip.png")
        w, h, rows, cols = save_strip(frames, t, nrow, row_labels, args.scale, font, px, out)
        print(f"wrote {out}: {w}x{h} px, {rows} rows of {cols} steps")
        show(out)  # in a notebook: below the cell
        return
    pictures = [render(x, s, row_labels, nrow, args.scale, font, px)
                for x, s in zip(images, texts)]
    pictures = [to_palette(p, args.levels) for p in pictures]
    out = args.out or os.path.join(args.run_dir, name)
    n = save_gif(pictures, out, fps, args.hold)
    w, h = pictures[0].size
    kb = os.path.getsize(out) / 1024
    print(f"wrote {out}: {n} frame{'s' * (n != 1)} ({texts[0]} ... {texts[-1]}), "
          f"{w}x{h} px, {kb:.0f} KB, {fps:g} fps + {args.hold:g} s on the last frame")
    show(out)  # in a notebook: below the cell
# --- inputs: the run files, checked -------------------------------------------------------------
def describe(x):
    return f"{x.dtype} tensor {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__

def load_dict(path, keys, writer):
    """torch.load a run file, a dict holding `keys`; any failure is one clear line."""
    if not os.path.isfile(path):
        die(f"no {os.path.basename(path)} in {os.path.dirname(path) or '.'}: {writer}")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, objects weights_only refuses, ...
        die(f"{path} is not a file torch.load can read ({type(e).__name__}); {writer}")
    if not isinstance(d, dict) or not all(k in d for k in keys):
        got = sorted(map(str, d)) if isinstance(d, dict) else describe(d)
        die(f"{path} should be a dict with keys {list(keys)}, got {got}; {writer}")
    return d

def check_images(x, path, what):
    """uint8 (..., 1, H, W): the grey 0..255 images the training scripts save."""
    is_images = torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() >= 3
    if not (is_images and x.shape[-3] == 1 and x.numel()):
        die(f"{path}: {what} should be a non-empty uint8 tensor of images (..., 1, H, W), "
            f"got {describe(x)}")

def check_meta(y, nrow, n, path):
    """Labels (n,) or None, and a positive images-per-row count."""
    if y is not None and not (torch.is_tensor(y) and y.shape == (n,) and not y.is_floating_point()):
        die(f"{path}: 'y' should be None or an integer tensor ({n},), got {describe(y)}")
    if not isinstance(nrow, int) or nrow < 1:
        die(f"{path}: 'nrow' should be a positive int, got {nrow!r}")

def load_trajectory(run_dir):
    """frames uint8 (F, N, 1, H, W), t (F,): integers descending from T to 0 (DDPM) or floats
    ascending in [0, 1] (flow matching), labels y (N,) or None, nrow."""
    path = os.path.join(run_dir, "trajectory.pt")
    d = load_dict(path, ("frames", "t"),
                  "ddpm_time.py, ddpm_class.py and the flow scripts write it after sampling")
    frames, t, y, nrow = d["frames"], d["t"], d.get("y"), d.get("nrow", 8)
    check_images(frames, path, "'frames'")
    if frames.dim() != 5:
        die(f"{path}: 'frames' should be (F, N, 1, H, W), one grid of N digits per step, "
            f"got {describe(frames)}")
    if not (torch.is_tensor(t) and t.shape == (len(frames),) and t.dtype != torch.bool):
        die(f"{path}: 't' should be a tensor ({len(frames)},), one step per frame, "
            f"got {describe(t)}")
    if not t.is_floating_point() and not (t[:-1] > t[1:]).all():
        die(f"{path}: integer 't' (DDPM) should descend from T to 0, got {t.tolist()[:5]} ...")
    ascending = (t[:-1] < t[1:]).all() and t.min() >= 0 and t.max() <= 1
    if t.is_floating_point() and not ascending:
        die(f"{path}: float 't' (flow matching) should ascend from 0.0 (noise) to 1.0 "
            f"(digits), got {[round(s, 3) for s in t.tolist()[:5]]} ...")
    check_meta(y, nrow, frames.shape[1], path)
    return frames, t, y, nrow

def load_snapshots(run_dir):
    """{epoch: uint8 (N, 1, H, W)} (all the same shape), labels y (N,) or None, nrow."""
    path = os.path.join(run_dir, "snapshots.pt")
    d = load_dict(path, ("grids",),
                  "the training scripts write it after their snapshot epochs (1, 5, 10, ...)")
    grids, y, nrow = d["grids"], d.get("y"), d.get("nrow", 8)  # the scripts: 8 digits a row
    if not isinstance(grids, dict) or not grids or not all(isinstance(e, int) for e in grids):
        die(f"{path}: 'grids' should be a non-empty dict {{epoch (int): images}}, "
            f"got {describe(grids)}")
    first = next(iter(grids.values()))
    for e, x in grids.items():
        check_images(x, path, f"grids[{e}]")
        if x.dim() != 4 or x.shape != first.shape:
            die(f"{path}: every grid should be (N, 1, H, W) of one shape, "
                f"grids[{e}] is {describe(x)}")
    check_meta(y, nrow, len(first), path)
    return grids, y, nrow

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
