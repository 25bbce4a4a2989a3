r"""Numbers for generated MNIST digits: accuracy, mode collapse, confidence, FID and KID.

Scores the samples.pt files that the DDPM and flow-matching scripts write with --n-samples (a row
each) next to a floor row of real training digits, in the eyes of a small CNN classifier.
FID: Heusel et al. 2017, https://arxiv.org/abs/1706.08500; KID: Binkowski et al. 2018, https://arxiv.org/abs/1801.01401

    python evaluate.py runs/ddpm_class/samples.pt                 # the table, shipped classifier
    python evaluate.py runs/ddpm_time runs/ddpm_class --data-dir ~/mnist  # run folders: two rows
    python evaluate.py runs/ddpm_class --json                     # one JSON object on stdout
    python evaluate.py a.pt --n-real 5000 --classifier runs/clf.pt  # floor of 5000, cache there

Classifier: (conv3x3 -> BatchNorm -> ReLU -> max-pool) x 2, 128-d features, 10 logits. The shipped
pretrained/mnist_classifier.pt gave every FID in RESULTS.md: yours compare with them, as FIDs
elsewhere share Inception's weights. Without it (this file alone, or --classifier PATH not there)
the first run trains one (Adam, one-cycle LR, +-2 px shifts, 4 epochs; a warning below 99 % test
accuracy) into DATA_DIR/mnist_classifier.pt or PATH. A retrained one moves FIDs; a cache that does
not load or has another ARCH is an error, not silently retrained (delete the file to replace it).
Metrics, each on all N samples of a file:
    acc       fraction classified as the requested label y (if the file has y); also per digit
    KL        KL(p || uniform) = sum_k p_k log(10 p_k) nats, p the histogram of predicted digits:
              0 if all ten are equally common, log 10 if all are one (mode collapse)
    conf>0.9  fraction whose top softmax probability is above 0.9 (low: ambiguous scribbles)
    FID       Frechet distance ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) of Gaussians fitted
              to the 128-d features of the samples and 10,000 test digits; biased up at small N
    KID       unbiased MMD^2 of the same features, k(a, b) = (a.b / 128 + 1)^3, on 10 subsets of
              min(1000, N) (mean +- std, x 1000): about 0 for real digits at any N
    real (train, N)  the same for N training digits (N of the first file, at most 10,000, or
              --n-real): a perfect generator's floor. Read every number next to it.
Conventions: samples.pt holds {"x": (N, 1, 28, 28) float in [0, 1], "y": (N,) int64 in 0..9 or
    None}, also "config" and "epoch"; a run folder stands for FOLDER/samples.pt. The classifier sees
    [0, 1] too (pixel / 255). Bad input: one line on stderr, exit code 2. Writes: the table (or
    --json) on stdout, and the classifier cache when it trains one.
What you can delete for an assignment: the checks in load_samples and load_classifier (they keep a
    wrong file from giving quiet nonsense); without --json, the stdout redirect.
"""
import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

ARCH = "evaluate.py cnn32-64-128 v1"  # stored in the cache; change it whenever Classifier changes
MAX_REAL = 10_000                      # the floor row uses at most this many training digits
KID_SUBSETS, KID_SIZE = 10, 1000       # KID: mean over 10 subsets of min(1000, N) features
CONF = 0.9                             # "confident": top softmax probability above this
RANGE_TOL = 1e-3                       # pixels may stray this far outside [0, 1] (float rounding)
MIN_ACC = 0.99                         # a classifier below this test accuracy gets a warning
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
    ap = argparse.ArgumentParser(description="Score samples.pt files of generated MNIST digits")
    ap.add_argument("files", nargs="+", help="samples.pt files ({'x': (N,1,28,28) in [0,1], "
                    "'y': (N,) or None}) or run folders holding one")
    g = ap.add_argument_group("data")
    g.add_argument("--data-dir", default="./data", help="MNIST folder (downloaded here if missing)")
    g.add_argument("--n-real", type=number(int, 0), default=0, help="training digits in the floor "
                   f"row (0: N of the first file, at most {MAX_REAL})")
    g = ap.add_argument_group("classifier")
    g.add_argument("--classifier", default="", help="classifier cache (default: the shipped "
                   "pretrained/mnist_classifier.pt beside this file, else "
                   "DATA_DIR/mnist_classifier.pt, trained on first use)")
    g.add_argument("--clf-epochs", type=number(int, 1), default=4,
                   help="epochs, when the classifier is trained")
    g.add_argument("--clf-limit", type=number(int, 0), default=0,
                   help="train the classifier on the first N digits (0: all)")
    g = ap.add_argument_group("output")
    g.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout instead of the table")
    g = ap.add_argument_group("run")
    g.add_argument("--seed", type=number(int, 0), default=0,
                   help="same seed, same numbers (training, floor digits, KID)")
    g.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or cpu, cuda, mps")
    return parse_flags(ap, argv)[0]
# --- classifier ---------------------------------------------------------------------------------
def conv_block(c_in, c_out):
    """conv3x3 -> BatchNorm -> ReLU -> 2x2 max-pool: (B, c_in, H, W) -> (B, c_out, H/2, W/2)."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))

class Classifier(nn.Module):
    """Small CNN; its 128-d penultimate layer is the feature space of FID and KID."""
    def __init__(self, feat_dim=128):
        super().__init__()
        self.features = nn.Sequential(conv_block(1, 32), conv_block(32, 64),  # (B, 64, 7, 7)
                                      nn.Flatten(), nn.Linear(64 * 7 * 7, feat_dim),
                                      nn.BatchNorm1d(feat_dim), nn.ReLU())
        self.head = nn.Linear(feat_dim, 10)

    def forward(self, x):               # x (B, 1, 28, 28) in [0, 1]
        f = self.features(x)            # (B, 128)
        return self.head(f), f          # logits (B, 10), features (B, 128)

def random_shift(x, max_shift=2):
    """Move each image by its own random (dy, dx) in [-2, 2]^2 px, filling with black: digits
    in samples are not always centred the way MNIST's are."""
    B, _, H, W = x.shape
    xp = F.pad(x, [max_shift] * 4)                                     # (B, 1, H + 4, W + 4)
    off = torch.randint(0, 2 * max_shift + 1, (2, B, 1), device=x.device)  # (dy, dx) + 2
    rows = off[0] + torch.arange(H, device=x.device)                   # (B, H): rows to read
    cols = off[1] + torch.arange(W, device=x.device)                   # (B, W)
    b = torch.arange(B, device=x.device)[:, None, None]
    return xp[b, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)  # (B, 1, H, W)

def train_classifier(x_train, y_train, epochs, device, batch_size=128):
    """Adam with a one-cycle LR (warm up, then anneal to ~0): 99 % in a few epochs.
    Whole set on the device, batches from torch.randperm; no DataLoader."""
    model = Classifier().to(device, memory_format=torch.channels_last)  # faster on CPU
    model.train()
    x_train, y_train = x_train.to(device), y_train.to(device)
    n_batches = max(1, len(x_train) // batch_size)  # tensor_split: no batch of 1 (BatchNorm)
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * n_batches)
    for epoch in range(1, epochs + 1):
        batches = torch.randperm(len(x_train), device=device).tensor_split(n_batches)
        bar = tqdm(batches, desc=f"classifier epoch {epoch}/{epochs}", unit="batch")
        for step, idx in enumerate(bar):
            logits = model(random_shift(x_train[idx]))[0]
            loss = F.cross_entropy(logits, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 50 == 0:  # a host sync every 50 steps only
                bar.set_postfix(loss=f"{loss.item():.4f}")
    return model.eval()

@torch.no_grad()
def classify(model, x01, device, batch_size=1000):
    """Logits (N, 10), float64 features (N, 128), on the CPU; in eval mode (BatchNorm's stats)."""
    logits, feats = zip(*(model(x.to(device)) for x in x01.split(batch_size)))
    return torch.cat(logits).cpu(), torch.cat(feats).cpu().double()
# --- metrics ------------------------------------------------------------------------------------
def class_metrics(logits, y):
    """Histogram of predicted digits, its KL from uniform, confident fraction, accuracy vs y."""
    prob = logits.double().softmax(1)
    pred = prob.argmax(1)
    hist = torch.bincount(pred, minlength=10).double() / len(pred)     # p_k, sums to 1
    p = hist[hist > 0]                                                  # 0 log 0 = 0
    confident = (prob.max(1).values > CONF).double().mean().item()
    m = {"kl": (p * (10 * p).log()).sum().item(), "hist": hist.tolist(), "conf": confident,
         "acc": None, "acc_per_digit": None}
    if y is not None:
        hit = (pred == y).double()
        m["acc"] = hit.mean().item()
        m["acc_per_digit"] = [hit[y == k].mean().item() if (y == k).any() else None
                              for k in range(10)]
    return m

def gaussian_stats(f):
    """Mean (d,) and covariance (d, d) of features f (N, d)."""
    return f.mean(0), torch.cov(f.T)

def sqrtm_psd(S):
    """Square root of a symmetric PSD matrix: S = V diag(l) V^T -> V diag(sqrt(l)) V^T."""
    l, V = torch.linalg.eigh(S)
    return (V * l.clamp(min=0).sqrt()) @ V.T  # clamp: rounding makes zero eigenvalues -1e-17

def frechet_distance(mu1, S1, mu2, S2):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64. With R = S1^(1/2), R S2 R is
    similar to S1 S2 (the same eigenvalues) but symmetric PSD: Tr (S1 S2)^(1/2) is the sum of
    sqrt(eig(R S2 R))."""
    mu1, S1, mu2, S2 = (t.double() for t in (mu1, S1, mu2, S2))
    R = sqrtm_psd(S1)
    M = R @ S2 @ R
    tr_sqrt = torch.linalg.eigvalsh((M + M.T) / 2).clamp(min=0).sqrt().sum()
    return ((mu1 - mu2).square().sum() + S1.trace() + S2.trace() - 2 * tr_sqrt).item()

def poly_kernel(a, b):
    """KID's kernel k(a, b) = (a.b / d + 1)^3 between the rows of a (m, d), b (n, d): (m, n)."""
    return (a @ b.T / a.shape[1] + 1) ** 3

def off_diag_mean(K):
    """The mean of K (m, m) over i != j: the unbiased estimate leaves the diagonal out."""
    m = len(K)
    return (K.sum() - K.diagonal().sum()) / (m * (m - 1))

def kid(f1, f2, seed, n_subsets=KID_SUBSETS, size=KID_SIZE):
    """Unbiased MMD^2 with poly_kernel, mean and std over random subsets of m each."""
    g = torch.Generator().manual_seed(seed)
    m = min(size, len(f1), len(f2))
    mmd2 = []
    for _ in range(n_subsets):
        a = f1[torch.randperm(len(f1), generator=g)[:m]]
        b = f2[torch.randperm(len(f2), generator=g)[:m]]
        within = off_diag_mean(poly_kernel(a, a)) + off_diag_mean(poly_kernel(b, b))
        mmd2.append(within - 2 * poly_kernel(a, b).mean())
    mmd2 = torch.stack(mmd2)
    return mmd2.mean().item(), mmd2.std().item()

def score(model, x01, y, ref, device, seed):
    """All metrics of one set of digits x01 (N, 1, 28, 28) in [0, 1] against the test features."""
    logits, feats = classify(model, x01, device)
    m = {"n": len(x01), **class_metrics(logits, y)}
    m["fid"] = frechet_distance(*gaussian_stats(feats), ref["mu"], ref["cov"])
    m["kid"], m["kid_std"] = kid(feats, ref["feats"], seed)
    return m
# --- main ---------------------------------------------------------------------------------------
def main(argv=None):
    args = get_args(argv)
    log = sys.stderr if args.json else sys.stdout  # --json: stdout holds the JSON only
    with contextlib.redirect_stdout(log):
        # setup: every samples file is checked before any training (a bad one fails fast)
        print(vars(args))
        torch.manual_seed(args.seed)
        device = pick_device(args.device)
        samples = {path: load_samples(path) for path in map(samples_path, args.files)}
        x_train, y_train = load_mnist(args.data_dir, train=True)
        x_test, y_test = load_mnist(args.data_dir, train=False)

        # classifier: the cache, or one trained now (and cached); its test accuracy, each run
        path = args.classifier or default_classifier(args.data_dir)
        model, n_trained = get_classifier(path, args, x_train, y_train, device)
        test_logits, test_feats = classify(model, x_test, device)  # FID's, KID's reference
        test_acc = (test_logits.argmax(1) == y_test).double().mean().item()
        print(f"classifier: test accuracy {test_acc:.2%} on {len(x_test)} test digits")
        if test_acc < MIN_ACC:
            print(f"warning: classifier test accuracy {test_acc:.2%} is below "
                  f"{100 * MIN_ACC:g} %; scores mean less", file=sys.stderr)
        if n_trained:
            save_classifier(model, path, test_acc, n_trained, args)

        # scores: each file, then the floor: as many random training digits as the first's
        mu, cov = gaussian_stats(test_feats)
        ref = {"feats": test_feats, "mu": mu, "cov": cov}
        rows = {p: score(model, x, y, ref, device, args.seed) for p, (x, y) in samples.items()}
        n_first = len(next(iter(samples.values()))[0])  # the first file's
        n_real = min(args.n_real or min(n_first, MAX_REAL), len(x_train))
        floor_gen = torch.Generator().manual_seed(args.seed)
        idx = torch.randperm(len(x_train), generator=floor_gen)[:n_real]
        real = score(model, x_train[idx], y_train[idx], ref, device, args.seed)

    # output: one JSON object, or the table
    if args.json:
        classifier = {"path": path, "trained_now": bool(n_trained), "test_acc": test_acc}
        print(json.dumps({"classifier": classifier, "n_ref": len(x_test), "files": rows,
                          "real": real}, indent=1))
    else:
        print(f"\nFID and KID against the {len(x_test)} test digits; lower is better, "
              "the real row is the floor.")
        print_table({**rows, f"real (train, {real['n']})": real})
# --- inputs: samples files -----------------------------------------------------------------------
def samples_path(arg):
    """A samples.pt file as given, or the samples.pt inside a run folder."""
    if not os.path.isdir(arg):
        return arg
    path = os.path.join(arg, "samples.pt")
    if not os.path.isfile(path):
        die(f"{arg} is a folder without samples.pt: make one with `python ddpm_class.py "
            f"--sample-only --sampler ddim --n-samples 1000 --out-dir {arg}` (or the script that "
            "trained that run: ddpm_time.py, ...)")
    return path

def describe_value(v):
    if isinstance(v, torch.Tensor):
        return f"{v.dtype} tensor of shape {tuple(v.shape)}"
    return type(v).__name__

def load_samples(path):
    """Read and check one samples.pt: x (N, 1, 28, 28) float in [0, 1], y (N,) int64 or None."""
    if not os.path.isfile(path):
        die(f"{path}: no such file")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        die(f"{path} is not a file written by torch.save ({type(e).__name__}); "
            "expected a samples.pt")
    if not isinstance(d, dict) or not isinstance(d.get("x"), torch.Tensor):
        keys = f" with keys {list(d)}" if isinstance(d, dict) else ""
        die(f"{path} is not a samples file: expected {{'x': tensor, 'y': tensor or None}} as the "
            f"generating scripts write with --n-samples, got {describe_value(d)}{keys}")
    x, y = d["x"], d.get("y")
    if x.dim() != 4 or x.shape[1:] != (1, 28, 28) or len(x) < 2:
        die(f"{path}: x is a {describe_value(x)}, expected (N, 1, 28, 28) with N >= 2")
    if not x.is_floating_point():
        die(f"{path}: x is a {describe_value(x)}, expected floats in [0, 1] "
            "(from uint8, save x.float() / 255)")
    x = x.float()
    lo, hi = x.min().item(), x.max().item()  # NaN fails both comparisons below: tested apart
    if not x.isfinite().all() or lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        hint = ""
        if lo < -0.5:
            hint = " (looks like [-1, 1]: save (x + 1) / 2)"
        elif hi > 2:
            hint = " (0..255? save x / 255)"
        die(f"{path}: x ranges over [{lo:.3g}, {hi:.3g}], expected [0, 1]{hint}")
    if y is not None:
        is_int = isinstance(y, torch.Tensor) and not y.is_floating_point() and y.dtype != torch.bool
        if not is_int or y.shape != (len(x),):
            die(f"{path}: y is a {describe_value(y)}, "
                f"expected None or an integer tensor of shape ({len(x)},)")
        if y.min() < 0 or y.max() > 9:
            die(f"{path}: y holds labels {y.min().item()}..{y.max().item()}, "
                "expected digits 0..9")
        y = y.long()
    print(f"samples: {path}: {len(x)} digits{'' if y is None else ' with labels'}{made_by(d)}")
    return x.clamp(0, 1), y

def made_by(d):
    """What produced a samples file, from the "config" and "epoch" the generating scripts store:
    e.g. " (sampler ddim, 50 steps, w=5.0, epoch 20)" or " (sampler heun, 10 steps, w=5.0 from
    0.6, epoch 15)", or "" for a file without them."""
    config = d.get("config") if isinstance(d.get("config"), dict) else {}
    parts = [f"sampler {config['sampler']}"] if "sampler" in config else []
    steps = config.get("steps") or config.get("T")  # DDPM runs all T steps (steps is None)
    parts += [f"{steps} steps"] if steps else []
    parts += [f"w={config['guidance']}"] if "guidance" in config else []
    if config.get("guide_from") and config.get("guidance", 0) > 1:  # guidance from t (or s) on
        parts[-1] += f" from {config['guide_from']:g}"
    parts += [f"epoch {d['epoch']}"] if "epoch" in d else []
    return f" ({', '.join(parts)})" if parts else ""
# --- classifier cache ----------------------------------------------------------------------------
HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else "."  # a cell: "."
SHIPPED_CLASSIFIER = os.path.join(HERE, "pretrained", "mnist_classifier.pt")

def default_classifier(data_dir):
    """The shipped classifier (the one RESULTS.md scored with) when it is beside this file, else
    the cache in the data folder, trained on first use."""
    if os.path.exists(SHIPPED_CLASSIFIER):
        return SHIPPED_CLASSIFIER
    return os.path.join(data_dir, "mnist_classifier.pt")

def get_classifier(path, args, x_train, y_train, device):
    """The cached classifier, or a new one trained now; returns it and the digits it was trained
    on (None when loaded: nothing to cache)."""
    if os.path.exists(path):
        return load_classifier(path).to(device), None
    n = min(args.clf_limit or len(x_train), len(x_train))
    print(f"classifier: no cache at {path}, training {args.clf_epochs} epochs on {n} digits "
          f"on {device}")
    t0 = time.time()
    try:
        model = train_classifier(x_train[:n], y_train[:n], args.clf_epochs, device)
    except KeyboardInterrupt:  # the generic message would not say that nothing was cached
        die("interrupted while training the classifier: nothing was cached, "
            "the next run trains it again", 130)
    print(f"classifier: trained in {time.time() - t0:.0f} s")
    return model, n

def save_classifier(model, path, test_acc, n_train, args):
    """Cache the weights with what they are: arch tag, test accuracy, training size and epochs."""
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write_cache_atomic({"arch": ARCH, "model": state, "test_acc": test_acc,
                            "n_train": n_train, "epochs": args.clf_epochs, "seed": args.seed},
                           path)
        print(f"classifier: cached in {path}")
    except OSError as e:  # e.g. a read-only data folder: the scores are right, just not cached
        print(f"warning: cannot write {path} ({e.strerror}); pass --classifier PATH to cache it",
              file=sys.stderr)

def write_cache_atomic(obj, path):
    """torch.save into path + '.tmp', flush, fsync, then rename over path: a kill or a full disk
    leaves the previous cache whole. Raises OSError (the caller warns and goes on: the scores do
    not need the cache), where the shared save_atomic stops the run."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

def load_classifier(path):
    """The cached classifier in eval mode; a cache that does not load or fit is a one-line error."""
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
        arch = cache["arch"]
    except Exception as e:
        die(f"{path} is not a readable classifier cache ({type(e).__name__}); delete it to "
            "retrain, or pass another --classifier")
    if arch != ARCH:
        die(f"{path} holds a {arch!r} classifier, this evaluate.py needs {ARCH!r}; delete it to "
            "retrain (scores from the two are not comparable)")
    model = Classifier()
    try:
        model.load_state_dict(cache["model"])
    except Exception as e:
        die(f"{path}: the weights do not fit the classifier ({type(e).__name__}); "
            "delete it to retrain")
    print(f"classifier: loaded {path} (trained {cache['epochs']} epochs on {cache['n_train']} "
          f"digits, test accuracy then {cache['test_acc']:.2%})")
    return model.eval()
# --- output: the table ---------------------------------------------------------------------------
def print_table(rows):
    """One line per row (the files, then the real floor), then per-digit accuracy and histograms."""
    w = max(len(name) for name in rows)
    print(f"{'':<{w}}  {'N':>6}  {'acc':>7}  {'KL':>6}  {'conf>0.9':>8}  {'FID':>8}  "
          f"{'KID x 1000':>18}")
    for name, m in rows.items():
        acc = "-" if m["acc"] is None else f"{m['acc']:.2%}"
        kid_str = f"{1000 * m['kid']:.1f} +- {1000 * m['kid_std']:.1f}"
        print(f"{name:<{w}}  {m['n']:>6}  {acc:>7}  {m['kl']:>6.3f}  {m['conf']:>8.1%}  "
              f"{m['fid']:>8.3f}  {kid_str:>18}")
    digits = "".join(f"{k:>6}" for k in range(10))
    if any(m["acc_per_digit"] for m in rows.values()):
        print(f"\naccuracy per requested digit (%)\n{'':<{w}}{digits}")
        for name, m in rows.items():
            if m["acc_per_digit"]:
                cells = ["     -" if a is None else f"{100 * a:>6.1f}" for a in m["acc_per_digit"]]
                print(f"{name:<{w}}" + "".join(cells))
    print(f"\npredicted digits (% of samples; uniform is 10.0 each)\n{'':<{w}}{digits}")
    for name, m in rows.items():
        print(f"{name:<{w}}" + "".join(f"{100 * p:>6.1f}" for p in m["hist"]))

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
# --- shared: device ---
def pick_device(name):
    """auto: cuda, then Apple's mps, then cpu. A device this machine lacks is a one-line error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() \
            else "cpu"
    try:
        if name.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ValueError(name)
        return torch.empty(0, device=name).device  # fails on a device this machine lacks
    except Exception:
        die(f"--device {name}: not available on this machine (use auto, cpu, cuda, cuda:1 or mps)")
# --- shared: MNIST ---
def find_idx_files(data_dir, train):
    """The IDX image and label paths, or None: in DIR, DIR/MNIST/raw (torchvision), or Kaggle's."""
    names = [f"{'train' if train else 't10k'}-{k}-ubyte" for k in ("images-idx3", "labels-idx1")]
    for folder in ("", "MNIST/raw", "raw", "archive"):
        for files in (names, [n.replace("-idx", ".idx") for n in names]):
            paths = [os.path.join(data_dir, folder, n) for n in files]
            paths = [os.path.join(p, n) if os.path.isdir(p) else p for p, n in zip(paths, files)]
            if all(os.path.isfile(p) for p in paths):
                return paths
def read_idx(path, ndim):
    """One IDX file (bytes 0, 0, 8, ndim; ndim 4-byte big-endian sizes; uint8s) as a tensor."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != bytes([0, 0, 8, ndim]):
        raise ValueError(f"{path} is not an IDX file of {ndim}-d uint8 values")
    sizes = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    values = data[4 + 4 * ndim:]
    if len(values) != math.prod(sizes) or not values:
        raise ValueError(f"{path} holds {len(values)} values, its header says {sizes}")
    return torch.frombuffer(bytearray(values), dtype=torch.uint8).view(sizes)
def load_mnist(data_dir, train=True, limit=0, device="cpu"):
    """Digits x = p / 255 in [0, 1] (N, 1, 28, 28), pixels p; labels (N,); limit > 0: the first"""
    if find_idx_files(data_dir, train) is None:
        try:
            import torchvision  # here, not at the top: only a download needs it
            torchvision.datasets.MNIST(data_dir, train=train, download=True)
        except Exception as e:  # offline, no permission, ...: say where the files go instead
            die(f"MNIST is not in {data_dir!r} and could not be downloaded ({type(e).__name__}): "
                f"put its four IDX files (train-images-idx3-ubyte, ...) there, or pass --data-dir")
    paths = find_idx_files(data_dir, train)
    try:
        images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1).long()
    except Exception as e:
        die(f"cannot read MNIST IDX files {paths}: {e}")
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        die(f"{paths[0]} does not hold 28x28 MNIST digits matching {paths[1]}")
    images, labels = images[:limit or None], labels[:limit or None]
    return images.unsqueeze(1).float().div(255).to(device), labels.to(device)
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
