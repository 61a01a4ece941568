"""The README and docs/*.md name modules and files that exist, so the docs cannot drift from the tree.

Checked without importing anything (fast, and immune to an installed copy of the package elsewhere):
- every `python -m X` / `torchrun ... -m X`: X resolves to a file of this repo that runs something (a module with
  a `__main__` guard, or a package's __main__.py), or is an external tool on the allow-list;
- every dotted `nanochat.*` / `scripts.*` / `bench.*` reference: the module file exists, and a trailing name
  (`nanochat.engine.Engine`) is defined or imported at the top level of that module;
- every repo path (`nanochat/rag/raft.py`, `bench/gpu_check.sh`, `rules/`, ...): it exists;
- the README's "## Layout" file tree: every entry exists, and every module under nanochat/ has its line.
Old paths kept working by nanochat/_moved.py are still reported: the docs show the current layout.
"""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LOCAL_PACKAGES = ("nanochat", "scripts", "bench")
# modules run with -m in the docs that are not this repo's
EXTERNAL_MODULES = {"pip", "pytest", "snakemake", "torch.distributed.run", "venv", "http.server", "uvicorn", "dvc"}
# top-level folders whose paths the docs name
PATH_ROOTS = ("nanochat", "scripts", "bench", "tests", "workflow", "rules", "config", "configs", "docs", "profiles",
              "envs")

RUN_MODULE = re.compile(r"(?<![\w-])-m\s+([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?!\w|\.?<)")  # not `bench.<name>`
DOTTED = re.compile(r"(?<![\w./-])((?:%s)(?:\.[A-Za-z_]\w*)+)" % "|".join(LOCAL_PACKAGES))
REPO_PATH = re.compile(r"(?<![\w./~$-])((?:%s)/[\w./-]*)" % "|".join(PATH_ROOTS))
MAIN_GUARD = re.compile(r"""^if __name__ == ["']__main__["']:""", re.M)
TREE_LINE = re.compile(r"^((?:│   |    )*)(?:├── |└── )(\S+)")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file `python -m name` runs in this repo, or None."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_source(name: str, root: Path = ROOT) -> Path | None:
    """The file that defines module `name` (a package's __init__.py, or a namespace folder), or None."""
    base = root.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base if base.is_dir() else None


@lru_cache(maxsize=None)
def top_level_names(path: Path) -> frozenset[str]:
    """Names a module defines or imports at its top level (what `module.NAME` can reach)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return frozenset(names)


def check_run_module(name: str, root: Path = ROOT) -> str | None:
    if name.split(".")[0] not in LOCAL_PACKAGES:
        return None if name in EXTERNAL_MODULES else f"`python -m {name}`: not this repo's, and not on EXTERNAL_MODULES"
    path = module_file(name, root)
    if path is None:
        return f"`python -m {name}`: no {name.replace('.', '/')}.py or {name.replace('.', '/')}/__main__.py"
    if path.name != "__main__.py" and not MAIN_GUARD.search(path.read_text(encoding="utf-8")):
        return f"`python -m {name}`: {path.relative_to(root)} has no `if __name__ == \"__main__\":` (nothing would run)"
    return None


def check_dotted(ref: str, root: Path = ROOT) -> str | None:
    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        source = module_source(".".join(parts[:i]), root)
        if source is None:
            continue
        rest = parts[i:]
        if rest and (source.is_dir() or rest[0] not in top_level_names(source)):
            where = source.relative_to(root).as_posix()
            if source.is_dir() or source.name == "__init__.py":  # a package: `rest[0]` could have been a submodule
                return f"`{ref}`: no module {'.'.join(parts[:i + 1])}, and {where} defines or imports no `{rest[0]}`"
            return f"`{ref}`: {where} defines or imports no `{rest[0]}`"
        return None
    return f"`{ref}`: no such module"


def check_path(path: str, root: Path = ROOT) -> str | None:
    return None if (root / path.rstrip(".")).exists() else f"{path}: no such file or folder"


def layout_tree(text: str) -> list[str]:
    """Paths of the README's "## Layout" tree (the first fenced block of that section), folders ending in '/'."""
    section = re.split(r"^## Layout\b", text, maxsplit=1, flags=re.M)[1]
    section = re.split(r"^## ", section, maxsplit=1, flags=re.M)[0]
    block = section.split("```", 2)[1]
    paths, stack = [], []
    for line in block.splitlines():
        m = TREE_LINE.match(line)
        if not m:
            continue
        depth = len(m.group(1)) // 4
        del stack[depth:]
        stack.append(m.group(2))
        paths.append("/".join(s.rstrip("/") for s in stack) + ("/" if m.group(2).endswith("/") else ""))
    return paths


def problems_in(text: str, root: Path = ROOT) -> list[str]:
    problems = [check_run_module(m, root) for m in RUN_MODULE.findall(text)]
    problems += [check_dotted(m, root) for m in DOTTED.findall(text)]
    problems += [check_path(m, root) for m in REPO_PATH.findall(text)]
    return sorted({p for p in problems if p})


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_module_and_path_a_doc_names_exists(doc):
    text = doc.read_text(encoding="utf-8")
    assert RUN_MODULE.search(text) or REPO_PATH.search(text), f"{doc.name}: the extractor found nothing to check"
    problems = problems_in(text)
    assert not problems, f"{doc.relative_to(ROOT)} names what is not in the tree:\n" + "\n".join(problems)


def test_the_readme_layout_tree_matches_the_tree():
    paths = layout_tree((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(paths) > 80 and "nanochat/retrieval/registry.py" in paths  # the parser really read the tree
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"README.md's Layout lists what does not exist: {missing}"
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "nanochat").rglob("*.py")
               if p.name != "__init__.py" and "__pycache__" not in p.parts}
    unlisted = sorted(modules - set(paths))
    assert not unlisted, f"modules without a line in README.md's Layout tree (add one): {unlisted}"


def test_the_checker_reports_made_up_names():
    """The checks can fail: a made-up module, file, attribute and tree entry are each reported."""
    text = ("python -m nanochat.no_such_stage --help\n"
            "torchrun --standalone -m scripts.no_such_finetune\n"
            "see `nanochat/rag/no_such_file.py` and `scripts/no_such.py`\n"
            "`nanochat.engine.NoSuchEngine`, `nanochat.no_such_module.f`\n"
            "python -m nanochat.precompute --help\n"  # an old path: works through _moved.py, but is not the layout
            "python -m nanochat.rag.raft --help\n"  # a module with no command line
            "python -m pytest -q && python -m torch.distributed.run -m nanochat.retrieval\n")
    problems = problems_in(text)
    for bad in ("nanochat.no_such_stage", "scripts.no_such_finetune", "nanochat/rag/no_such_file.py",
                "scripts/no_such.py", "NoSuchEngine", "nanochat.no_such_module.f", "nanochat.precompute",
                "nanochat/rag/raft.py has no"):
        assert any(bad in p for p in problems), (bad, problems)
    assert not any("pytest" in p or "torch" in p or "`python -m nanochat.retrieval`" in p for p in problems), problems
    tree = "## Layout\n\n```\n.\n├── nanochat/\n│   ├── gpt.py\n│   └── made_up.py\n└── README.md\n```\n"
    paths = layout_tree(tree)
    assert paths == ["nanochat/", "nanochat/gpt.py", "nanochat/made_up.py", "README.md"]
    assert [p for p in paths if not (ROOT / p).exists()] == ["nanochat/made_up.py"]
