"""Tests for make_gif.py on synthetic run files (random digits, so every frame differs): which
frames are chosen (DDPM's integer t and flow matching's float t), what each frame shows, timing,
looping, and one-line errors for bad inputs. The expected grids come from torchvision's make_grid,
independently of make_gif's own tiling."""
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid

import make_gif
from conftest import HERE, run_script


def fake_trajectory(T, n, nrow, labels, seed=0):
    """A trajectory.pt dict as ddpm_time.py / ddpm_class.py write it, with random uint8 frames."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (T + 1, n, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.arange(n) // nrow % 10 if labels else None  # row r holds digit r, like ddpm_class
    return {"frames": frames, "t": torch.arange(T, -1, -1), "y": y, "nrow": nrow}


def fake_flow_trajectory(steps, n, nrow, labels, seed=0):
    """A flow-matching trajectory.pt: float t ascending from 0.0 (noise) to 1.0 (digits), as flow_sample returns it."""
    return {**fake_trajectory(steps, n, nrow, labels, seed), "t": torch.linspace(0, 1, steps + 1)}


def write_run(folder, trajectory=None, snapshots=None):
    os.makedirs(folder, exist_ok=True)
    if trajectory is not None:
        torch.save(trajectory, os.path.join(folder, "trajectory.pt"))
    if snapshots is not None:
        torch.save(snapshots, os.path.join(folder, "snapshots.pt"))
    return str(folder)


def read_gif(path):
    """Frames as uint8 (H, W) grey tensors (Pillow composites each onto the last), durations in ms,
    and the loop count."""
    frames, durations = [], []
    with Image.open(path) as im:
        assert im.format == "GIF" and im.is_animated
        loop = im.info.get("loop")
        for i in range(im.n_frames):
            im.seek(i)
            grey = im.convert("L")
            frames.append(torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).view(grey.height, grey.width))
            durations.append(im.info["duration"])
    return frames, durations, loop


def expected_grid(images, nrow, scale):
    """What the GIF should show below the header: make_grid (2 px white gaps), upscaled."""
    grid = make_grid(images, nrow=nrow, padding=2, pad_value=255)[0]
    return grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def grid_of(frame, grid):
    """The grid sits at the bottom right of each frame (header above, labels to the left)."""
    return frame[-grid.shape[0]:, -grid.shape[1]:]


# --- frame choice ------------------------------------------------------------------------------
def test_pick_frames_ddpm_defaults():
    t = list(range(300, -1, -1))                                  # DDPM: every step, T = 300
    shown = [t[i] for i in make_gif.pick_frames(t, 15, 15)]
    assert shown[0] == 300 and shown[-1] == 0
    assert all(a > b for a, b in zip(shown, shown[1:]))           # descending, no repeats
    assert shown[-16:] == list(range(15, -1, -1))                 # dense: every step near t = 0
    assert shown[:-16] == list(range(300, 15, -15))               # coarse: every 15th step
    assert len(shown) == 35                                       # the count the docstring promises


def test_pick_frames_by_hand():
    t = list(range(10, -1, -1))
    assert [t[i] for i in make_gif.pick_frames(t, 4, 2)] == [10, 6, 2, 1, 0]
    assert [t[i] for i in make_gif.pick_frames(t, 100, 0)] == [10, 0]    # both ends, always
    assert make_gif.pick_frames([7], 3, 3) == [0]                          # a single frame


def test_pick_frames_ddim_counts_in_t():
    t = torch.linspace(300, 0, 51).round().long().tolist()       # DDIM 50 steps: 300, 294, ..., 0
    shown = [t[i] for i in make_gif.pick_frames(t, 30, 12)]
    assert shown == [300, 270, 240, 210, 180, 150, 120, 90, 60, 30, 12, 6, 0]


def test_choose_frames_ddpm_is_pick_frames_with_integer_headers():
    t = torch.arange(300, -1, -1)
    keep, texts = make_gif.choose_frames(t, 15, 15)
    assert keep == make_gif.pick_frames(t.tolist(), 15, 15)
    assert texts[0] == "t = 300" and texts[-1] == "t = 0" and len(texts) == 35


def test_choose_frames_flow_by_noise_level():
    """Flow t = 0, 0.1, ..., 1 is noise level s = 1 - t = 1 .. 0, i.e. 300, 270, ..., 0 on DDPM's scale:
    stride 60 marks 300, 240, ..., 0, and dense 30 adds s = 0.1 (t = 0.9); float32 t rounds right."""
    keep, texts = make_gif.choose_frames(torch.linspace(0, 1, 11), 60, 30)
    assert keep == [0, 2, 4, 6, 8, 9, 10]
    assert texts == ["t = 0.00", "t = 0.20", "t = 0.40", "t = 0.60", "t = 0.80", "t = 0.90", "t = 1.00"]


def test_flow_50_steps_picks_what_ddim_50_picks():
    """Euler 50 (t = 0, 0.02, ..., 1) and DDIM 50 (t = 300, 294, ..., 0) are the same steps of noise."""
    ddim = torch.linspace(300, 0, 51).round().long()
    assert make_gif.choose_frames(torch.linspace(0, 1, 51), 15, 15)[0] == make_gif.choose_frames(ddim, 15, 15)[0]


# --- the reverse-process GIF ---------------------------------------------------------------------
def test_reverse_gif_class_conditioned(tmp_path):
    traj = fake_trajectory(T=40, n=20, nrow=4, labels=True)
    run = write_run(tmp_path / "run", traj)
    r = run_script("make_gif.py", run, "--levels", 256, "--scale", 2, "--stride", 10, "--dense", 5,
                   "--fps", 10, "--hold", 1.5)
    frames, durations, loop = read_gif(os.path.join(run, "reverse.gif"))
    index = [0, 10, 20, 30, 35, 36, 37, 38, 39, 40]              # t = 40, 30, 20, 10, 5, 4, 3, 2, 1, 0
    assert loop == 0 and len(frames) == len(index) and "10 frames" in r.stdout
    assert durations[:-1] == [100] * (len(index) - 1) and durations[-1] == 1600   # the last one is held
    for frame, i in zip(frames, index):                           # frame k shows trajectory step index[k]
        want = expected_grid(traj["frames"][i], 4, 2)
        assert torch.equal(grid_of(frame, want), want)
    last = grid_of(frames[-1], expected_grid(traj["frames"][-1], 4, 2))
    assert not torch.equal(last, expected_grid(traj["frames"][-2], 4, 2))      # t = 0, not t = 1
    grid_h, grid_w = expected_grid(traj["frames"][0], 4, 2).shape
    label_col = frames[0][-grid_h:, :-grid_w]
    assert label_col.shape[1] > 0                                 # a label column for class runs
    for r_ in range(5):                                           # and a drawn digit in every row band
        assert (label_col[r_ * 60 + 4:(r_ + 1) * 60] < 128).any()


def test_reverse_gif_unconditional_default_levels(tmp_path, capsys):
    traj = fake_trajectory(T=20, n=12, nrow=8, labels=False)
    run = write_run(tmp_path / "run", traj)
    make_gif.main([run])                                          # all defaults, out = RUN/reverse.gif
    frames, durations, loop = read_gif(os.path.join(run, "reverse.gif"))
    assert len(frames) == 17 and loop == 0                        # t = 20, then every step 15 .. 0
    assert all(d < durations[-1] for d in durations[:-1])
    want = expected_grid(traj["frames"][-1], 8, 2)
    assert frames[-1].shape[1] == want.shape[1]                   # no label column without labels
    err = (grid_of(frames[-1], want).int() - want.int()).abs()
    assert err.max() <= 9                                         # 16 grey levels: within half a step (8.5)
    assert "17 frames" in capsys.readouterr().out


def test_reverse_gif_flow_matching_needs_no_flag(tmp_path, capsys):
    traj = fake_flow_trajectory(steps=10, n=12, nrow=4, labels=True)
    run = write_run(tmp_path / "run", traj)
    make_gif.main([run, "--levels", "256", "--stride", "60", "--dense", "30"])
    frames, durations, loop = read_gif(os.path.join(run, "reverse.gif"))
    index = [0, 2, 4, 6, 8, 9, 10]                                # t = 0.0 (noise), 0.2, ..., 0.8, 0.9, 1.0 (digits)
    assert loop == 0 and len(frames) == len(index) and durations[-1] > durations[0]
    for frame, i in zip(frames, index):
        want = expected_grid(traj["frames"][i], 4, 2)
        assert torch.equal(grid_of(frame, want), want)
    assert "7 frames (t = 0.00 ... t = 1.00)" in capsys.readouterr().out


def test_progress_gif_one_frame_per_epoch_in_order(tmp_path):
    g = torch.Generator().manual_seed(1)
    grids = {e: torch.randint(0, 256, (16, 1, 28, 28), generator=g, dtype=torch.uint8) for e in (10, 1, 5)}
    run = write_run(tmp_path / "run", snapshots={"grids": grids, "y": torch.arange(16) // 8})
    out = tmp_path / "sub" / "p.gif"                              # --out into a folder not yet made
    make_gif.main([run, "--progress", "--levels", "256", "--out", str(out), "--fps", "4"])
    frames, durations, loop = read_gif(out)
    assert len(frames) == 3 and loop == 0 and durations[:2] == [250, 250] and durations[2] > 250
    for frame, e in zip(frames, (1, 5, 10)):
        want = expected_grid(grids[e], 8, 2)
        assert torch.equal(grid_of(frame, want), want)


# --- the strip: one PNG ------------------------------------------------------------------------------
def read_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "L"
        return torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(im.height, im.width)


def test_strip_first_digit_of_each_row_at_evenly_spaced_steps(tmp_path, capsys):
    traj = fake_trajectory(T=20, n=12, nrow=4, labels=True)      # 3 grid rows of 4 digits, 21 frames
    run = write_run(tmp_path / "run", traj)
    make_gif.main([run, "--strip"])                               # default out: RUN/strip.png, --scale 2
    cols = list(range(0, 21, 2))                                  # 11 of the 21 frames: t = 20, 18, ..., 0
    want = expected_grid(torch.stack([traj["frames"][i, r * 4] for r in range(3) for i in cols]), len(cols), 2)
    img = read_png(os.path.join(run, "strip.png"))
    assert torch.equal(grid_of(img, want), want)                  # row r: digit 4 r, noise (t = 20) to digit (t = 0)
    assert img.shape[1] > want.shape[1] and img.shape[0] > want.shape[0]   # a label column and a header row
    assert (img[:img.shape[0] - want.shape[0], -want.shape[1]:] < 128).any()  # the t labels are drawn
    assert "3 rows of 11 steps" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(run, "reverse.gif"))


def test_strip_of_a_short_flow_run_shows_every_step(tmp_path):
    traj = fake_flow_trajectory(steps=5, n=16, nrow=8, labels=False)  # 6 frames, fewer than STRIP_COLS
    run = write_run(tmp_path / "run", traj)
    out = tmp_path / "sub" / "s.png"
    make_gif.main([run, "--strip", "--scale", "1", "--out", str(out)])
    want = expected_grid(torch.stack([traj["frames"][i, r * 8] for r in range(2) for i in range(6)]), 6, 1)
    img = read_png(out)
    assert torch.equal(grid_of(img, want), want) and img.shape[1] == want.shape[1]  # no labels: no label column


def test_copied_alone_into_an_empty_folder(tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(os.path.join(HERE, "make_gif.py"), alone)
    write_run(alone / "runs" / "ddpm_time", fake_trajectory(T=6, n=4, nrow=8, labels=False))
    r = subprocess.run([sys.executable, "make_gif.py", "runs/ddpm_time", "--stride", "2", "--dense", "0"],
                       cwd=alone, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(read_gif(alone / "runs" / "ddpm_time" / "reverse.gif")[0]) == 4   # t = 6, 4, 2, 0


# --- errors: one line, exit code 2 -----------------------------------------------------------------
def garbage(folder):
    with open(os.path.join(folder, "trajectory.pt"), "wb") as f:
        f.write(b"not a torch file")


def bad_traj(**change):
    return {**fake_trajectory(T=3, n=2, nrow=2, labels=False), **change}


ERRORS = {  # name: (how to break the run folder, extra flags, words the message must hold)
    "missing run dir": (None, [], "is not a folder"),
    "no trajectory": (lambda d: None, [], "no trajectory.pt"),
    "no snapshots": (lambda d: None, ["--progress"], "no snapshots.pt"),
    "not torch": (garbage, [], "torch.load"),
    "not a dict": (lambda d: write_run(d, [1, 2]), [], "dict"),
    "no frames": (lambda d: write_run(d, {"t": torch.arange(3)}), [], "'frames'"),
    "float frames": (lambda d: write_run(d, bad_traj(frames=torch.zeros(4, 2, 1, 28, 28))), [], "uint8"),
    "t ascending": (lambda d: write_run(d, bad_traj(t=torch.arange(4))), [], "descend"),
    "flow t descending": (lambda d: write_run(d, bad_traj(t=torch.linspace(1, 0, 4))), [], "ascend from 0.0"),
    "flow t beyond 1": (lambda d: write_run(d, bad_traj(t=torch.linspace(0, 2, 4))), [], "ascend from 0.0"),
    "t wrong length": (lambda d: write_run(d, bad_traj(t=torch.arange(3, -1, -1)[:3])), [], "one step per frame"),
    "bad labels": (lambda d: write_run(d, bad_traj(y=torch.zeros(5, dtype=torch.long))), [], "'y'"),
    "bad grids": (lambda d: write_run(d, snapshots={"grids": torch.zeros(3)}), ["--progress"], "'grids'"),
}


@pytest.mark.parametrize("name", ERRORS)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, name):
    breaker, flags, words = ERRORS[name]
    run = tmp_path / "run"
    if breaker:
        run.mkdir()
        breaker(run)
    with pytest.raises(SystemExit) as e:                          # anything but SystemExit fails the test
        make_gif.main([str(run), *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and words in err, err


def test_bad_input_in_a_real_process(tmp_path):
    run = write_run(tmp_path / "run", [1, 2])
    r = run_script("make_gif.py", run, check=False, process=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "trajectory.pt" in r.stderr


@pytest.mark.parametrize("flags", [["--fps", "0"], ["--scale", "0"], ["--stride", "0"], ["--levels", "1"],
                                   ["--fps", "51"], ["--fps", "nan"], ["--hold", "inf"], ["--scale", "17"],
                                   ["--levels", "257"], ["--dense", "-1"], ["--progress", "--strip"]])
def test_bad_flags(tmp_path, flags, capsys):
    with pytest.raises(SystemExit) as e:
        make_gif.main([str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and flags[0] in err.strip().splitlines()[-1]
