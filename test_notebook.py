"""In a notebook, with a real Jupyter kernel (ipykernel, driven by nbclient): every script pasted whole into
a cell runs its default job as in a terminal, an error is one line, figures show below the cell, the kernel
is left as it was, the stop button is one line and --resume continues the same run; cs180.ipynb runs top to
bottom (tiny settings).

    pytest -q test_notebook.py
"""
import os
import shutil
import signal
import threading
import time

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from conftest import HERE, make_mnist_dir, run_script
from tools.sync_shared import scripts

SCRIPTS = scripts(HERE)
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}  # downloads fail at once
TINY = ["--channels", "8", "8", "8", "--device", "cpu"]


class Kernel:
    """One Jupyter kernel for the whole file: run(source) executes a cell and returns its outputs."""
    def __init__(self, cwd):
        self.nb = nbformat.v4.new_notebook()
        self.client = NotebookClient(self.nb, kernel_name="python3", timeout=600, allow_errors=True,
                                     resources={"metadata": {"path": str(cwd)}})

    def run(self, source):
        cell = nbformat.v4.new_code_cell(source)
        self.nb.cells.append(cell)
        self.client.execute_cell(cell, len(self.nb.cells) - 1)
        return cell.outputs


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernel in an empty folder, offline, on one thread (the same floats as the tests' own runs)."""
    cwd = tmp_path_factory.mktemp("notebook")
    k = Kernel(cwd)
    with k.client.setup_kernel():
        env = {**OFFLINE, "OMP_NUM_THREADS": "1"}
        out = k.run(f"import os, sys, signal, torch\nos.environ.update({env!r})\ntorch.set_num_threads(1)\n"
                    f"sys.path.insert(0, {HERE!r})\nprint(sys.argv[0])")
        assert "kernel_launcher" in text(out, "stdout"), out  # a real kernel: argv is the kernel's
        k.cwd = cwd
        yield k


def text(outputs, name):
    return "".join(o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == name)


def errors(outputs):
    return [o for o in outputs if o["output_type"] == "error"]


def images(outputs, kind="image/png"):
    return [o for o in outputs if o["output_type"] == "display_data" and kind in o["data"]]


def one_line(outputs):
    """The cell failed with exactly one line, "error: ...", and printed nothing that looks like a crash."""
    (err,) = errors(outputs)
    assert err["traceback"] == [err["evalue"]] and err["evalue"].startswith("error: "), err
    everything = text(outputs, "stdout") + text(outputs, "stderr") + str(err)
    for crash in ("Traceback", "SystemExit", "To exit", "usage:"):
        assert crash not in everything, everything[-2000:]
    return err["evalue"]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_script_pasted_whole_does_its_default_job(kernel, script, tmp_path):
    """Pasted whole into a cell (its last line runs main()), a script never reads the kernel's own argv: it
    runs its default job, as `python SCRIPT.py` does in the same empty, offline folder, and stops at the
    same first missing thing (MNIST, the shipped weights, a required argument) with the same one line."""
    out = kernel.run(open(os.path.join(HERE, script)).read())
    in_notebook = one_line(out)
    env = {**os.environ, **OFFLINE}
    terminal = run_script(script, alone=tmp_path, check=False, env=env)
    assert terminal.returncode == 2, terminal.stderr
    last = terminal.stderr.strip().splitlines()[-1].replace(str(tmp_path), ".")  # the folder, by name
    assert in_notebook[len("error: "):] == last.split("error: ", 1)[1]  # argparse's: "SCRIPT.py: error: "
    assert "unrecognized arguments" not in in_notebook and "kernel" not in in_notebook


def test_an_error_is_one_line_and_leaves_the_kernel_as_it_was(kernel):
    before = kernel.run("state = lambda: (signal.getsignal(signal.SIGINT), sys.unraisablehook)\n"
                        "import matplotlib; first = state(), matplotlib.get_backend(); print(first)")
    for call in ('main(["--epochs", "x"])', 'main(["--no-such-flag"])', f'%run {HERE}/flow_class.py --steps 0'):
        kernel.run("import flow_class; main = flow_class.main")
        msg = one_line(kernel.run(call))
        assert any(w in msg for w in ("--epochs", "--no-such-flag", "--steps")), msg
    after = kernel.run("print((state(), matplotlib.get_backend()) == first, flow_class.ctrl_c_pressed)")
    assert text(after, "stdout").split() == ["True", "False"], (before, after)


def test_a_run_shows_its_figures_and_leaves_pyplot_inline(kernel, tiny_mnist):
    out = kernel.run(f"import flow_class\nflow_class.main(['--data-dir', {tiny_mnist!r}, '--out-dir', "
                     f"'fig_run', '--epochs', '2', '--steps', '3', *{TINY!r}])")
    assert not errors(out), errors(out)
    assert len(images(out)) == 3  # samples, guidance, loss
    bar = text(out, "stderr")
    assert "Warning" not in bar and "IProgress" not in bar, bar
    epochs = [line.split("\r")[-1] for line in bar.split("\n") if line.strip()]  # as a notebook shows \r
    assert [e.split(":")[0] for e in epochs] == ["epoch 1/2", "epoch 2/2"], epochs
    assert all("100%" in e for e in epochs)
    out = kernel.run("import matplotlib.pyplot as plt\nprint(matplotlib.get_backend())\nplt.plot([0, 1])\n"
                     "plt.show()")
    assert "inline" in text(out, "stdout") and len(images(out)) == 1  # the notebook's own plot still draws


def test_a_gif_shows_inline(kernel, tiny_mnist):
    kernel.run(f"import flow_time\nflow_time.main(['--data-dir', {tiny_mnist!r}, '--out-dir', 'gif_run', "
               f"'--epochs', '1', '--steps', '3', *{TINY!r}])")
    out = kernel.run(f"%run {HERE}/make_gif.py gif_run --out gif_run/flow.gif")
    assert not errors(out) and len(images(out, "image/gif")) == 1, out


@pytest.mark.slow
def test_the_stop_button_is_one_line_and_resume_continues_the_same_run(kernel, tiny_mnist, one_thread,
                                                                        tmp_path):
    """The stop button (SIGINT to the kernel) during training: one line, a whole checkpoint; --resume in the
    next cell ends with the weights of a run that was never stopped, bit for bit."""
    args = ["--data-dir", tiny_mnist, "--epochs", "6", "--T", "20", *TINY]
    out_dir = os.path.join(str(kernel.cwd), "stopped")
    pid = kernel.client.km.provisioner.pid

    cell_done = threading.Event()

    def press_stop():  # as soon as the first epoch is saved
        while not os.path.exists(os.path.join(out_dir, "ckpt.pt")) and not cell_done.is_set():
            time.sleep(0.01)
        if not cell_done.is_set():
            os.kill(pid, signal.SIGINT)
    stopper = threading.Thread(target=press_stop)
    stopper.start()
    out = kernel.run(f"import ddpm_time\nddpm_time.main(['--out-dir', 'stopped', *{args!r}])")
    cell_done.set()
    stopper.join()
    msg = one_line(out)
    assert msg.startswith("error: interrupted"), msg
    epoch = torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)["epoch"]
    assert 1 <= epoch < 6, "the stop came after training"
    out = kernel.run(f"ddpm_time.main(['--out-dir', 'stopped', '--resume', *{args!r}])")
    assert not errors(out), errors(out)
    run_script("ddpm_time.py", "--out-dir", tmp_path, *args)
    resumed = torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)
    straight = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    for key in ("model", "ema"):
        assert all(torch.equal(resumed[key][k], straight[key][k]) for k in straight[key]), key
    assert torch.equal(resumed["loss_history"], straight["loss_history"])


@pytest.mark.slow
def test_the_course_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    """cs180.ipynb, committed without outputs, runs every cell with tiny settings and shows figures."""
    path = os.path.join(HERE, "cs180.ipynb")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit it without outputs"
    for f in SCRIPTS:
        shutil.copy(os.path.join(HERE, f), tmp_path)
    os.symlink(os.path.join(HERE, "pretrained"), tmp_path / "pretrained")
    monkeypatch.setenv("CS180_TINY", "1")
    monkeypatch.setenv("MNIST_DIR", make_mnist_dir(str(tmp_path / "mnist")))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    client = NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    assert not [o for c in code for o in errors(c.outputs)]  # nor a %run that failed inside
    shown = [o for c in code for o in c.outputs if o["output_type"] == "display_data"]
    assert len(shown) >= 10, len(shown)
    assert any("image/gif" in o["data"] for o in shown)
