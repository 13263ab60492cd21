"""Every verb's help renders, whole: run as the real command for every verb and sub-verb the app itself lists.

Typer's Rich markup mode parsed square brackets in help text as tags: ``run --help`` crashed on "[/VERSION]" and
"[train]" or "[[camera]]" vanished from other verbs' help. The app now renders plain help; these tests fail on a
traceback, a non-zero exit, a lost piece of any help string (bracketed text named explicitly), a missing default,
or a flag shown as taking a value.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest
import typer.main
from conftest import run_cli

from skipgan_edge import __version__
from skipgan_edge.cli import app


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, command) for the root, every verb and every sub-verb, discovered from the app."""
    out = [(path, cmd)]
    for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
        out += _commands(sub, (*path, name))
    return out


ROOT = typer.main.get_command(app)
COMMANDS = _commands(ROOT)
#: text in square brackets, single or double: "[train]", "[[camera]]", "[/VERSION]", "[user:pass@]"
BRACKETED = re.compile(r"\[\[[^\[\]]*\]\]|\[[^\[\]]*\]")


def _squeeze(text: str) -> str:
    """Text with all white space removed: help is re-wrapped (and hyphenated words broken) to the terminal's width."""
    return re.sub(r"\s+", "", text)


def _help_texts(cmd: Any) -> list[str]:
    return [t for t in [cmd.help or "", *(getattr(p, "help", None) or "" for p in cmd.params)] if t]


def test_the_app_has_every_verb() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    # the discovery itself must find the verbs (a broken walk would make every test below vacuous)
    assert {"train", "run", "serve", "threshold", "data synthetic", "triton-serve"} <= names, names
    assert len(COMMANDS) >= 17


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "skipgan-edge")
def test_help_renders_whole(path: tuple[str, ...]) -> None:
    cmd = dict(COMMANDS)[path]
    for flag in ("--help", "-h"):
        p = run_cli(*path, flag, check=False, timeout=120)
        assert p.returncode == 0, (path, flag, p.stdout, p.stderr)
        assert "Traceback" not in p.stdout + p.stderr and "Error" not in p.stderr, p.stderr
        assert p.stdout.startswith("Usage:"), p.stdout[:200]
    out = p.stdout
    flat = _squeeze(out)
    texts = _help_texts(cmd)
    bracketed = [b for t in texts for b in BRACKETED.findall(t)]
    for b in bracketed:  # named on its own: this is what Rich markup ate
        assert _squeeze(b) in flat, f"{' '.join(path)} --help lost {b!r}"
    for t in texts:
        assert _squeeze(t) in flat, f"{' '.join(path)} --help lost text of {t[:60]!r}"
    assert "<bool>" not in out, out
    for param in cmd.params:
        opts = [o for o in getattr(param, "opts", []) if o.startswith("--")]
        if not opts or opts[0] in ("--help",):
            continue
        if getattr(param, "is_flag", False):  # a plain flag: no value after it
            assert not re.search(re.escape(opts[0]) + r"\s+<", out), f"{opts[0]} reads as taking a value"
        elif param.default is not None and not callable(param.default):
            assert _squeeze(f"[default: {param.default}]") in flat, f"{' '.join(path)} {opts[0]}: no default shown"


def test_every_option_of_every_verb_has_help() -> None:
    """Walk the command tree the app builds: every option and argument of the root, every verb and every sub-verb says
    in its help what it does (an option without help shows only its name and type in --help)."""
    checked, bare = 0, []
    for path, cmd in COMMANDS:
        for param in cmd.params:
            checked += 1
            if not (getattr(param, "help", None) or "").strip():
                bare.append(f"{' '.join(path) or 'skipgan-edge'} {'/'.join(param.opts)}")
    assert checked >= 100, checked  # the walk reached the verbs' options (a broken walk would pass vacuously)
    assert not bare, f"options without help text: {bare}"


def test_brackets_that_rich_markup_ate_are_there() -> None:
    """The reported cases, by name."""
    assert "[/VERSION]" in run_cli("run", "--help").stdout
    assert "[train]" in run_cli("train", "--help").stdout
    assert "[[camera]]" in run_cli("serve", "--help").stdout
    assert "[user:pass@]" in run_cli("run", "-h").stdout


def test_train_shows_the_config_defaults_and_the_recovery_options() -> None:
    out = _squeeze(run_cli("train", "-h").stdout)
    from skipgan_edge.config import TrainConfig

    t = TrainConfig()
    for opt, value in (("--batch", t.batch), ("--epochs", t.epochs), ("--max-recoveries", t.max_recoveries),
                       ("--recover-lr-factor", t.recover_lr_factor), ("--lr", t.lr)):
        assert re.search(re.escape(opt) + r"<[a-z]+>.*?\[default:" + re.escape(str(value)) + r"\]", out), opt
    from skipgan_edge.thresholds import AUTO_UNLABELLED  # the help says it as text: importing it would load numpy at start-up

    assert f"auto(f1withlabelledvalidationanomalies,else{AUTO_UNLABELLED})" in out, out


def test_version_and_h_work_alone() -> None:
    p = run_cli("--version")
    assert p.stdout.strip() == f"skipgan-edge {__version__}" and p.returncode == 0
    p = run_cli("--version", "run")  # eager: before the verb's own checks
    assert p.stdout.strip() == f"skipgan-edge {__version__}"
    p = run_cli("-h")
    assert p.stdout.startswith("Usage:") and "Commands:" in p.stdout and "run" in p.stdout
    p = run_cli("-v")  # options only: the help, not "Missing command"
    assert p.returncode == 0 and "Commands:" in p.stdout, p.stderr
    assert sys.executable


def test_doctor_columns_line_up() -> None:
    """doctor's package table: every row's description starts in the same column, whatever the versions' lengths."""
    p = run_cli("doctor")
    names = ("torch", "onnxruntime", "onnx", "openvino", "tensorrt", "pycuda")
    rows = [line for line in p.stdout.splitlines() if any(line.startswith(f"{n:17s} ") for n in names)]
    assert len(rows) == 6, p.stdout
    whats = ("training", "the ONNX Runtime", "export;", "the OpenVINO", "engine build", "CUDA buffers")
    starts = {line.index(what) for line, what in zip(rows, whats)}
    assert len(starts) == 1, rows
