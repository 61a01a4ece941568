"""One command-line parser for every entry point.

The user guide mixes a positional Python config file, `--flag value`, `--flag=value`,
`--use_rewards true` and (upstream nanochat) dash spellings. argparse handles the last
three once each flag also answers to its dash spelling; this module adds the config
file, read with `ast` as literal assignments only (never exec'd). A config key is the name of a
flag (any spelling it answers to); unknown keys, non-literal values, values the flag's type or
choices reject all exit with a message naming the file. Config values are defaults, so flags
given after the file override them, and a required flag set in the file is no longer required.

    parser = ArgumentParser(description="...")
    parser.add_argument("--top_k", type=int, default=5, help="documents per query")
    parser.add_bool("--use_rewards", default=True, help="reward phase after warm-up")
    args = parser.parse_args()          # accepts: configs/x.py --top_k 3 --use-rewards=false
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

TRUE_WORDS = {"1", "true", "yes", "y", "on"}
FALSE_WORDS = {"0", "false", "no", "n", "off"}


def str2bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def read_config_file(path: str | Path) -> dict:
    """Literal assignments `name = value` from a Python file; anything else is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid Python: {e.msg}") from None
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{path}:{node.lineno}: only `name = literal` assignments are allowed in config files")
        try:
            values[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError as e:
            raise ValueError(f"{path}:{node.lineno}: {node.targets[0].id}: value is not a literal ({e})") from None
    return values


def _unusable_parent(path: Path) -> Path | None:
    """The first existing ancestor of path that is a file (so path can never be created), else None."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def output_dir(value: str) -> str:
    """argparse type of a directory an entry point fills: an existing file there is a one-line error."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} exists and is a file, not a directory")
    if (bad := _unusable_parent(path)) is not None:
        raise argparse.ArgumentTypeError(f"{value} cannot be created: {bad} is a file")
    return value


def output_file(value: str) -> str:
    """argparse type of a file an entry point writes: an existing directory there is a one-line error."""
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a directory, not a file")
    if (bad := _unusable_parent(path)) is not None:
        raise argparse.ArgumentTypeError(f"{value} cannot be created: {bad} is a file")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """argparse with dash/underscore aliases, true/false booleans, an optional config file, and errors on one
    line (`prog: error: ...`): the usage block is what --help is for."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def add_argument(self, *names, **kwargs):
        if names and all(n.startswith("--") for n in names):
            aliases = []
            for n in names:
                for alt in (n.replace("_", "-"), "--" + n[2:].replace("-", "_")):
                    if alt not in names and alt not in aliases:
                        aliases.append(alt)
            names = tuple(names) + tuple(aliases)
        return super().add_argument(*names, **kwargs)

    def add_bool(self, name: str, default: bool, help: str = ""):
        """`--flag`, `--flag true`, `--flag=false` all work."""
        return self.add_argument(name, type=str2bool, nargs="?", const=True, default=default,
                                 metavar="true|false", help=f"{help} (default: {str(default).lower()})")

    def parse_args(self, args=None, namespace=None):
        import sys
        argv = list(sys.argv[1:] if args is None else args)
        config_files = []
        while argv and not argv[0].startswith("-") and argv[0].endswith(".py"):
            config_files.append(argv.pop(0))
        for cfg in config_files:
            self._apply_config(cfg)
        ns = super().parse_args(argv, namespace)
        ns.config_files = config_files
        return ns

    def _apply_config(self, cfg: str) -> None:
        """Config values become defaults (so later flags override them); bad files exit with a message."""
        try:
            values = read_config_file(cfg)
        except (OSError, ValueError) as e:
            self.error(str(e))
        by_key = {}  # every spelling a flag answers to (top_k, top-k, n_layer for --depth/--n_layer) -> action
        for action in self._actions:
            for opt in action.option_strings:
                if opt.startswith("--"):
                    by_key[opt[2:].replace("-", "_")] = action
            by_key.setdefault(action.dest, action)
        unknown = sorted(k for k in values if k not in by_key or by_key[k].dest == "help")
        if unknown:
            self.error(f"{cfg}: unknown config key(s): {', '.join(unknown)} "
                       f"(each key must be the name of a flag of this command; see --help)")
        defaults = {}
        for key, value in values.items():
            action = by_key[key]
            self._check_config_value(cfg, key, action, value)
            action.required = False  # the config file provides it
            defaults[action.dest] = value
        self.set_defaults(**defaults)

    def _check_config_value(self, cfg, key, action, value):
        """Run the flag's own type/choices on the config value so `top_k = "five"` fails at once."""
        if value is None:
            return
        items = value if isinstance(value, list) and action.nargs in ("*", "+") else [value]
        for item in items:
            wrong_number = action.type in (int, float) and (
                isinstance(item, bool) or (action.type is int and isinstance(item, float)))
            try:
                if wrong_number:
                    raise ValueError(item)
                converted = action.type(item) if action.type is not None else item
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                self.error(f"{cfg}: {key} = {value!r}: not a valid {getattr(action.type, '__name__', 'value')}")
            if action.choices is not None and converted not in action.choices:
                self.error(f"{cfg}: {key} = {value!r}: must be one of {', '.join(map(str, action.choices))}")
