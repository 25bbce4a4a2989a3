"""Smoke tests: each script runs a few steps on the CPU, on tiny IDX files written by the test,
through its real loading code, and writes valid outputs. Also: clear errors on bad input.

    pytest -q                      # all fast tests (offline)
"""
import ast
import contextlib
import importlib.util
import io
import os
import re
import shutil
import subprocess

import pytest
import torch
from PIL import Image

from conftest import assert_png, make_mnist_dir, one_line_error, run_script

TINY = ["--T", "20", "--channels", "8", "8", "8", "--device", "cpu"]  # a model that trains in a second
DDPM_SCRIPTS = ["ddpm_time.py", "ddpm_class.py"]


@pytest.fixture(scope="module", params=DDPM_SCRIPTS)
def trained_run(request, tiny_mnist, tmp_path_factory):
    """One 2-epoch run of each DDPM script, copied alone into an empty folder; several tests read its outputs."""
    script = request.param
    out, alone = str(tmp_path_factory.mktemp(script[:-3])), tmp_path_factory.mktemp(script[:-3] + "_alone")
    extra = ["--digits", "3", "7", "--steps", "10"] if script == "ddpm_class.py" else []  # DDIM 10: grids, sweep
    r = run_script(script, "--data-dir", tiny_mnist, "--out-dir", out, "--epochs", "2",
                   "--n-samples", "12", *TINY, *extra, alone=alone)
    assert os.listdir(alone) == [script]
    return script, out, r.stdout


def test_ddpm_outputs_exist_and_are_valid(trained_run):
    script, out, stdout = trained_run
    pngs = ["samples.png", "samples_epoch001.png", "loss.png"]
    pngs += ["guidance.png"] if script == "ddpm_class.py" else []
    for name in pngs:
        assert_png(os.path.join(out, name))
    assert not os.path.exists(os.path.join(out, "strip.png"))  # make_gif.py --strip draws it from trajectory.pt:
    run_script("make_gif.py", out, "--strip")
    assert_png(os.path.join(out, "strip.png"))
    assert os.path.exists(os.path.join(out, "samples_epoch002.png"))  # the last epoch, too
    for key in ("img/s", "s/epoch", "parameters", "samples.pt"):
        assert key in stdout


# the loss history of this tiny run (2 epochs x 4 steps, seed 0): a change to the code that should change
# no number (a reshaping, a refactor) must keep it. Reordering the scripts into method-first order kept it
# to the bit (checked against main f5d969a); the UNet's added skips (instead of concatenated) set new values.
REFERENCE_LOSSES = {
    "ddpm_time.py": [1.135036, 1.064773, 1.001715, 0.950666, 0.899079, 0.859834, 0.814963, 0.761251],
    "ddpm_class.py": [1.202548, 1.128695, 1.049641, 0.993104, 0.937403, 0.905232, 0.857563, 0.820760],
}


def test_same_numbers_as_the_reference(trained_run):
    script, out, _ = trained_run
    losses = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["loss_history"]
    assert torch.allclose(losses, torch.tensor(REFERENCE_LOSSES[script]), rtol=1e-4), losses.tolist()


def test_ddpm_checkpoint_loads(trained_run):
    script, out, _ = trained_run
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert ckpt["script"] == script[:-3] and ckpt["epoch"] == 2
    assert ckpt["config"]["T"] == 20 and len(ckpt["loss_history"]) == 2 * 4  # 512 digits / 128 = 4 steps
    assert set(ckpt["model"]) == set(ckpt["ema"])
    assert not any(torch.equal(ckpt["model"][k], ckpt["ema"][k]) for k in ckpt["model"] if "weight" in k), \
        "EMA weights should lag the trained weights"
    assert not os.path.exists(os.path.join(out, "ckpt.pt.tmp"))


def test_ddpm_samples_in_range(trained_run):
    script, out, _ = trained_run
    s = torch.load(os.path.join(out, "samples.pt"), weights_only=True)
    assert s["x"].shape == (12, 1, 28, 28) and s["x"].dtype == torch.float32
    assert s["x"].min() >= 0 and s["x"].max() <= 1
    assert s["x"].std() > 0.05, "samples are constant"
    if script == "ddpm_class.py":
        assert s["y"].tolist() == [3, 7] * 6
    else:
        assert s["y"] is None


def test_ddpm_trajectory_and_snapshots(trained_run):
    script, out, _ = trained_run
    tr = torch.load(os.path.join(out, "trajectory.pt"), weights_only=True)
    n = 64  # an 8x8 grid: for ddpm_class --digits 3 7, four rows of each
    if script == "ddpm_class.py":
        assert tr["y"].tolist() == [3] * 32 + [7] * 32
    ts = list(range(20, -1, -1)) if script == "ddpm_time.py" else list(range(20, -1, -2))  # DDPM all T; DDIM 10
    assert tr["frames"].shape == (len(ts), n, 1, 28, 28) and tr["frames"].dtype == torch.uint8
    assert tr["t"].tolist() == ts  # t = T .. 0, one frame per step
    final = torch.load(os.path.join(out, "samples.pt"), weights_only=True)
    assert tr["frames"][0].float().std() > 20, "the first frame should be noise"
    snaps = torch.load(os.path.join(out, "snapshots.pt"), weights_only=True)
    assert list(snaps["grids"]) == [1, 2] and snaps["grids"][2].shape == (n, 1, 28, 28)
    assert final["x"].shape[0] == 12


def test_sample_only_after_training(trained_run, tmp_path):
    script, out, _ = trained_run
    run_dir = shutil.copytree(out, tmp_path / "run")
    r = run_script(script, "--out-dir", run_dir, "--sample-only", "--sampler", "ddim", "--steps", "5",
                   "--n-samples", "7", *TINY, *(["--digits", "9"] if script == "ddpm_class.py" else []))
    s = torch.load(os.path.join(run_dir, "samples.pt"), weights_only=True)
    assert s["x"].shape == (7, 1, 28, 28) and "DDIM 5 steps" in r.stdout
    if script == "ddpm_class.py":
        assert s["y"].tolist() == [9] * 7


@pytest.mark.parametrize("layout", ["archive", "nested"])
def test_kaggle_layout_loads(layout, tmp_path):
    """The Kaggle download: dotted names inside archive/, or each file inside a folder of its own
    name, are found and read (the device and MNIST block is shared, so one script's copy stands for all)."""
    import ddpm_time
    if layout == "archive":
        make_mnist_dir(str(tmp_path / "archive"), n_train=256, dotted=True)
    else:
        make_mnist_dir(str(tmp_path / "flat"), n_train=256, dotted=True)
        for name in os.listdir(tmp_path / "flat"):
            os.makedirs(tmp_path / name)
            shutil.move(str(tmp_path / "flat" / name), str(tmp_path / name / name))
    images, labels = ddpm_time.load_mnist(str(tmp_path), train=True)
    assert images.shape == (256, 1, 28, 28) and labels.shape == (256,)
    assert ddpm_time.load_mnist(str(tmp_path), train=False)[0].shape == (256, 1, 28, 28)


def test_our_idx_reader_and_grid_match_torchvision(tmp_path):
    """The scripts read MNIST and tile digits without importing torchvision (3 s at every start): read_idx must
    give what torchvision's IDX readers give, and image_grid what make_grid gives (from 2 digits on; make_grid
    returns a single digit unpadded)."""
    import torchvision
    from torchvision.datasets.mnist import read_image_file, read_label_file
    import ddpm_time
    images, labels = ddpm_time.find_idx_files(make_mnist_dir(str(tmp_path / "m"), n_train=300), train=True)
    assert torch.equal(ddpm_time.read_idx(images, 3), read_image_file(images))
    assert torch.equal(ddpm_time.read_idx(labels, 1).long(), read_label_file(labels))
    for n, nrow in [(80, 8), (5, 8), (13, 4), (2, 1)]:
        x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(n))
        assert torch.equal(ddpm_time.image_grid(x, nrow), torchvision.utils.make_grid(x, nrow, 2, pad_value=1.0)[0])


@pytest.mark.parametrize("cut", ["header", "values"])
def test_a_broken_idx_file_is_one_line(cut, tmp_path):
    """A truncated or foreign file where MNIST should be: one line naming it, exit code 2."""
    folder = make_mnist_dir(str(tmp_path / "m"), n_train=64)
    path = os.path.join(folder, "train-images-idx3-ubyte")
    with open(path, "r+b") as f:
        f.truncate(3 if cut == "header" else os.path.getsize(path) - 5)
    r = run_script("ddpm_time.py", "--data-dir", folder, "--out-dir", tmp_path / "out", *TINY, check=False)
    assert "cannot read MNIST IDX files" in one_line_error(r) and "train-images-idx3-ubyte" in r.stderr
    assert not os.path.exists(tmp_path / "out" / "ckpt.pt")


@pytest.mark.parametrize("script", DDPM_SCRIPTS)
def test_no_data_offline_is_a_clear_error(script, tmp_path):
    r = run_script(script, "--data-dir", tmp_path / "empty", "--out-dir", tmp_path / "out", *TINY, check=False)
    assert "four idx files" in one_line_error(r).lower()


def test_bad_checkpoints_are_clear_errors(trained_run, tmp_path):
    script, out, _ = trained_run
    other = "ddpm_class.py" if script == "ddpm_time.py" else "ddpm_time.py"
    run_dir = shutil.copytree(out, tmp_path / "run")
    # a finished run is not overwritten by accident
    assert "--resume" in one_line_error(run_script(script, "--out-dir", run_dir, *TINY, check=False))
    # a checkpoint of another script, or of another config
    assert script[:-3] in one_line_error(run_script(other, "--out-dir", run_dir, "--resume", *TINY, check=False))
    msg = one_line_error(run_script(script, "--out-dir", run_dir, "--resume", *TINY[:-2], "--T", "30", check=False))
    assert "--T 20" in msg
    # a corrupt one (a truncated file)
    path = os.path.join(run_dir, "ckpt.pt")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    r = run_script(script, "--out-dir", run_dir, "--resume", *TINY, check=False)
    assert "not a readable checkpoint" in one_line_error(r)


@pytest.mark.parametrize("args", [["--epochs", "-1"], ["--channels", "12", "8", "8"], ["--T", "1"], ["--schedule", "x"]])
def test_bad_flags_are_clear_errors(args, tmp_path):
    r = run_script("ddpm_time.py", "--out-dir", tmp_path, *args, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "error:" in r.stderr


def test_make_gif_reads_ddpm_outputs(trained_run, tmp_path):
    """make_gif.py turns what each DDPM script wrote into animated GIFs."""
    _, out, _ = trained_run
    run_script("make_gif.py", out, "--out", tmp_path / "reverse.gif")
    run_script("make_gif.py", out, "--progress", "--out", tmp_path / "progress.gif")
    with Image.open(tmp_path / "reverse.gif") as im:
        assert im.is_animated and im.n_frames > 5
    assert os.path.getsize(tmp_path / "progress.gif") > 1000


def test_evaluate_scores_ddpm_samples(trained_run, tiny_mnist, tmp_path):
    """evaluate.py reads the samples.pt each DDPM script wrote (labels or not) and scores it."""
    import json
    script, out, _ = trained_run
    r = run_script("evaluate.py", os.path.join(out, "samples.pt"), "--data-dir", tiny_mnist, "--json",
                   "--classifier", tmp_path / "clf.pt", "--clf-epochs", "1", "--device", "cpu")
    row = next(v for k, v in json.loads(r.stdout)["files"].items() if k.endswith("samples.pt"))
    assert row["n"] == 12 and row["fid"] >= 0
    assert (row["acc"] is not None) == (script == "ddpm_class.py")


@pytest.mark.parametrize("script", ["ddpm_time.py", "ddpm_class.py", "flow_time.py", "flow_class.py"])
def test_the_courses_lr_schedule(script, tiny_mnist, tmp_path, monkeypatch):
    """--lr 1e-2 --lr-decay 0.1 --weight-decay 0 is the course's optimizer: Adam (AdamW without weight decay is
    Adam, to the bit), at the lr that torch's ExponentialLR(gamma = 0.1^(1 / epochs)) gives each epoch."""
    module, seen = __import__(script[:-3]), []

    class Recorder(torch.optim.AdamW):
        def step(self, *a, **k):
            seen.append((self.param_groups[0]["lr"], self.param_groups[0]["weight_decay"]))
            return super().step(*a, **k)
    monkeypatch.setattr(module.torch.optim, "AdamW", Recorder)
    tiny = ["--channels", "8", "8", "8", "--device", "cpu", "--limit", "64", "--batch-size", "32"]
    sampling = ["--steps", "1"] + (["--sampler", "ddim", "--T", "20"] if script.startswith("ddpm") else [])
    run_script(script, "--data-dir", tiny_mnist, "--out-dir", tmp_path, "--epochs", "3", "--lr", "1e-2",
               "--lr-decay", "0.1", "--weight-decay", "0", *tiny, *sampling)
    adam = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-2)
    course = torch.optim.lr_scheduler.ExponentialLR(adam, gamma=0.1 ** (1 / 3))
    expected = []
    for _ in range(3):                      # 2 steps per epoch (64 digits, batches of 32), then the scheduler's step
        expected += [adam.param_groups[0]["lr"]] * 2
        adam.step()
        course.step()
    assert [wd for _, wd in seen] == [0.0] * 6
    assert [lr for lr, _ in seen] == pytest.approx(expected, rel=1e-12) and seen[0][0] == 1e-2
    # the decay is spread over --epochs: continuing with more epochs would bend it, so it is refused
    r = run_script(script, "--data-dir", tiny_mnist, "--out-dir", tmp_path, "--resume", "--epochs", "4", check=False)
    assert "decays its lr over --epochs 3" in one_line_error(r)


# --- the header's "What you can delete for an assignment", done and run -------------------------------------
DELETE = ("open_run", "restore_run", "rng_state", "set_rng_state")  # the functions the recipe deletes
RECIPE = [  # (what the code says, what it says after the deletion)
    (r'    g\.add_argument\("--(resume|sample-only|ckpt)".*\n', ""),
    (r"ckpt_path, ckpt = open_run\(args, given, SCRIPT, TRAIN_KEYS\)", "ckpt_path = prepare_out_dir(args.out_dir, False)"),
    (r"run = restore_run\(.*\)", 'run = {"epoch": 0, "loss_history": torch.zeros(0), "snapshots": {}}'),
    (r"not args\.sample_only and ", ""),
    (r', "rng": rng_state\(device\)\}', "}"),
    (r'\("", "MNIST/raw", "raw", "archive"\)', '("", "MNIST/raw")'),
]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["ddpm_time.py", "ddpm_class.py", "flow_time.py", "flow_class.py"])
def test_what_the_header_says_to_delete_can_be_deleted(script, tiny_mnist, tmp_path, one_thread):
    """The header's recipe (without --resume, --sample-only and --ckpt: open_run, restore_run and the RNG state;
    find_idx_files' Kaggle dirs), applied to a copy: it trains as before, to the same numbers, and --resume is
    gone. A change that breaks the recipe fails here, so the header stays true."""
    src = open(os.path.join(os.path.dirname(__file__), script)).read()
    doc = " ".join(ast.get_docstring(ast.parse(src)).split())
    assert "without --resume, --sample-only and --ckpt" in doc and "open_run" in doc and "Kaggle" in doc
    lines = src.splitlines(keepends=True)
    for node in sorted((n for n in ast.parse(src).body if getattr(n, "name", "") in DELETE),
                       key=lambda n: -n.lineno):
        del lines[node.lineno - 1 - len(node.decorator_list):node.end_lineno]
    src = "".join(lines)
    for pattern, new in RECIPE:
        src, n = re.subn(pattern, lambda m: new, src)
        assert n >= 1, f"{script}: the recipe step {pattern!r} found nothing: update the header and RECIPE"
    assert not {n.id for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Name)} & set(DELETE)
    (tmp_path / script).write_text(src)
    if script.startswith("ddpm"):  # trained_run's flags: its reference losses must come out
        extra = ["--epochs", 2, *TINY] + (["--digits", 3, 7, "--steps", 10] if "class" in script else [])
    else:
        extra = ["--epochs", 1, "--steps", 2, *TINY[2:]]
    run = ["--data-dir", tiny_mnist, "--out-dir", tmp_path / "out", "--n-samples", 12, *extra]
    spec = importlib.util.spec_from_file_location(f"recipe_{script[:-3]}", tmp_path / script)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)  # the edited file, run in this process (as run_script runs ours)

    def run_copy(*flags):
        err, code = io.StringIO(), 0
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                copy.main([str(f) for f in flags])
        except SystemExit as e:
            code = e.code
        return subprocess.CompletedProcess(flags, code, "", err.getvalue())
    r = run_copy(*run)
    assert r.returncode == 0 and (tmp_path / "out" / "samples.pt").exists(), r.stderr[-2000:]
    if script in REFERENCE_LOSSES:  # the same run as trained_run's, to the bit
        losses = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)["loss_history"]
        assert torch.allclose(losses, torch.tensor(REFERENCE_LOSSES[script]), rtol=1e-4), losses.tolist()
    r = run_copy(*run, "--resume")
    assert r.returncode == 2 and "unrecognized arguments: --resume" in r.stderr
