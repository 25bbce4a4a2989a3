"""Copy the marked shared blocks of one script into every other script that has them: a fix is made once.

    python tools/sync_shared.py ddpm_class.py           # after fixing a shared block in ddpm_class.py
    python tools/sync_shared.py ddpm_class.py --check   # only list the copies that differ (exit 1 if any)

Each script runs alone, so code repeats across files on purpose. A repeated piece sits in a block that
starts at a line `# --- shared: NAME ---` and runs to the next section rule (a line starting with
`# ---` or `# ===`) or the end of the file; blank lines at its end are not part of it. Every copy of a
block must be identical (test_shared.py checks it, and that no copy of a function goes unmarked).
"""
import argparse
import os
import re
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = re.compile(r"# --- shared: (.+?) ---\s*$")


def scripts(folder=HERE):
    """The product scripts: every .py at the top of the repository but the tests."""
    return sorted(f for f in os.listdir(folder) if f.endswith(".py") and not f.startswith(("test_", "conftest")))


def blocks(text):
    """{name: (first line, end line)} of the marked blocks, as indices into text.splitlines()."""
    lines, found = text.splitlines(), {}
    for i, line in enumerate(lines):
        m = MARK.match(line)
        if not m:
            continue
        if m.group(1) in found:
            raise ValueError(f"block {m.group(1)!r} appears twice")
        j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith(("# ---", "# ==="))), len(lines))
        while j > i + 1 and not lines[j - 1].strip():
            j -= 1
        found[m.group(1)] = (i, j)
    return found


def block_texts(text):
    lines = text.splitlines()
    return {name: "\n".join(lines[i:j]) for name, (i, j) in blocks(text).items()}


def sync(source, targets, check):
    """Replace each target's copy of every block of `source` by the source's; returns the files changed."""
    src = block_texts(open(source).read())
    changed = []
    for path in targets:
        text = open(path).read()
        lines, new = text.splitlines(), None
        # replace from the bottom up, so the line numbers of the blocks above stay valid
        for name, (i, j) in sorted(blocks(text).items(), key=lambda kv: -kv[1][0]):
            if name in src and "\n".join(lines[i:j]) != src[name]:
                print(f"{os.path.basename(path)}: block {name!r} differs from {os.path.basename(source)}'s")
                lines[i:j] = src[name].splitlines()
                new = lines
        if new is not None:
            changed.append(path)
            if not check:
                with open(path, "w") as f:
                    f.write("\n".join(new) + "\n")
    return changed


def main():
    ap = argparse.ArgumentParser(description="Copy every marked shared block of one script into the others")
    ap.add_argument("source", help="the script whose blocks are right, e.g. ddpm_class.py")
    ap.add_argument("--check", action="store_true", help="list the differing copies, change nothing")
    args = ap.parse_args()
    source = os.path.abspath(args.source)
    if not os.path.isfile(source):
        sys.exit(f"error: no such file {args.source}")
    targets = [os.path.join(HERE, f) for f in scripts() if os.path.join(HERE, f) != source]
    changed = sync(source, targets, args.check)
    print(f"{len(changed)} file(s) {'differ' if args.check else 'updated'}")
    sys.exit(1 if args.check and changed else 0)


if __name__ == "__main__":
    main()
