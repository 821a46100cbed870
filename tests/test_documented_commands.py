"""Every shell command of README.md and docs/*.md runs as written: the library's own
commands parse with the CLI's parser, scripts parse with theirs, ``python -m`` and
``torchrun -m`` name modules that run, and the repository files they read exist."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from captum_influence_patterns.cli import CliError, build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")))
SHELL = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: Folders of the repository: a path argument under one of them must exist...
REPOSITORY = ("docs", "results", "benchmarks", "scripts", "tutorials")
#: ...unless an option that names an output precedes it.
OUTPUTS = {"-o", "--output", "--out", "--results", "--json", "--static", "--summary",
           "--plot"}
#: Programs that are not this repository's (installers, shells, other tools).
OTHERS = {"pip", "python3", "export", ".", "huggingface-cli", "printf", "bash"}


def commands(page: str) -> Iterator[Tuple[str, List[str]]]:
    """``(where, words)`` of every command of the page's shell blocks."""
    text = (ROOT / page).read_text(encoding="utf-8")
    for block in SHELL.finditer(text):
        line = text[: block.start()].count("\n") + 2
        joined = block.group(1).replace("\\\n", " ")
        for number, source in enumerate(joined.splitlines()):
            words = shlex.split(source, comments=True)
            while words:
                end = words.index("&&") if "&&" in words else len(words)
                yield f"{page}, block at line {line}, line {number + 1}", words[:end]
                words = words[end + 1 :]


ALL = [(where, words) for page in PAGES for where, words in commands(page)]


def _environment_removed(words: List[str]) -> List[str]:
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words = words[1:]
    return words


def _check_cli(where: str, arguments: List[str]) -> None:
    try:
        build_parser().parse_args(arguments)
    except (CliError, SystemExit) as error:
        pytest.fail(f"{where}: {shlex.join(arguments)}: {error}")


def _runnable_module(name: str) -> bool:
    """A package with a ``__main__`` or a module with a main block."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f"{name}.__main__") is not None
    source = Path(spec.origin).read_text(encoding="utf-8") if spec.origin else ""
    return 'if __name__ == "__main__"' in source


def _check_script(where: str, path: str, arguments: List[str]) -> None:
    script = ROOT / path
    assert script.is_file(), f"{where}: {path} does not exist"
    sys.path.insert(0, str(script.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"_doc_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(script.parent))
    try:
        module.build_parser().parse_args(arguments)
    except SystemExit as error:
        pytest.fail(f"{where}: {path} {shlex.join(arguments)}: exit {error.code}")


def _check_files(where: str, words: List[str]) -> None:
    for before, word in zip([""] + words, words):
        if before in OUTPUTS or word.startswith("-"):
            continue
        if word.split("/")[0] in REPOSITORY and "/" in word:
            assert (ROOT / word).exists(), f"{where}: {word} is not in the repository"


@pytest.mark.parametrize(
    "where, words", ALL, ids=[f"{w} {' '.join(c)[:40]}" for w, c in ALL]
)
def test_documented_command_runs_as_written(where: str, words: List[str]) -> None:
    words = _environment_removed(words)
    if not words or words[0] in OTHERS:
        return
    program, arguments = words[0], words[1:]
    _check_files(where, words)
    if program == "captum-influence-patterns":
        _check_cli(where, arguments)
        return
    if program == "torchrun":  # torchrun [options] -m MODULE ARGS
        assert "-m" in arguments, f"{where}: torchrun without -m"
        program, arguments = "python", arguments[arguments.index("-m") :]
    assert program == "python", f"{where}: unknown program {program}"
    if arguments[0] == "-c":
        return
    if arguments[0] == "-m":
        module, arguments = arguments[1], arguments[2:]
        assert _runnable_module(module), f"{where}: python -m {module} runs nothing"
        if module.startswith("captum_influence_patterns"):
            assert module == "captum_influence_patterns", f"{where}: not a command"
        if module == "captum_influence_patterns":
            _check_cli(where, arguments)
        return
    _check_script(where, arguments[0], arguments[1:])


def test_the_pages_have_commands() -> None:
    """The parser above finds the commands (a broken regex would pass everything)."""
    programs = {_environment_removed(words)[0] for _, words in ALL}
    assert {"captum-influence-patterns", "torchrun", "python"} <= programs
    assert len(ALL) > 40


def test_a_library_module_run_as_a_command_does_not_exit_0() -> None:
    """``python -m captum_influence_patterns.paper.evaluation evaluate ...`` (the
    old scale-out line) says where the command is, and fails."""
    done = subprocess.run(
        [sys.executable, "-m", "captum_influence_patterns.paper.evaluation",
         "evaluate", "--tasks", "all"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0
    assert "python -m captum_influence_patterns evaluate" in done.stderr
