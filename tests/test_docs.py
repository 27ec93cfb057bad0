"""The documents name only files that exist, and nothing in the repository points outside it.

Documents: README.md, docs/*.md, the comments of the configs, the docstrings of lit_mnist/ and
benchmarks/, and the notebooks' Markdown cells.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from helpers import REPO

from lit_mnist.__main__ import main

#: Top-level folders whose paths the documents name (``data/`` is left out: the README's layout
#: names ``data/loader.py`` relative to ``lit_mnist/``).
TOP = ("configs", "docs", "benchmarks", "notebooks", "lit_mnist", "tests")
#: A repository path: one of ``TOP``, a slash, then path characters. Not preceded by a path
#: character, so ``../configs/x`` (a relative link, checked as such) and URLs do not match.
PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(TOP)})/[\w./*<>…{{}}-]*)")
#: The target of a Markdown link or image: ``[text](target)``.
LINK = re.compile(r"\]\(([^)\s]+)\)")
#: Written as two pieces so that this file does not contain what it looks for.
OUTSIDE = ("../" + "shared", "/work/" + "shared")


def named_paths(text: str) -> list[str]:
    """The repository paths ``text`` names: files (``configs/mlp.yaml``) and folders (``docs/``).

    Placeholders (``configs/<model>.yaml``, ``configs/trainer/*.yaml``, ``….py``, ``{epoch}``) are
    left out, and so is a word pair without an extension or a final slash (``lit_mnist/Keras``).
    """
    paths = []
    for match in PATH.findall(text):
        path = match.rstrip(".,;:")
        if any(mark in path for mark in "<*…{") or not (path.endswith("/") or "." in path.rsplit("/", 1)[1]):
            continue
        paths.append(path)
    return paths


def link_targets(text: str) -> list[str]:
    """The local targets of ``text``'s Markdown links, without their ``#anchor``."""
    targets = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http://, https://, mailto: or an anchor in the same page
        targets.append(target.split("#", 1)[0])
    return targets


def docstrings(path: Path) -> str:
    """Every docstring of a Python file (module, classes, functions), one after the other."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [
        tree,
        *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)),
    ]
    return "\n".join(doc for node in nodes if (doc := ast.get_docstring(node)))


def comments(path: Path) -> str:
    """The comments of a YAML config or a shell script (from ``#`` to the end of the line)."""
    return "\n".join(
        line.split("#", 1)[1] for line in path.read_text(encoding="utf-8").splitlines() if "#" in line
    )


def markdown_cells(path: Path) -> str:
    """The text of a notebook's Markdown cells."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")


def git(*args: str) -> subprocess.CompletedProcess:
    """A git command run in the repository; the test is skipped when this is not a git checkout."""
    try:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    except OSError:
        pytest.skip("git is not installed")
    if result.returncode > 1:
        pytest.skip(f"not a git checkout: {result.stderr.strip()}")
    return result


def exists(path: str, base: Path = REPO) -> bool:
    """The path exists in the checkout, or is one that running the project creates (git-ignored)."""
    full = (base / path).resolve()
    if full.exists():
        return True
    if not full.is_relative_to(REPO):
        return False
    relative = str(full.relative_to(REPO))
    return any(
        git("check-ignore", "--no-index", "-q", name).returncode == 0 for name in (relative, f"{relative}/")
    )


def missing(text: str, base: Path = REPO) -> list[str]:
    """Paths and local link targets in ``text`` that do not exist (links relative to ``base``)."""
    names = {p for p in named_paths(text) if not exists(p)}
    return sorted(names | {t for t in link_targets(text) if not exists(t, base)})


def documents() -> list[tuple[str, str, Path]]:
    """(name, text, folder its links are relative to) of every document the check covers."""
    docs = [("README.md", (REPO / "README.md").read_text(encoding="utf-8"), REPO)]
    docs += [
        (f"docs/{p.name}", p.read_text(encoding="utf-8"), p.parent)
        for p in sorted((REPO / "docs").glob("*.md"))
    ]
    configs = sorted([*(REPO / "configs").rglob("*.yaml"), *(REPO / "configs").rglob("*.sbatch")])
    docs += [(str(p.relative_to(REPO)), comments(p), REPO) for p in configs]
    code = sorted([*(REPO / "lit_mnist").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")])
    code = [p for p in code if not any(part.startswith(".") for part in p.relative_to(REPO).parts)]  # venvs
    docs += [(str(p.relative_to(REPO)), docstrings(p), REPO) for p in code]
    docs += [
        (str(p.relative_to(REPO)), markdown_cells(p), p.parent)
        for p in sorted((REPO / "notebooks").glob("*.ipynb"))
    ]
    return docs


DOCUMENTS = documents()


@pytest.mark.parametrize(("name", "text", "base"), DOCUMENTS, ids=[name for name, _, _ in DOCUMENTS])
def test_named_files_exist(name, text, base):
    assert missing(text, base) == [], f"{name} names files that are not in the repository"


def test_the_check_finds_a_missing_file_and_skips_placeholders():
    text = (
        "Train with `configs/mlp.yaml`, then `configs/no_such_model.yaml`; see [the notes](docs/porting.md#top),\n"
        "[a lost page](docs/lost.md), configs/<model>.yaml, configs/trainer/*.yaml, benchmarks/keras/….py,\n"
        "https://example.org/lit_mnist/nothing.py, lit_mnist/Keras ratios, tests/test_docs.py and lit_mnist/nowhere/."
    )
    assert missing(text) == ["configs/no_such_model.yaml", "docs/lost.md", "lit_mnist/nowhere/"]


def test_no_tracked_file_points_outside_the_repository():
    offenders = []
    for name in git("ls-files").stdout.splitlines():
        if name.startswith(".ci/") or not (REPO / name).is_file():
            continue
        data = (REPO / name).read_bytes()
        offenders += [f"{name}: {needle}" for needle in OUTSIDE if needle.encode() in data]
    assert offenders == []


def readme_commands(text: str) -> list[list[str]]:
    """The ``python -m lit_mnist …`` commands of ``text``'s fenced bash blocks, as argument lists.

    Continuation lines (a trailing backslash) are joined and comments dropped.
    """
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:3] == ["python", "-m", "lit_mnist"]:
                commands.append(words[3:])
    return commands


def test_readme_commands_are_found():
    text = "```bash\npython -m lit_mnist fit --config a.yaml \\\n    --x 1   # note\nls\n```\n"
    assert readme_commands(text) == [["fit", "--config", "a.yaml", "--x", "1"]]


@pytest.mark.parametrize("command", readme_commands((REPO / "README.md").read_text()), ids=" ".join)
def test_readme_command_parses(command: list[str], capsys: pytest.CaptureFixture) -> None:
    """Every command the README shows is accepted as written (``--print_config`` stops after parsing)."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err[-3000:]
