"""tools/with_levers.py, which `tools/gpu_check.sh --levers` runs to time each speed lever: with no lever it is the
script itself, bit for bit; the foreach EMA is the scripts' EMA, bit for bit; the model's levers (bf16, NCHW, compile)
change only the training forward pass (sampling runs the script's own code); bad input is a one-line error."""
import copy
import re
import sys

import pytest
import torch

import ddpm_class
import denoise_single_step
from conftest import run_script
from tools import with_levers
from tools.with_levers import foreach_ema_update, lever_model

UNPATCHED = (ddpm_class.UNet, ddpm_class.ema_update, torch.optim.AdamW)
UNPATCHED_DENOISER = denoise_single_step.UnconditionalUNet
TINY = ["--T", "20", "--steps", "4", "--channels", "8", "8", "8", "--digits", "3", "7", "--n-samples", "12",
        "--device", "cpu"]


def run_tensors(folder):
    """What a run made, with no paths in it: the weights, EMA, optimizer state and losses, and the samples."""
    ckpt = torch.load(folder / "ckpt.pt", weights_only=True)
    samples = torch.load(folder / "samples.pt", weights_only=True)
    flat = {f"model.{k}": v for k, v in ckpt["model"].items()} | {f"ema.{k}": v for k, v in ckpt["ema"].items()}
    flat |= {f"opt.{i}.{k}": v for i, s in ckpt["opt"]["state"].items() for k, v in s.items()}
    return flat | {"loss_history": ckpt["loss_history"], "x": samples["x"], "y": samples["y"]}


@pytest.mark.slow
def test_no_lever_and_the_foreach_ema_train_and_sample_as_the_script_does(tiny_mnist, tmp_path):
    args = ["--data-dir", tiny_mnist, "--epochs", "2", *TINY]
    run_script("ddpm_class.py", *args, "--out-dir", tmp_path / "plain")
    plain = run_tensors(tmp_path / "plain")
    for levers in ("none", "foreach-ema"):
        r = run_script("tools/with_levers.py", levers, "ddpm_class.py", *args, "--out-dir", tmp_path / levers,
                       process=True)
        assert re.search(r"^epoch 2: [0-9.]+ s, [0-9]+ img/s$", r.stdout, re.M), r.stdout[-2000:]
        got = run_tensors(tmp_path / levers)
        assert got.keys() == plain.keys()
        assert [k for k in plain if not torch.equal(plain[k], got[k])] == [], levers


def test_foreach_ema_is_the_scripts_ema_step_by_step():
    torch.manual_seed(0)
    model = ddpm_class.UNet((8, 8, 8), n_classes=11)
    ema_a, ema_b = copy.deepcopy(model), copy.deepcopy(model)
    for step in range(30):  # through the warm-up and past it, the weights moving each step
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=0.1)
        ddpm_class.ema_update(ema_a, model, 0.9, step)
        foreach_ema_update(ema_b, model, 0.9, step)
        assert all(torch.equal(a, b) for a, b in zip(ema_a.parameters(), ema_b.parameters())), step
    assert not torch.equal(next(ema_a.parameters()), next(model.parameters()))  # an average, not a copy


def test_a_lever_changes_only_the_training_forward():
    torch.manual_seed(0)
    base = ddpm_class.UNet((8, 8, 8), n_classes=11)
    bf16 = lever_model(ddpm_class.UNet, {"bf16", "nchw"})((8, 8, 8), n_classes=11)
    bf16.load_state_dict(base.state_dict())
    assert bf16.state_dict().keys() == base.state_dict().keys()
    bf16 = bf16.to("cpu", memory_format=torch.channels_last)  # nchw: the scripts' channels_last is dropped
    assert all(p.is_contiguous() for p in bf16.parameters())
    x, t, y = torch.randn(4, 1, 28, 28), torch.tensor([1, 5, 10, 20]), torch.tensor([0, 3, 7, 10])
    with torch.no_grad():  # sampling: the script's own forward, float32
        assert torch.equal(bf16(x, t, y), base(x, t, y))
    out = bf16(x, t, y)  # training: under bf16 autocast, returned as float32
    assert out.dtype == torch.float32 and out.requires_grad
    assert 0 < (out - base(x, t, y)).abs().max() < 0.1


@pytest.mark.parametrize("argv, message", [
    (["fast", "ddpm_class.py"], "unknown lever 'fast'"),
    (["compile,compile-ro", "ddpm_class.py"], "two modes of one lever"),
    (["none", "nothing.py"], "not one of the training scripts"),
    (["none", "evaluate.py"], "trains nothing"),
    (["foreach-ema", "denoise_single_step.py"], "keeps no EMA"),
    (["nchw,fused-adamw", "denoise_single_step.py"], "has no AdamW"),  # checked before nchw patches the model
])
def test_bad_input_is_one_line_and_changes_nothing(argv, message, monkeypatch, capsys):
    """Each is caught before the script is patched or run (so it can run in this process)."""
    monkeypatch.setattr(sys, "argv", ["with_levers.py", *argv])
    with pytest.raises(SystemExit) as e:
        with_levers.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert (ddpm_class.UNet, ddpm_class.ema_update, torch.optim.AdamW) == UNPATCHED
    assert denoise_single_step.UnconditionalUNet is UNPATCHED_DENOISER
