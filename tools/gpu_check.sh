#!/usr/bin/env bash
# One command for a GPU machine, offline: the cuda tests (test_cuda.py, with the real MNIST), then a short
# default-configuration training of ddpm_class.py and flow_class.py, 1,000 guided digits of each, scored by
# evaluate.py, and a markdown table of the times and scores. Ends within 8 minutes on one GPU.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bash tools/gpu_check.sh [options] [MNIST]

  MNIST          where MNIST is (default: $MNIST_DIR): a folder in torchvision's layout (MNIST/raw/...),
                 a folder with the four IDX files (or Kaggle's dotted names), or a folder or tarball
                 holding the four gzipped files (train-images-idx3-ubyte.gz, ...), unpacked to a temp folder.
                 Nothing is downloaded.
  --epochs N     training epochs of each timed run (default 2)
  --levers       instead of the tests and timings: ddpm_class.py's speed levers (tools/with_levers.py), each on
                 its own and together, a training run of N epochs each with 1,000 guided digits, all scored by one
                 evaluate.py; a table of each lever's img/s against the default, and its accuracy and FID
  --cpu-dry-run  the same pipeline on the CPU, small (--limit 512 --channels 8 8 8, 1 epoch, 100 digits; with
                 --levers 2 epochs and fewer levers): checks this script where there is no GPU; its times mean nothing
  -h, --help     this text

It runs `pytest -m cuda test_cuda.py` (MNIST_DIR set, so the real-MNIST test runs too), then for
ddpm_class.py and flow_class.py: a training run (--epochs N, default flags otherwise, --device cuda),
1,000 guided digits (--sample-only --n-samples 1000) and evaluate.py's accuracy and FID; then the table.
Without a GPU it runs the cuda tests (they skip), says the timings need a GPU, and exits 0.
Environment: PYTHON (default python), KEEP=1 keeps the work folder (it is kept anyway when a step fails),
BUDGET_S (default 480: every step is cut off so that the whole ends within it; with --levers, a lever run
gets at most 240 s, none starts with under 100 s left, and the last 40 s are kept for evaluate.py).
Exit status: 0 when every step passed, 1 when a test or a run failed, 2 on bad arguments or MNIST not found.
EOF
}

# --- arguments --------------------------------------------------------------------------------------
EPOCHS=2
DRY_RUN=0
LEVERS=0
MNIST="${MNIST_DIR:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --epochs) [ $# -ge 2 ] && [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "error: --epochs needs a positive integer" >&2; exit 2; }
                  EPOCHS="$2"; shift 2 ;;
        --cpu-dry-run) DRY_RUN=1; shift ;;
        --levers) LEVERS=1; shift ;;
        -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) MNIST="$1"; shift ;;
    esac
done

case "$MNIST" in ""|/*) ;; *) MNIST="$PWD/$MNIST" ;; esac   # relative to where it was called from
cd "$(dirname "$0")/.."                    # the repository root: the scripts and test_cuda.py
PYTHON="${PYTHON:-python}"
BUDGET_S="${BUDGET_S:-480}"
START=$SECONDS
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
FAILED=0
on_exit() {
    local rc=$?
    if { [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; } || [ "$FAILED" -ne 0 ] || [ -n "${KEEP:-}" ]; then  # 2: bad input
        echo "logs and runs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap on_exit EXIT

say() { printf '[%4d s] %s\n' "$((SECONDS - START))" "$*"; }
die() { echo "error: $*" >&2; exit 2; }
left() { echo $((BUDGET_S - (SECONDS - START))); }   # seconds left of the budget
timed() {  # timed LOG CMD...: stdout to LOG, stderr to LOG.err, within what is left of the budget; sets SECS
    local log="$1" t0=$SECONDS rc=0 budget
    shift
    budget=$(left)
    if [ "$budget" -le 10 ]; then
        echo "  skipped: the ${BUDGET_S} s budget is spent"; SECS=0; return 124
    fi
    timeout "$budget" "$@" > "$log" 2> "$log.err" || rc=$?
    SECS=$((SECONDS - t0))
    if [ "$rc" -ne 0 ]; then
        tail -n 5 "$log"; tail -n 15 "$log.err"
        [ "$rc" -ne 124 ] || echo "  cut off: the ${BUDGET_S} s budget ran out"
    fi
    return "$rc"
}

# --- MNIST: the four IDX files in one folder, whatever the layout given ---------------------------------
NAMES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

find_one() {  # the first regular file under $1 named $2 (at most 4 folders down), or nothing
    find -L "$1" -maxdepth 5 -type f -name "$2" -print -quit 2>/dev/null || true
}

prepare_mnist() {  # $1: folder or tarball -> prints a folder holding the four plain IDX files
    local src="$1" data="$WORK/mnist" name dotted f
    if [ -f "$src" ]; then
        mkdir -p "$WORK/unpacked"
        tar -xf "$src" -C "$WORK/unpacked" || die "$src: not a tarball tar can read"
        src="$WORK/unpacked"
    elif [ ! -d "$src" ]; then
        die "MNIST: $src is neither a folder nor a tarball"
    fi
    mkdir -p "$data"
    for name in "${NAMES[@]}"; do
        dotted="${name/-idx/.idx}"        # Kaggle's train-images.idx3-ubyte
        f="$(find_one "$src" "$name")"; [ -n "$f" ] || f="$(find_one "$src" "$dotted")"
        if [ -n "$f" ]; then
            ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$data/$name"
            continue
        fi
        f="$(find_one "$src" "$name.gz")"; [ -n "$f" ] || f="$(find_one "$src" "$dotted.gz")"
        [ -n "$f" ] || die "MNIST: no $name (nor $name.gz) under $1; give the folder that holds the four IDX files"
        gunzip -c "$f" > "$data/$name" || die "MNIST: $f is not a whole gzip file"
    done
    echo "$data"
}

DATA=""
if [ -n "$MNIST" ]; then
    DATA="$(prepare_mnist "$MNIST")"
    say "MNIST: the four IDX files from $MNIST ($(du -shL "$DATA" | cut -f1))"
fi

# --- the machine ----------------------------------------------------------------------------------------
MACHINE="$("$PYTHON" -c "
import platform, torch
gpu = f'{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}' if torch.cuda.is_available() else 'no CUDA GPU'
print(f'{gpu}; torch {torch.__version__}; {platform.machine()}, {torch.get_num_threads()} CPU threads')")"
echo "machine: $MACHINE"
HAS_GPU=0
[[ "$MACHINE" == "no CUDA GPU;"* ]] || HAS_GPU=1
if [ "$HAS_GPU" = 1 ]; then
    DEVICE=cuda
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
elif [ "$DRY_RUN" = 1 ]; then
    DEVICE=cpu
else
    DEVICE=""
fi
if [ "$DRY_RUN" = 1 ]; then
    DEVICE=cpu
    EPOCHS=$((LEVERS + 1))   # with --levers 2: the second epoch is the steady rate
fi
[ -z "$DEVICE" ] || [ -n "$DATA" ] || die "no MNIST given: pass its folder (or set MNIST_DIR); see --help"

if [ "$LEVERS" = 0 ]; then
    # --- 1. the cuda tests ----------------------------------------------------------------------------------
    XDIST=()   # on a GPU machine, 4 test processes at once (each test is a few short runs, mostly start-up)
    [ "$HAS_GPU" = 0 ] || ! "$PYTHON" -c "import xdist" 2>/dev/null || XDIST=(-n 4)
    say "cuda tests: pytest -m cuda ${XDIST[*]:+${XDIST[*]} }test_cuda.py${DATA:+ (real MNIST from $MNIST)}"
    TESTS="failed"
    if MNIST_DIR="$DATA" timeout "$(( $(left) < 270 ? $(left) : 270 ))" \
            "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider ${XDIST[@]+"${XDIST[@]}"} test_cuda.py \
            > "$WORK/tests.log" 2>&1; then
        TESTS="ok"
    else
        FAILED=1
        tail -n 30 "$WORK/tests.log"
    fi
    SUMMARY="$(grep -E '(passed|failed|skipped|error)' "$WORK/tests.log" | tail -n 1 || true)"
    say "cuda tests: $TESTS: $SUMMARY"
fi

if [ -z "$DEVICE" ]; then
    say "no CUDA GPU here: $([ "$LEVERS" = 0 ] && echo "the cuda tests skipped; ")the timings need a GPU" \
        "(or --cpu-dry-run to check this script)"
    exit "$FAILED"
fi

# --- the levers (--levers): ddpm_class.py with each speed lever, its img/s, accuracy and FID ------------
if [ "$LEVERS" = 1 ]; then
    # label | levers (tools/with_levers.py) | extra flags; the default twice (two seeds: how far FID moves by chance)
    # in this order until the budget is spent: the issue's levers first (foreach EMA, bf16, CUDA graphs, memory
    # format, batch size with its learning rate), then those three together, then the rest
    RUNS=("default|none|" "default, --seed 1|none|--seed 1" "foreach EMA|foreach-ema|" "bf16 autocast|bf16|"
          "torch.compile reduce-overhead (CUDA graphs)|compile-ro|" "NCHW, not channels_last|nchw|"
          "batch 256, lr 2e-3|none|--batch-size 256 --lr 2e-3"
          "foreach EMA + bf16 + compile reduce-overhead|foreach-ema,bf16,compile-ro|"
          "batch 512, lr 2e-3|none|--batch-size 512 --lr 2e-3" "torch.compile (default mode)|compile|"
          "fused AdamW|fused-adamw|"
          "the three + batch 256, lr 2e-3|foreach-ema,bf16,compile-ro|--batch-size 256 --lr 2e-3")
    EXTRA=(); N_SAMPLES=1000
    if [ "$DRY_RUN" = 1 ]; then
        RUNS=("${RUNS[@]:0:4}" "${RUNS[5]}" "${RUNS[7]}")   # the CPU compiles slowly: one compiled run
        EXTRA=(--limit 512 --channels 8 8 8); N_SAMPLES=100; export OMP_NUM_THREADS=1
    fi
    ROWS_TSV="$WORK/levers.tsv"; : > "$ROWS_TSV"   # label, samples file, epoch 1 s, epoch N s, img/s, s, status
    FILES=()
    [ "$DEVICE" = cuda ] && say "compilers: triton $("$PYTHON" -c 'import triton; print(triton.__version__)' \
        2>/dev/null || echo missing); $(cc --version 2>/dev/null | head -n 1 || echo 'no C compiler (cc)')"
    for i in "${!RUNS[@]}"; do
        IFS='|' read -r label levers flags <<< "${RUNS[$i]}"
        if [ "$(left)" -lt 100 ]; then
            say "lever $label: skipped, under 100 s of the budget left"
            printf '%s\t-\t-\t-\t-\t-\tskipped: the budget\n' "$label" >> "$ROWS_TSV"; continue
        fi
        out="$WORK/levers/$i"
        log="$WORK/lever$i.log"
        cap=$(( $(left) - 40 < 240 ? $(left) - 40 : 240 ))   # 40 s kept for evaluate.py; no run takes them all
        say "lever $label: ddpm_class.py, $EPOCHS epochs, $N_SAMPLES digits (at most $cap s)"
        t0=$SECONDS; rc=0
        # each run compiles into a fresh cache: a compiled row's epoch 1 holds its whole compile, whatever ran before
        # shellcheck disable=SC2086  # $flags: separate words
        TORCHINDUCTOR_CACHE_DIR="$WORK/inductor$i" TRITON_CACHE_DIR="$WORK/triton$i" timeout "$cap" \
            "$PYTHON" -u tools/with_levers.py "$levers" ddpm_class.py --data-dir "$DATA" --out-dir "$out" \
            --epochs "$EPOCHS" --device "$DEVICE" --n-samples "$N_SAMPLES" ${EXTRA[@]+"${EXTRA[@]}"} $flags \
            > "$log" 2>&1 || rc=$?
        first="$(sed -nE 's/^epoch 1: ([0-9.]+) s.*/\1/p' "$log")"
        read -r last rate < <(sed -nE "s/^epoch $EPOCHS: ([0-9.]+) s, ([0-9]+) img\/s/\1 \2/p" "$log") || true
        status=ok
        if [ "$rc" -ne 0 ]; then
            FAILED=1; status="$([ "$rc" = 124 ] && echo "cut off at $cap s" || echo "failed ($rc)")"
            tail -n 15 "$log"
        fi
        samples="-"; [ "$rc" -ne 0 ] || { samples="$out/samples.pt"; FILES+=("$samples"); }
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$samples" "${first:--}" "${last:--}" "${rate:--}" \
            "$((SECONDS - t0))" "$status" >> "$ROWS_TSV"
        say "lever $label: $status; epoch 1 ${first:--} s; epoch $EPOCHS ${last:--} s, ${rate:--} img/s;" \
            "$((SECONDS - t0)) s in all"
    done
    if [ ${#FILES[@]} -gt 0 ]; then
        say "evaluate.py: ${#FILES[@]} sample sets"
        timed "$WORK/levers.json" "$PYTHON" evaluate.py "${FILES[@]}" --data-dir "$DATA" --json --device "$DEVICE" \
            || FAILED=1
    else
        say "no lever run finished: nothing to score"
    fi
    echo
    echo "$MACHINE; $(date -u +%Y-%m-%d); ddpm_class.py, $EPOCHS epochs, $N_SAMPLES guided digits each$( \
        [ "$DRY_RUN" = 1 ] && echo ", --cpu-dry-run: --limit 512 --channels 8 8 8")"
    echo
    "$PYTHON" - "$ROWS_TSV" "$WORK/levers.json" "$EPOCHS" <<'EOF'
import json, sys
rows_path, scores_path, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [line.rstrip("\n").split("\t") for line in open(rows_path) if line.strip()]
try:
    scores = json.load(open(scores_path))["files"]
except (OSError, ValueError, KeyError):
    scores = {}
num = lambda v: float(v) if v != "-" else None  # noqa: E731
base = next((num(r[4]) for r in rows if r[0].startswith("default") and num(r[4])), None)
print(f"| lever (alone, or as named) | epoch 1 s (warm-up, compile) | epoch {epochs} img/s | x default | "
      f"20 epochs s (computed) | whole run s | accuracy | FID | run |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
for label, samples, first, last, rate, whole, status in rows:
    score = scores.get(samples, {})
    acc, fid = (f"{100 * score['acc']:.2f}%", f"{score['fid']:.2f}") if score else ("-", "-")
    ratio = f"{num(rate) / base:.2f}" if base and num(rate) else "-"
    total = f"{num(first) + 19 * num(last):.0f}" if num(first) and num(last) else "-"
    print(f"| {label} | {first} | {rate} | {ratio} | {total} | {whole} | {acc} | {fid} | {status} |")
EOF
    echo
    echo "epoch $EPOCHS img/s: the steady rate of the training steps (tools/with_levers.py's per-epoch line, after"
    echo "a cuda sync); 20 epochs s: epoch 1 + 19 x epoch $EPOCHS, computed, training only; whole run s: the training"
    echo "command with its figures and the $N_SAMPLES digits. Accuracy and FID: evaluate.py, shipped classifier,"
    echo "10,000 test digits; the two default rows (two seeds) show how far they move by chance."
    say "done in $((SECONDS - START)) s"
    exit "$FAILED"
fi

# --- 2. timings: train, sample 1,000 guided digits, score -----------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
    TRAIN_EXTRA=(--limit 512 --channels 8 8 8); N_SAMPLES=100
    export OMP_NUM_THREADS=1   # a small model on a shared CPU: two threads ran 7x slower than one
else
    TRAIN_EXTRA=(); N_SAMPLES=1000
fi
declare -A DEFAULT_EPOCHS=([ddpm_class]=20 [flow_class]=15)   # the scripts' --epochs defaults
ROWS=()
ESTIMATES=()

for s in ddpm_class flow_class; do
    out="$WORK/runs/$s"
    train_s="-"; per_epoch="-"; img_s="-"; sample_s="-"; acc="-"; fid="-"
    say "$s: training $EPOCHS epochs on $DEVICE"
    if timed "$WORK/$s.train.log" "$PYTHON" -u "$s.py" --data-dir "$DATA" --out-dir "$out" --epochs "$EPOCHS" \
            --device "$DEVICE" ${TRAIN_EXTRA[@]+"${TRAIN_EXTRA[@]}"}; then
        train_s=$SECS
        line="$(grep -E '^train: ' "$WORK/$s.train.log" | tail -n 1 || true)"   # train: X s/epoch, Y img/s
        per_epoch="$(sed -nE 's/^train: ([0-9.]+) s\/epoch.*/\1/p' <<< "$line")"; per_epoch="${per_epoch:--}"
        img_s="$(sed -nE 's/^train: .* ([0-9.]+) img\/s.*/\1/p' <<< "$line")"; img_s="${img_s:--}"
        say "$s: $line (${SECS} s in all)"
        [ "$per_epoch" = "-" ] || ESTIMATES+=("$s: ${DEFAULT_EPOCHS[$s]} epochs ≈ $("$PYTHON" -c \
            "print(round(${DEFAULT_EPOCHS[$s]} * $per_epoch))") s of training (computed: ${DEFAULT_EPOCHS[$s]} x $per_epoch s/epoch)")
        say "$s: $N_SAMPLES guided digits (--sample-only)"
        if timed "$WORK/$s.sample.log" "$PYTHON" -u "$s.py" --out-dir "$out" --sample-only --n-samples "$N_SAMPLES" \
                --device "$DEVICE"; then
            sample_s="$(sed -nE "s/^sample: $N_SAMPLES digits.* in ([0-9.]+) s.*/\1/p" "$WORK/$s.sample.log" | tail -n 1)"
            sample_s="${sample_s:-?} (${SECS})"
            say "$s: evaluate.py"
            if timed "$WORK/$s.eval.json" "$PYTHON" evaluate.py "$out/samples.pt" --data-dir "$DATA" --json \
                    --device "$DEVICE"; then
                read -r acc fid < <("$PYTHON" - "$WORK/$s.eval.json" <<'EOF'
import json, sys
row = next(iter(json.load(open(sys.argv[1]))["files"].values()))
print(f"{100 * row['acc']:.2f}% {row['fid']:.2f}")
EOF
                ) || { acc="?"; fid="?"; }
            else
                FAILED=1
            fi
        else
            FAILED=1
        fi
    else
        FAILED=1
    fi
    ROWS+=("| $s.py | $EPOCHS | $train_s | $per_epoch | $img_s | $sample_s | $acc | $fid |")
done

# --- 3. the table ---------------------------------------------------------------------------------------
echo
echo "$MACHINE; $(date -u +%Y-%m-%d)$([ "$DRY_RUN" = 1 ] && echo ", --cpu-dry-run: --limit 512 --channels 8 8 8, $N_SAMPLES digits")"
echo
echo "| script | epochs | train s | s/epoch | img/s | sampling s ($N_SAMPLES digits; whole command) | accuracy | FID |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
echo "train s: the whole training command (start, data, snapshots, figures); s/epoch and img/s: the script's own"
echo "'train:' line (the training steps only; the first epoch includes cuDNN's warm-up). Accuracy: evaluate.py's"
echo "shipped classifier reads the digit asked for; FID against the 10,000 test digits. cuda tests: $TESTS ($SUMMARY)."
[ ${#ESTIMATES[@]} -eq 0 ] || printf '%s\n' "${ESTIMATES[@]}"
say "done in $((SECONDS - START)) s"
exit "$FAILED"
