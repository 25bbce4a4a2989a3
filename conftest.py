"""Fixtures shared by the tests: tiny MNIST-format IDX files written to a temp folder, so every
test runs offline through the scripts' real loading code (read_idx)."""
import contextlib
import importlib
import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
# every test on one thread, here and in every process a test starts: the tests' tiny models run faster so, two
# threads per process collapse when two workers share 2 cores, and the same thread count gives the same floats
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"
# the real MNIST copy, if present: $MNIST_DIR (tools/gpu_check.sh sets it), else the CI machine's copy
REAL_MNIST = os.environ.get("MNIST_DIR") or os.path.join(HERE, "..", "shared", "mnist")


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


@pytest.fixture(scope="session")
def real_classifier():
    """Path of evaluate.py's shipped classifier, pretrained/mnist_classifier.pt: the one RESULTS.md scored with.
    The tests that use it read real digits (its accuracy is measured again on every evaluate.py run)."""
    if not os.path.isdir(REAL_MNIST):
        pytest.skip("no real MNIST copy (conftest.REAL_MNIST)")
    return os.path.join(HERE, "pretrained", "mnist_classifier.pt")


@pytest.fixture
def one_thread():
    """In-process runs on one thread, as run_script's processes: the same thread count gives the same
    floats, so a run continued in this process can match one made by a script bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_script(script, *args, cwd=None, check=True, timeout=600, threads=1, process=False, alone=None, env=None):
    """Run one of our scripts with these command-line arguments, on the CPU, and return the result (returncode,
    stdout, stderr). By default in this process: the script's main(argv), its output captured, its exit code
    taken from SystemExit, seconds faster than a new interpreter (torch's import alone takes seconds). A test of
    the command line itself (a real process, a folder to run in) passes process=True or cwd; alone=FOLDER
    copies the script alone into that empty folder and runs it there (nothing else of ours beside it). One thread either
    way (see the top of this file), or `threads`; env: a real process's environment."""
    if alone is not None:
        shutil.copy(os.path.join(HERE, script), alone)
        cwd, process = alone, True
    if process or cwd is not None:
        cmd = [sys.executable, script if alone else os.path.join(HERE, script), *map(str, args)]
        env = {**(env or os.environ), "OMP_NUM_THREADS": str(threads)}
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    else:
        module, out, err = importlib.import_module(script[:-3]), io.StringIO(), io.StringIO()
        threads_before, code = torch.get_num_threads(), 0
        torch.set_num_threads(threads)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                module.main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        finally:
            torch.set_num_threads(threads_before)
        r = subprocess.CompletedProcess([script, *map(str, args)], code, out.getvalue(), err.getvalue())
    if check and r.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                             f"{r.stderr[-3000:]}")
    return r


def kill_when_written(script, args, path, timeout=120):
    """Start a script, SIGKILL it as soon as `path` (its first checkpoint) exists, and return.
    Fails if the run ends on its own before it can be killed."""
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, script), *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + timeout
    while not os.path.exists(path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def assert_png(path):
    """A real, complete PNG of a sensible size."""
    assert os.path.isfile(path), f"missing {path}"
    with Image.open(path) as im:
        im.verify()  # raises on a truncated or non-PNG file
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) > 50


def one_line_error(r):
    """A user error: exit code 2, no traceback; returns the last stderr line."""
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    return r.stderr.strip().splitlines()[-1]
