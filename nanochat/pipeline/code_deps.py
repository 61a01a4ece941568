"""A rule's code dependencies: every source file of this repo that its entry module can import.

Rules track library code as inputs (`code=code_of(...)` in rules/*.smk), so that editing a module re-runs
the jobs that execute it, in Snakemake (mtime) and in `dvc repro` (the dvc.yaml deps). The list is the
import closure of the rule's entry points, found by reading the source (ast), never by importing it:

- `import a.b`, `from a.b import c` (c a submodule or a name), relative imports, imports inside functions;
- parent packages: importing a.b.c runs a/__init__.py and a/b/__init__.py first;
- a string that is exactly a module name of this repo ("nanochat.retrieval.bm25" in a registry,
  "scripts.rag_eval" in a workflow wrapper's call_main) is a lazy import and counts too;
- old module paths are followed through the alias table in nanochat/_moved.py to the real module.

Only this repo's packages (nanochat, scripts) are followed. A name under them that resolves to no module
is an error naming the file and line, not a silent skip: a rule never loses track of its code.
"""
from __future__ import annotations

import ast
import functools
import os
import re
from pathlib import Path

LOCAL_PACKAGES = ("nanochat", "scripts")
MOVED_TABLE = Path("nanochat/_moved.py")  # its strings are aliases to resolve through, not dependencies
_MODULE_STRING = re.compile(rf"(?:{'|'.join(LOCAL_PACKAGES)})(?:\.[A-Za-z_]\w*)+")


class UnknownModuleError(ImportError):
    """A module of this repo named by a rule or an import does not exist."""


def _is_local(name: str) -> bool:
    return name.split(".")[0] in LOCAL_PACKAGES


def _bound_names(body) -> tuple[set[str], bool]:
    """Top-level names a module body binds, and whether it can bind more dynamically (`*` import, __getattr__)."""
    names, dynamic = set(), False
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            dynamic |= node.name == "__getattr__"
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                dynamic |= alias.name == "*"
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With)):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [item.optional_vars for item in node.items if item.optional_vars] if isinstance(node, ast.With) else \
                [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        for block in ("body", "orelse", "finalbody", "handlers"):  # if / try / with / for blocks
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and hasattr(node, block):
                more, dyn = _bound_names(getattr(node, block))
                names |= more
                dynamic |= dyn
    return names, dynamic


class CodeGraph:
    """Modules and files of one checkout; parses each file once."""

    def __init__(self, root):
        self.root = Path(root).resolve()
        table = self.root / MOVED_TABLE
        self.moved = self._moved_table(table) if table.is_file() else {}
        self._parsed: dict[Path, ast.Module] = {}
        self._deps: dict[Path, frozenset[Path]] = {}

    @staticmethod
    def _moved_table(path: Path) -> dict[str, str]:
        for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "MOVED" for t in node.targets):
                return ast.literal_eval(node.value)
        return {}

    def _parse(self, path: Path) -> ast.Module:
        if path not in self._parsed:
            self._parsed[path] = ast.parse(path.read_text(encoding="utf-8"), str(path))
        return self._parsed[path]

    def _location(self, name: str):
        """(directory, file) of a module: a package has its directory (and __init__.py unless a namespace package)."""
        name = self.moved.get(name, name)
        path = self.root.joinpath(*name.split("."))
        if path.is_dir() and name.split(".")[-1] != "__main__":
            init = path / "__init__.py"
            return path, init if init.is_file() else None
        if path.with_suffix(".py").is_file():
            return None, path.with_suffix(".py")
        return None

    def is_module(self, name: str) -> bool:
        return _is_local(name) and self._location(name) is not None

    def files_of(self, name: str, where: str = "") -> list[Path]:
        """Files Python runs to import `name`: each parent package's __init__.py, then the module itself."""
        name = self.moved.get(name, name)
        parts = name.split(".")
        files = []
        for i in range(1, len(parts) + 1):
            location = self._location(".".join(parts[:i]))
            if location is None:
                raise UnknownModuleError(f"{where or 'code_of'}: no module named '{name}' in {self.root} "
                                         f"('{'.'.join(parts[:i])}' not found)")
            if location[1] is not None:
                files.append(location[1])
        return files

    def _module_name(self, path: Path) -> str | None:
        rel = path.relative_to(self.root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        return ".".join(parts) if parts and _is_local(parts[0]) else None

    def _absolute(self, path: Path, node: ast.ImportFrom) -> str:
        """The module an ImportFrom names, with relative imports resolved against the file's package."""
        if not node.level:
            return node.module
        name = self._module_name(path)
        if name is None:
            raise UnknownModuleError(f"{path}:{node.lineno}: relative import outside the packages {LOCAL_PACKAGES}")
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        if node.level - 1 > len(package) - 1:
            raise UnknownModuleError(f"{path}:{node.lineno}: relative import beyond the top-level package")
        package = package[:len(package) - (node.level - 1)]
        return ".".join(package + ([node.module] if node.module else []))

    def _check_name(self, package: str, name: str, where: str) -> None:
        """`from package import name`: name is a submodule or something its __init__.py binds."""
        directory, init = self._location(package)
        if directory is None:
            return  # a plain module: names are attributes, its own tests catch a wrong one
        bound, dynamic = _bound_names(self._parse(init).body) if init else (set(), False)
        if name not in bound and not dynamic:
            raise UnknownModuleError(f"{where}: '{package}' has no submodule or name '{name}'")

    def deps(self, path: Path) -> frozenset[Path]:
        """Files of this repo that one file imports directly (statically, lazily or through an alias)."""
        if path in self._deps:
            return self._deps[path]
        found: set[Path] = set()
        rel = os.path.relpath(path, self.root)
        for node in ast.walk(self._parse(path)):
            if not isinstance(node, (ast.Import, ast.ImportFrom, ast.Constant)):
                continue
            where = f"{rel}:{node.lineno}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if _is_local(alias.name):
                        found.update(self.files_of(alias.name, where))
            elif isinstance(node, ast.ImportFrom):
                module = self._absolute(path, node)
                if not _is_local(module):
                    continue
                found.update(self.files_of(module, where))
                for alias in node.names:
                    if alias.name == "*":
                        continue
                    sub = f"{module}.{alias.name}"
                    if self.is_module(sub):
                        found.update(self.files_of(sub, where))
                    else:
                        self._check_name(self.moved.get(module, module), alias.name, where)
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.fullmatch(node.value)
                  and path != self.root / MOVED_TABLE and self.is_module(node.value)):
                found.update(self.files_of(node.value, where))
        self._deps[path] = frozenset(found - {path})
        return self._deps[path]

    def entry_files(self, entry: str) -> list[Path]:
        """What running one entry executes first: a .py file itself, or `python -m <module>` (a package runs
        its __init__.py and __main__.py)."""
        if entry.endswith(".py"):
            path = (self.root / entry).resolve()
            if not path.is_file():
                raise UnknownModuleError(f"code_of: no file {entry} in {self.root}")
            return [path]
        if not _is_local(entry):
            raise UnknownModuleError(f"code_of: '{entry}' is not a module of this repo ({', '.join(LOCAL_PACKAGES)})")
        files = self.files_of(entry)
        directory, _ = self._location(entry)
        if directory is not None:
            main = directory / "__main__.py"
            if not main.is_file():
                raise UnknownModuleError(f"code_of: package '{entry}' has no __main__.py to run")
            files.append(main)
        return files

    def closure(self, *entries: str) -> list[Path]:
        """Every file the entries execute or can import, sorted."""
        todo = [f for e in entries for f in self.entry_files(e)]
        seen: set[Path] = set()
        while todo:
            path = todo.pop()
            if path not in seen:
                seen.add(path)
                todo.extend(self.deps(path) - seen)
        return sorted(seen)


@functools.cache
def _graph(root: str) -> CodeGraph:
    return CodeGraph(root)


@functools.cache
def _closure(root: str, entries: tuple[str, ...]) -> tuple[Path, ...]:
    return tuple(_graph(root).closure(*entries))


def code_of(root, *entries: str, cache=None) -> list[str]:
    """Source files (relative to the working directory when under it) that a rule's entries run.

    An entry is a dotted module run as `python -m` ("scripts.rag_finetune", "nanochat.pipeline"), or a .py
    file relative to root (a workflow wrapper script, whose call_main("module", ...) string is followed).
    Cached per process: a DAG with many jobs parses each file once; and, given a plan_cache.PlanCache (keyed by
    the source files' fingerprint), across processes: planning re-parses only after an edit.
    """
    if not entries:
        raise ValueError("code_of needs at least one entry module or script")
    root = Path(root).resolve()
    find = lambda: [str(p.relative_to(root)) for p in _closure(str(root), tuple(entries))]  # noqa: E731
    files = cache.get(f"code_of:{' '.join(entries)}", find) if cache is not None else find()
    cwd = Path.cwd().resolve()
    return [str(p.relative_to(cwd)) if p.is_relative_to(cwd) else str(p) for p in (root / f for f in files)]
