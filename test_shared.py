"""How the scripts read: shared blocks identical everywhere, no unmarked copy, no dead code, the method
first and the plumbing last, checked on every script.

    pytest -q test_shared.py
"""
import ast
import functools
import os
import re

import pytest

from conftest import HERE
from tools.sync_shared import block_texts, blocks, scripts

SCRIPTS = scripts(HERE)
MODELS = [f for f in SCRIPTS if f.startswith(("ddpm_", "flow_", "reflow"))]   # the DDPM and flow scripts
PLUMBING = "# Plumbing, the same in every script that has it (skip on a first read)"
METHOD_WITHIN = 120  # a student meets the first line of the method within this many lines


@functools.lru_cache(maxsize=None)
def source(f):
    return open(os.path.join(HERE, f)).read()


@functools.lru_cache(maxsize=None)
def top_level_defs(f):
    """{name: (node, source text)} of the top-level functions and classes of a script."""
    lines = source(f).splitlines()
    return {n.name: (n, "\n".join(lines[n.lineno - 1:n.end_lineno])) for n in ast.parse(source(f)).body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def block_of_line(f, line):
    """The name of the shared block that holds 1-based `line` of f, or None."""
    for name, (i, j) in blocks(source(f)).items():
        if i < line <= j:
            return name
    return None


def test_every_script_is_found():
    assert {"ddpm_time.py", "ddpm_class.py", "evaluate.py", "make_gif.py"} <= set(SCRIPTS)


def test_shared_blocks_are_identical_in_every_file():
    texts = {f: block_texts(source(f)) for f in SCRIPTS}
    for name in sorted({n for b in texts.values() for n in b}):
        copies = {f: b[name] for f, b in texts.items() if name in b}
        reference_file = min(copies)
        for f, text in copies.items():
            assert text == copies[reference_file], \
                f"shared block {name!r} differs between {f} and {reference_file}: python tools/sync_shared.py FIXED_FILE"


def test_every_copy_of_a_function_is_marked_and_identical():
    """A function or class defined in two scripts is in the same shared block in both (a missing
    marker fails here, it does not exempt the file), or it is renamed because it differs on purpose."""
    defs = {f: top_level_defs(f) for f in SCRIPTS}
    everywhere = ("main", "get_args")  # every script has its own, by design
    for name in sorted({n for d in defs.values() for n in d} - set(everywhere)):
        holders = {f: d[name] for f, d in defs.items() if name in d}
        if len(holders) < 2:
            continue
        for f, (node, _) in holders.items():
            assert block_of_line(f, node.lineno), \
                f"{name} is defined in {sorted(holders)} but not inside a '# --- shared: ... ---' block in {f}"
        texts = {text for _, text in holders.values()}
        assert len(texts) == 1, f"{name} differs between {sorted(holders)}: sync the block or rename the copy"


def test_no_copy_hides_under_another_name():
    """The same body under two names in two scripts is a copy the block test would not see."""
    seen = {}
    for f in SCRIPTS:
        for name, (node, _) in top_level_defs(f).items():
            code = node.body[1:] if ast.get_docstring(node) else node.body  # docstrings may differ
            body = ast.dump(ast.Module(body=code, type_ignores=[]))
            if len(code) > 1 or len(body) > 300:  # one-line bodies may coincide
                seen.setdefault(body, set()).add(name)
    for names in seen.values():
        assert len(names) == 1, f"functions {sorted(names)} have the same body: share one, or let them differ"


@pytest.mark.parametrize("f", SCRIPTS)
def test_no_dead_code(f):
    """Each file carries only what it calls: every top-level function and class is used in it."""
    tree = ast.parse(source(f))
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    unused = [name for name in top_level_defs(f) if name not in used]
    assert not unused, f"{f}: defined but never used: {unused}"


@pytest.mark.parametrize("f", SCRIPTS)
def test_reading_order(f):
    """Header (raw docstring ending with what to delete) -> config -> method -> main -> plumbing tail."""
    text = source(f)
    lines = text.splitlines()
    assert text.startswith('r"""'), f"{f}: the docstring must be raw (a \\t in \\theta would become a tab)"
    doc = ast.get_docstring(ast.parse(text))
    assert "What you can delete for an assignment" in doc.split("\n\n")[-1] or \
        "What you can delete for an assignment" in doc[-800:], f"{f}: the header should end with what to delete"
    assert "../shared" not in text, f"{f}: points outside the repository"
    defs = top_level_defs(f)
    assert defs["get_args"][0].lineno < defs["main"][0].lineno
    tail = next(i for i, line in enumerate(lines) if PLUMBING in line)
    assert defs["main"][0].lineno < tail, f"{f}: main() comes before the plumbing tail"
    # after the tail's header, every section is a shared block (nothing of the script's own)
    for i, line in enumerate(lines[tail + 2:], tail + 3):
        if line.startswith("# ---"):
            assert re.match(r"# --- shared: .+ ---", line), f"{f}:{i}: the plumbing tail holds only shared blocks"
    assert lines[-2:] == ['if __name__ == "__main__":', "    main()"], f"{f}: the file ends with the entry point"


@pytest.mark.parametrize("f", MODELS)
def test_method_comes_within_120_lines(f):
    """The first function after get_args (the schedule, or the flow path) starts the method."""
    defs = sorted((node.lineno, name) for name, (node, _) in top_level_defs(f).items())
    after_config = [(line, name) for line, name in defs if line > top_level_defs(f)["get_args"][0].lineno]
    line, name = after_config[0]
    assert line <= METHOD_WITHIN, f"{f}: the method starts at line {line} ({name})"


def test_plumbing_blocks_live_in_the_tail():
    """Errors, device, data, checkpoints, RNG and plots are plumbing: never in the story part."""
    story = {"schedule", "forward process", "model blocks", "UNet", "sampler", "DDPM loss", "EMA",
             "flow path", "flow sampler", "guidance", "flags"}  # the method's shared blocks; every other one is plumbing
    for f in SCRIPTS:
        lines = source(f).splitlines()
        tail = next(i for i, line in enumerate(lines) if PLUMBING in line)
        for name, (i, _) in blocks(source(f)).items():
            if name not in story:
                assert i > tail, f"{f}: plumbing block {name!r} at line {i + 1} sits above the plumbing tail"


# --- one sitting: the limits of issue #37 ---------------------------------------------------------
TRAINING = MODELS + ["compare_schedules.py", "denoise_single_step.py"]  # the scripts with a training loop
MAX_LINES = {f: 680 for f in MODELS}
MAX_LINES.update({"compare_schedules.py": 740, "denoise_single_step.py": 740, "edit.py": 740})
MAX_TAIL, MAX_HEADER = 280, 35


def tail_start(f):
    """0-based index of the Plumbing banner's first rule line."""
    lines = source(f).splitlines()
    return next(i for i, line in enumerate(lines) if PLUMBING in line) - 1


@pytest.mark.parametrize("f", sorted(MAX_LINES))
def test_a_script_reads_in_one_sitting(f):
    if not os.path.exists(os.path.join(HERE, f)):
        pytest.skip(f"{f} is not in the repository")
    lines = source(f).splitlines()
    header = ast.parse(source(f)).body[0].end_lineno  # the docstring's last line
    assert len(lines) <= MAX_LINES[f], f"{f}: {len(lines)} lines, at most {MAX_LINES[f]}"
    assert len(lines) - tail_start(f) <= MAX_TAIL, f"{f}: the plumbing tail is {len(lines) - tail_start(f)} lines"
    assert header <= MAX_HEADER, f"{f}: the header docstring is {header} lines"


@pytest.mark.parametrize("f", TRAINING)
def test_the_training_step_is_in_view(f):
    """loss.backward(), the optimizer step and (where there is one) the EMA update sit before the banner."""
    story = "\n".join(source(f).splitlines()[:tail_start(f)])
    tail = "\n".join(source(f).splitlines()[tail_start(f):])
    for call in (".backward()", ".zero_grad(", "opt.step()"):
        assert call in story and call not in tail, f"{f}: {call} belongs before the plumbing tail"
    if "def ema_update" in source(f):
        assert "ema_update(ema, model" in story


@pytest.mark.parametrize("f", SCRIPTS)
def test_no_argparse_internals(f):
    assert "_actions" not in source(f) and "typed_flags" not in source(f), f"{f}: use parse_flags"


def test_every_test_file_is_in_pytest_ini():
    """pytest.ini's testpaths lists the test files (the longest first, for two workers): a file left out would
    silently not run."""
    import configparser
    ini = configparser.ConfigParser()
    ini.read(os.path.join(HERE, "pytest.ini"))
    listed = ini["pytest"]["testpaths"].split()
    assert sorted(listed) == sorted(f for f in os.listdir(HERE) if f.startswith("test_") and f.endswith(".py"))


@pytest.mark.parametrize("f", SCRIPTS)
def test_no_line_over_100_characters(f):
    """A line a student must scroll sideways in a notebook cell, or parse twice, saves nothing."""
    long = [i + 1 for i, line in enumerate(source(f).splitlines()) if len(line) > 100 and "://" not in line]
    assert not long, f"{f}: lines over 100 characters: {long[:10]}{' ...' if len(long) > 10 else ''}"


def density(f):
    """Mean characters per non-blank line of the method section (after get_args, before main) and main()."""
    lines, defs = source(f).splitlines(), top_level_defs(f)
    method = lines[defs["get_args"][0].end_lineno:defs["main"][0].lineno - 1]
    main = lines[defs["main"][0].lineno - 1:defs["main"][0].end_lineno]
    return [sum(map(len, part)) / len(part) for part in ([x for x in p if x.strip()] for p in (method, main))]


@pytest.mark.parametrize("f", SCRIPTS)
def test_main_and_the_method_read_at_a_glance(f):
    """nanoGPT's training loop averages 48 characters a line; ours at most 65 (method) and 62 (main)."""
    method, main = density(f)
    assert method <= 65 and main <= 62, f"{f}: method {method:.1f}, main() {main:.1f} characters a line"


MAINS_PHASES = ("load_", "open_", "save_", "restore_", "plot_", "report_", "run_", "train_")


@pytest.mark.parametrize("f", TRAINING + ["edit.py"])
def test_a_method_function_needs_nothing_from_the_tail(f):
    """Each function above the Plumbing banner that a student would copy (the method: forward process,
    loss, sampler, guidance, EMA, edit.py's parts) names only what is defined above the banner, or
    standard torch. Not checked: main, get_args, and main's phases, which read or write the run's
    files and are named for it (MAINS_PHASES: load_, open_, save_, restore_, plot_, report_, ...)."""
    tree, start = ast.parse(source(f)), tail_start(f) + 1
    tail_names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.lineno > start}
    tail_names |= {t.id for n in tree.body if isinstance(n, ast.Assign) and n.lineno > start for t in n.targets
                   if isinstance(t, ast.Name)}
    for name, (node, _) in top_level_defs(f).items():
        if node.lineno > start or name in ("main", "get_args", "parse_flags") \
                or name.startswith(MAINS_PHASES):
            continue
        used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & tail_names
        assert not used, f"{f}: {name} calls the tail's {sorted(used)}: copied alone into a cell it fails"


# --- the method, pasted into cells: everything above the banner, run without the tail ------------------
def above_the_banner(f):
    """The script's text above the Plumbing banner exec'd alone, as a student's cells: its namespace."""
    ns = {"__name__": "cells"}
    exec(compile("\n".join(source(f).splitlines()[:tail_start(f)]), f"{f} (above the banner)", "exec"), ns)
    return ns


def train_step(m, model, loss):
    """loss.backward(), then the script's EMA update on a copy: the training step's pieces."""
    import copy
    import torch
    loss.backward()
    ema = copy.deepcopy(model).requires_grad_(False)
    m["ema_update"](ema, model, 0.999, 0)
    assert torch.isfinite(loss)


def exercise_ddpm(m, f):
    import torch
    sched, x0 = m["make_schedule"](10, "linear", "cpu"), torch.rand(4, 1, 28, 28)
    conditioned = "ddpm_loss_cfg" in m
    model = m["UNet"]((8, 8, 8), n_classes=11) if conditioned else m["UNet"]((8, 8, 8))
    y = torch.tensor([1, 2, 3, 4])
    loss = m["ddpm_loss_cfg"](model, x0, y, sched, 0.1) if conditioned else m["ddpm_loss"](model, x0, sched)
    train_step(m, model, loss)
    if conditioned:
        eps_fn = m["guided_eps_fn"](model, y, 5.0, sched, 0.5)
    else:
        def eps_fn(x, t):
            return model(x, torch.full((len(x),), t))
    path = []
    with torch.no_grad():
        x = m["sample"](eps_fn, torch.randn(4, 1, 28, 28), sched, "ddpm", None, torch.Generator(), path)
        assert len(path) == 11 and path[-1] is x
        x = m["sample"](eps_fn, torch.randn(4, 1, 28, 28), sched, "ddim", 3, None)
    if "prior_kl" in m:  # compare_schedules' measures of the schedule
        gap = m["start_gap"](x0, sched["alpha_bar"][-1])
        assert gap["prior_kl"] == m["prior_kl"](x0, sched["alpha_bar"][-1]) > 0 and gap["xT_proj"] > 0
    return x


def exercise_flow(m, f):
    import torch
    x1, y = torch.rand(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    model = m["UNet"]((8, 8, 8), n_classes=11) if f != "flow_time.py" else m["UNet"]((8, 8, 8))
    if f == "flow_time.py":
        loss = m["flow_loss"](model, x1, 1000.0)

        def u_fn(x, t):
            return m["velocity"](model, x, torch.full((len(x),), t), 1000.0)
    else:
        u_fn = m["guided_velocity_fn"](model, y, 5.0, 1000.0, 0.5)
        if f == "flow_class.py":
            loss = m["flow_loss_cfg"](model, x1, y, 1000.0, 0.1)
        else:  # reflow.py: its loss on pairs (x_0, x_1), and the pairs drawn by a teacher
            loss = m["reflow_loss"](model, torch.randn(4, 1, 28, 28), x1, y, 1000.0, "huber", "u")
            pairs = {"x0": torch.randn(4, 1, 28, 28), "y": y, "x1": torch.zeros(4, 1, 28, 28), "done": 0}
            m["draw_pairs"](pairs, lambda y: u_fn, 2, "cpu", lambda: None)
            assert pairs["done"] == 4 and pairs["x1"].abs().sum() > 0
    train_step(m, model, loss)
    path = []
    with torch.no_grad():
        x = m["flow_sample"](m["clip_x1"](u_fn), torch.randn(4, 1, 28, 28), "heun", 3, path)
    assert len(path) == 4 and m["count_nfe"]("heun", 3) == 5
    if "straightness" in m:
        assert m["straightness"](path).shape == (3,)
    return x


def exercise_denoise(m, f):
    import torch
    model, x = m["UnconditionalUNet"](8), torch.rand(4, 1, 28, 28)
    train_step({"ema_update": lambda *a: None}, model, m["denoise_loss"](model, x, 0.5, False))
    z = m["add_noise"](x, 0.5, torch.randn_like(x))
    return m["denoise"](model.eval(), z)


def exercise_edit(m, f):
    import torch
    sched, gen = m["make_schedule"](10, "linear", "cpu"), torch.Generator()
    model = m["UNet"]((8, 8, 8), n_classes=11).eval()
    eps_fn, x0 = m["digits_eps"](model, [3], 2, 5.0), torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        outs = [m["sdedit"](eps_fn, x0, 5, sched, 4, gen),
                m["inpaint"](eps_fn, x0, torch.rand(2, 1, 28, 28) > 0.5, sched, 4, gen),
                m["sample"](m["anagram_eps"](eps_fn, eps_fn, m["TRANSFORMS"]["flip"]), torch.randn(2, 1, 28, 28),
                            sched, "ddim", 4, None),
                m["sample"](m["hybrid_eps"](eps_fn, eps_fn, lambda e: m["gaussian_blur"](e, 1.0)),
                            torch.randn(2, 1, 28, 28), sched, "ddim", 4, None),
                m["slerp"](torch.randn(2, 1, 28, 28), torch.randn(2, 1, 28, 28), 0.5)]
        x_T = m["ddim_invert"](eps_fn, x0, sched, 4, 2)
    assert m["psnr_db"](outs[0], x0).isfinite().all() and x_T.shape == x0.shape
    return torch.cat(outs)


EXERCISE = {"ddpm_time.py": exercise_ddpm, "ddpm_class.py": exercise_ddpm, "compare_schedules.py": exercise_ddpm,
            "flow_time.py": exercise_flow, "flow_class.py": exercise_flow, "reflow.py": exercise_flow,
            "denoise_single_step.py": exercise_denoise, "edit.py": exercise_edit}


@pytest.mark.parametrize("f", sorted(EXERCISE))
def test_the_method_runs_without_the_tail(f):
    """Issue #37's copy-a-piece promise, run: the text above the banner alone (no die, no checkpoints, no
    plots) trains a step, updates the EMA and samples, on tiny tensors. A method function that reached
    into the tail would fail here with a NameError."""
    import torch
    torch.manual_seed(0)
    x = EXERCISE[f](above_the_banner(f), f)
    assert torch.isfinite(x).all()
