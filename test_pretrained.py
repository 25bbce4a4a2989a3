"""The shipped weights in pretrained/: each file loads with its script's --ckpt and draws digits (the class
scripts' guidance figure included), is small, and says how it was made; the shipped ddpm_class.pt draws the digit asked for (real MNIST classifier);
evaluate.py's shipped classifier loads and says how it was made.

    pytest -q test_pretrained.py                   # quick: every shipped file, a few digits each
    pytest -q test_pretrained.py -m realdata       # + 100 guided digits read by evaluate.py's classifier
"""
import glob
import importlib
import json
import os
import re

import pytest
import torch

from conftest import HERE, REAL_MNIST, assert_png, run_script

CLASSIFIER = "mnist_classifier.pt"  # evaluate.py's; every other file is a generating script's weights
SHIPPED = sorted(p for p in glob.glob(os.path.join(HERE, "pretrained", "*.pt")) if not p.endswith(CLASSIFIER))
FILE_OF = {"reflow": "reflow_class.pt"}  # reflow.py's student of flow_class.pt; every other: SCRIPT.pt
NAMES = [os.path.basename(p) for p in SHIPPED]
MAX_MB = 5                    # "a few MB": a clone stays small
FEW_STEPS = 4                 # sampler steps in the quick test: enough to run every code path
# per script: the flags of a quick --ckpt run, and the module constants that set the figures' steps
QUICK = {
    "ddpm_time": (["--sampler", "ddim", "--steps", FEW_STEPS], {"DDIM_STEPS": FEW_STEPS}),
    "ddpm_class": (["--sampler", "ddim", "--steps", FEW_STEPS, "--digits", 3],
                   {"DDIM_STEPS": FEW_STEPS, "GUIDANCE_SWEEP": (0, 5)}),
    "flow_time": (["--steps", FEW_STEPS], {}),  # every figure takes --steps
    "flow_class": (["--steps", FEW_STEPS, "--digits", 3], {"GUIDANCE_SWEEP": (0, 5)}),
    "reflow": (["--steps", 1], {"PATH_STEPS": FEW_STEPS}),  # one step, the student's point
}


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_the_readme_weights_are_shipped():
    """README's quick start samples from pretrained/ddpm_class.pt; every shipped file is a script's."""
    assert "ddpm_class.pt" in NAMES
    scripts = {FILE_OF.get(s, s + ".pt"): s for s in (f[:-3] for f in os.listdir(HERE) if f.endswith(".py"))}
    for name in NAMES:
        assert name in scripts, f"{name}: no script of that name"


def test_every_shipped_file_a_user_is_told_about_exists():
    """README, RESULTS and the script headers name pretrained/X.pt only where X.pt is shipped."""
    texts = [f for f in os.listdir(HERE) if f.endswith((".py", ".md")) and not f.startswith(("test_", "conftest"))]
    for f in texts:
        for name in re.findall(r"pretrained/(\w+\.pt)", open(os.path.join(HERE, f)).read()):
            assert name in NAMES + [CLASSIFIER], f"{f} names pretrained/{name}, which is not shipped"


@pytest.mark.parametrize("path", SHIPPED, ids=NAMES)
def test_shipped_file_is_small_and_says_how_it_was_made(path):
    d = load(path)
    script = importlib.import_module(d["script"])
    assert os.path.getsize(path) < MAX_MB * 1e6
    assert FILE_OF.get(d["script"], d["script"] + ".pt") == os.path.basename(path)
    assert set(d["config"]) == {*script.TRAIN_KEYS, "epochs"} and d["epoch"] == d["config"]["epochs"]
    assert "opt" not in d and "rng" not in d                  # sampling weights only
    assert {"made by", "scores", "machine", "exported at commit"} <= set(d["about"])
    record = json.dumps({k: str(v) for k, v in {**d["about"], **d["config"]}.items()})
    for private in ("../shared", "/root", "/work", "/tmp"):   # nothing that names the maker's folders
        assert private not in record, f"{path} names {private}"


def test_shipped_classifier_is_small_loads_and_says_how_it_was_made():
    """evaluate.py's default classifier: its arch tag matches the code, and its record names no private folder."""
    import evaluate
    path = os.path.join(HERE, "pretrained", CLASSIFIER)
    assert path == evaluate.SHIPPED_CLASSIFIER and os.path.getsize(path) < MAX_MB * 1e6
    d = load(path)
    assert d["arch"] == evaluate.ARCH and d["test_acc"] >= 0.99 and {"made by", "scores", "machine"} <= set(d["about"])
    assert isinstance(evaluate.load_classifier(path), evaluate.Classifier)
    record = json.dumps(d["about"])
    for private in ("../shared", "/root", "/work", "/tmp"):
        assert private not in record, f"{path} names {private}"


@pytest.mark.parametrize("path", SHIPPED, ids=NAMES)
def test_shipped_weights_load_and_draw_digits(path, tmp_path, tiny_mnist, monkeypatch, one_thread):
    """The script's own --ckpt path, in-process, with FEW_STEPS sampler steps everywhere."""
    name = load(path)["script"]
    script = importlib.import_module(name)
    out = tmp_path / "out"
    if name == "denoise_single_step":  # figures and PSNR on (tiny) test digits
        script.main(list(map(str, ["--ckpt", path, "--out-dir", out, "--data-dir", tiny_mnist, "--n-test", 50,
                                   "--device", "cpu"])))
        rows = json.loads((out / "psnr.json").read_text())["rows"]
        assert all(torch.isfinite(torch.tensor(r["psnr_denoised"])) for r in rows)
        assert_png(out / "ood.png")
        return
    flags, constants = QUICK[name]
    for k, v in constants.items():
        monkeypatch.setattr(script, k, v)
    which = "--student" if name == "reflow" else "--ckpt"  # reflow.py's --ckpt is its teacher
    script.main(list(map(str, [which, path, "--out-dir", out, "--n-samples", 20, "--device", "cpu", *flags])))
    assert_png(out / "samples.png")
    s = torch.load(out / "samples.pt", weights_only=True)
    assert s["x"].shape == (20, 1, 28, 28) and 0 <= s["x"].min() and s["x"].max() <= 1
    assert 0.02 < s["x"].mean() < 0.4, "blank or saturated digits"  # real digits: 0.13 of the pixels lit
    if "class" in name:
        assert (s["y"] == 3).all()
    assert not (out / "ckpt.pt").exists(), "sampling must not write a checkpoint"


@pytest.mark.parametrize("name", ["ddpm_class", "flow_class"])
def test_guidance_figure_a_row_per_w_on_the_grids_noise(name, tmp_path, monkeypatch, one_thread):
    """guidance.png: a row per w, every 4th digit of the samples.png grid as columns, labelled with its digit; at the
    run's own w a row redraws those grid digits (the same noise and sampler)."""
    path = os.path.join(HERE, "pretrained", f"{name}.pt")
    if not os.path.exists(path):
        pytest.skip(f"pretrained/{name}.pt not shipped")
    script = importlib.import_module(name)
    flags, constants = QUICK[name]
    for k, v in constants.items():
        monkeypatch.setattr(script, k, v)
    drawn, real_save_grid = {}, script.save_grid

    def spy(x, path, *args):  # what each PNG shows
        drawn[os.path.basename(path)] = (x, *args)
        return real_save_grid(x, path, *args)
    monkeypatch.setattr(script, "save_grid", spy)
    script.main(list(map(str, ["--ckpt", path, "--out-dir", tmp_path, "--device", "cpu", *flags[:-1], 3, 7])))
    x, nrow, _, row_labels, col_labels = drawn["guidance.png"]
    assert nrow == 16 and row_labels == ["w=0", "w=5"] and col_labels == ["3"] * 8 + ["7"] * 8  # 4 grid rows each
    assert x.shape == (2 * 16, 1, 28, 28) and not torch.allclose(x[:16], x[16:], atol=0.1)
    grid = drawn["samples.png"][0]                                 # 64 digits, w = 5 (the default)
    assert torch.allclose(x[16:], grid[::4], atol=1e-3)


# --- real MNIST ------------------------------------------------------------------------------------
@pytest.mark.realdata
@pytest.mark.skipif(not os.path.isdir(REAL_MNIST), reason="no real MNIST copy (conftest.REAL_MNIST)")
@pytest.mark.skipif("ddpm_class.pt" not in NAMES, reason="pretrained/ddpm_class.pt not shipped")
def test_shipped_ddpm_class_draws_the_digit_asked_for(tmp_path, real_classifier, one_thread):
    """100 guided digits (ten of each, w = 5, DDIM 20: 100.00 % of 1,000 in RESULTS.md) from the shipped weights:
    at least 95 % are read as the digit asked for by evaluate.py's classifier."""
    ddpm_class = importlib.import_module("ddpm_class")
    d = load(os.path.join(HERE, "pretrained", "ddpm_class.pt"))
    model = ddpm_class.UNet(d["config"]["channels"], n_classes=11)
    model.load_state_dict(d["ema"])
    model.eval()
    sched = ddpm_class.make_schedule(d["config"]["T"], d["config"]["schedule"], torch.device("cpu"))
    y = torch.arange(10).repeat(10)
    x_T = torch.randn(100, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x0 = ddpm_class.sample(ddpm_class.guided_eps_fn(model, y, 5.0, sched), x_T, sched, "ddim", 20, None)
    torch.save({"x": x0.clamp(0, 1), "y": y}, tmp_path / "samples.pt")
    r = run_script("evaluate.py", tmp_path / "samples.pt", "--data-dir", REAL_MNIST, "--classifier", real_classifier,
                   "--json")
    acc = json.loads(r.stdout)["files"][str(tmp_path / "samples.pt")]["acc"]
    assert acc >= 0.95, f"only {acc:.0%} of 100 guided digits read as the digit asked for"
