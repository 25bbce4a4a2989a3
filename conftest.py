"""Fixtures shared by the tests: tiny MNIST-format IDX files written to a temp folder, so every
test runs offline through the scripts' real loading code (torchvision's IDX readers)."""
import os
import struct
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REAL_MNIST = os.path.join(HERE, "..", "shared", "mnist")  # the CI machine's real copy, if present


def write_idx(path, tensor):
    """Write a uint8 tensor in the IDX format (magic 0x08 = uint8, then ndim, big-endian sizes)."""
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, tensor.dim()))
        f.write(struct.pack(f">{tensor.dim()}I", *tensor.shape))
        f.write(tensor.to(torch.uint8).contiguous().numpy().tobytes())


def fake_digits(n, seed):
    """n 28x28 uint8 images whose class (0..9) is visible: class k lights a bar at row 4 + 2k,
    plus a blob and a little noise. Learnable in seconds, which real-looking noise is not."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.rand(n, 28, 28, generator=g) * 40
    for i, k in enumerate(labels.tolist()):
        images[i, 4 + 2 * k: 6 + 2 * k, 4:24] = 255
        images[i, 10:18, 10:18] += 120
    return images.clamp(0, 255).to(torch.uint8), labels


def make_mnist_dir(folder, n_train=512, n_test=256, dotted=False):
    """The four IDX files in `folder`, with torchvision's names or the Kaggle dotted ones."""
    os.makedirs(folder, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = fake_digits(n, seed)
        sep = "." if dotted else "-"
        write_idx(os.path.join(folder, f"{split}-images{sep}idx3-ubyte"), images)
        write_idx(os.path.join(folder, f"{split}-labels{sep}idx1-ubyte"), labels)
    return folder


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory):
    """A folder holding tiny train (512) and test (256) IDX files, torchvision names."""
    return make_mnist_dir(str(tmp_path_factory.mktemp("tiny_mnist")))


def run_script(script, *args, cwd=None, check=True, timeout=600):
    """Run one of our scripts as a user would (a fresh process on the CPU); return the result."""
    cmd = [sys.executable, os.path.join(HERE, script), *map(str, args)]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r
