"""Run a training script with speed levers switched on, to measure each one (speed, and quality after) against
the script as it is. The script's own flags pass through unchanged; batch size and learning rate are flags already.

    python tools/with_levers.py bf16,compile ddpm_class.py --epochs 2 --device cuda --n-samples 1000 --out-dir runs/x
    python tools/with_levers.py none ddpm_class.py ...     # no lever: the script as it is (bit-identical outputs)

Levers (comma-separated; each changes one thing in training; sampling runs the script's own code, in NCHW with nchw):
  nchw         the model (and so its EMA) in NCHW (contiguous) memory instead of the scripts' channels_last
  bf16         the training forward pass under torch.autocast(bfloat16); the loss in float32
  compile      the training forward pass through torch.compile (default mode, dynamic=False: the last, smaller
               batch of an epoch gets a graph of its own, so the full batches keep theirs)
  compile-ro   the same, mode="reduce-overhead" (CUDA graphs on a GPU)
  foreach-ema  the EMA update as one torch._foreach_lerp_ over all parameters, not a loop of lerp_
  fused-adamw  torch.optim.AdamW(fused=True)
It also prints every epoch's seconds and img/s ("epoch E: S s, R img/s"): the first epoch holds the compile and
cuDNN warm-up, later ones the steady rate. Used by tools/gpu_check.sh --levers.
"""
import importlib
import os
import sys
import time

import torch

LEVERS = ("nchw", "bf16", "compile", "compile-ro", "foreach-ema", "fused-adamw")


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def parse(text):
    levers = [] if text == "none" else text.split(",")
    unknown = [name for name in levers if name not in LEVERS]
    if unknown or not levers and text != "none":
        die(f"unknown lever {unknown[0] if unknown else text!r}: choose from none, {', '.join(LEVERS)}")
    if "compile" in levers and "compile-ro" in levers:
        die("compile and compile-ro are two modes of one lever: take one")
    return set(levers)


def foreach_ema_update(ema, model, decay, step):
    """The scripts' ema_update, the same arithmetic, as one foreach call over all parameters."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - d)


def lever_model(base, levers):
    """A subclass of the script's UNet whose training forward (grad enabled) goes through the levers; sampling
    (under no_grad) and the weights (state_dict) are the base class's."""
    mode = "reduce-overhead" if "compile-ro" in levers else "default" if "compile" in levers else None
    compiled = {}  # id(model) -> its compiled forward, made on the first training step

    class LeverModel(base):
        def to(self, *args, **kwargs):
            if "nchw" in levers:
                kwargs.pop("memory_format", None)
            return super().to(*args, **kwargs)

        def train_forward(self, x, *args, **kwargs):
            if "bf16" in levers:
                with torch.autocast(x.device.type, dtype=torch.bfloat16):
                    return base.forward(self, x, *args, **kwargs).float()
            return base.forward(self, x, *args, **kwargs)

        def forward(self, *args, **kwargs):
            if not torch.is_grad_enabled():
                return base.forward(self, *args, **kwargs)
            if mode is None:
                return self.train_forward(*args, **kwargs)
            if id(self) not in compiled:
                compiled[id(self)] = torch.compile(self.train_forward, mode=mode, dynamic=False)
            return compiled[id(self)](*args, **kwargs)

    LeverModel.__name__ = LeverModel.__qualname__ = base.__name__
    return LeverModel


def patch(module, levers):
    """Switch the levers on in an imported training script (checked first: an error leaves it as it was)."""
    if "foreach-ema" in levers and not hasattr(module, "ema_update"):
        die(f"{module.__name__}.py keeps no EMA: foreach-ema does not apply")
    if "fused-adamw" in levers and "torch.optim.AdamW(" not in open(module.__file__).read():
        die(f"{module.__name__}.py has no AdamW: fused-adamw does not apply")
    for name in ("UNet", "UnconditionalUNet"):
        if levers - {"foreach-ema", "fused-adamw"} and hasattr(module, name):
            setattr(module, name, lever_model(getattr(module, name), levers))
    if "foreach-ema" in levers:
        module.ema_update = foreach_ema_update
    if "fused-adamw" in levers:
        adamw = torch.optim.AdamW

        class FusedAdamW(adamw):
            def __init__(self, params, **kwargs):
                super().__init__(params, fused=True, **kwargs)
        torch.optim.AdamW = FusedAdamW
    enter, exit_ = module.EpochLog.__init__, module.EpochLog.__exit__

    def init(self, epoch, epochs, n_images, losses, last):
        enter(self, epoch, epochs, n_images, losses, last)
        self.n_images = n_images

    def exit_and_print(self, error, *rest):
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the epoch's kernels finished, so its seconds are the GPU's too
        exit_(self, error, *rest)
        if error is None:
            print(f"epoch {self.epoch}: {self.seconds:.2f} s, {self.n_images / self.seconds:.0f} img/s", flush=True)
    module.EpochLog.__init__, module.EpochLog.__exit__ = init, exit_and_print


def main():
    if len(sys.argv) < 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2)
    levers, script = parse(sys.argv[1]), sys.argv[2]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not script.endswith(".py") or not os.path.isfile(os.path.join(root, os.path.basename(script))):
        die(f"{script} is not one of the training scripts beside tools/")
    sys.path.insert(0, root)
    module = importlib.import_module(os.path.basename(script)[:-3])
    if not hasattr(module, "EpochLog"):
        die(f"{script} trains nothing: give a training script (ddpm_class.py, flow_class.py, ...)")
    patch(module, levers)
    print(f"levers: {', '.join(sorted(levers)) or 'none'}", flush=True)
    sys.argv = [script] + sys.argv[3:]
    t0 = time.time()
    module.main()
    print(f"whole command: {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
