"""The README and the pages of ``docs/`` stay honest: a short front page, links that resolve, commands that fit the CLI.

Fast and offline: nothing is trained, nothing is imported beyond ``monai_shpeft`` itself. The command lines are read
from the sources that define them: the argparse parsers of ``monai_shpeft/<package>/__main__.py`` and the MONAI
functions ``python -m monai.bundle`` exposes through python-fire (``monai/bundle/__main__.py`` and
``monai/bundle/scripts.py``). Importing those modules would load torch and MONAI (5-8 s on 2 cores), so their
definitions are read with :mod:`ast` instead; a module whose command line cannot be read that way fails the test.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shlex
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
BUNDLES = REPO / "bundles"
#: the configs a bundle made by ``python -m monai_shpeft.zoo new_bundle`` is rendered from
TEMPLATES = REPO / "monai_shpeft" / "zoo" / "templates"
MAX_README_LINES = 250
#: files a page may link before they are committed; remove an entry once its file is in the repository
PENDING_FILES: set[Path] = set()
#: argparse actions that take no value
FLAG_ACTIONS = {"store_true", "store_false", "store_const", "append_const", "count", "help", "version"}
#: placeholders the pages use for "the other knobs as before"
ELLIPSIS = "..."


def doc_files() -> list[Path]:
    """README.md, CONTRIBUTING.md and the Markdown pages of docs/ (not the result files under docs/benchmarks/)."""
    return [README, REPO / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# --- Markdown ---------------------------------------------------------------------------------------------------


@dataclass
class Block:
    """A fenced code block: its info string, its lines and the line number of its first line."""

    lang: str
    lines: list[str]
    line: int


def split_markdown(text: str) -> tuple[list[Block], str]:
    """The fenced code blocks of ``text`` and the prose left (code blocks blanked, line count kept)."""
    blocks: list[Block] = []
    prose: list[str] = []
    current: Block | None = None
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^ {0,3}(```+|~~~+)\s*([\w+-]*)", line)
        if current is None and fence:
            current = Block(fence.group(2).lower(), [], number + 1)
            prose.append("")
        elif current is not None and re.match(r"^ {0,3}(```+|~~~+)\s*$", line):
            blocks.append(current)
            current = None
            prose.append("")
        elif current is not None:
            current.lines.append(line)
            prose.append("")
        else:
            prose.append(line)
    assert current is None, f"a code block opened at line {current.line - 1} is never closed"
    return blocks, "\n".join(prose)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, markup and punctuation dropped, lowercase, spaces to ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor GitHub makes for the headings of a Markdown text (repeated headings get ``-1``, ``-2``...)."""
    _, prose = split_markdown(text)
    seen: dict[str, int] = {}
    result = set()
    for line in prose.splitlines():
        match = re.match(r"^ {0,3}#{1,6} +(.*?)(?: +#+)? *$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        result.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return result


def links(text: str) -> list[str]:
    """The targets of the Markdown links and images of a text, outside code blocks and code spans."""
    _, prose = split_markdown(text)
    prose = re.sub(r"`[^`]*`", "", prose)
    return re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)


def link_problems(page: Path, text: str | None = None) -> list[str]:
    """What is wrong with the relative links of one page: a missing file or folder, an anchor without heading."""
    text = page.read_text(encoding="utf-8") if text is None else text
    problems = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        if not path_part:
            if anchor not in anchors(text):
                problems.append(f"{rel(page)}: link to {target}: no heading of the page has that anchor")
            continue
        if not path.exists():
            if path in PENDING_FILES:
                warnings.warn(f"{rel(page)} links {target}, which is not committed yet", stacklevel=2)
            else:
                problems.append(f"{rel(page)}: link to {target}: {rel(path)} does not exist")
            continue
        if anchor:
            if path.suffix != ".md" or not path.is_file():
                problems.append(f"{rel(page)}: link to {target}: an anchor into something that is not a page")
            elif anchor not in anchors(path.read_text(encoding="utf-8")):
                problems.append(f"{rel(page)}: link to {target}: {rel(path)} has no heading with anchor #{anchor}")
    return problems


# --- shell commands in code blocks ------------------------------------------------------------------------------


def strip_comment(line: str) -> str:
    """``line`` without its shell comment: a ``#`` outside quotes at the start of a word (``a#b`` is a word)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


#: the first words of the shell lines read: python commands and what moves them into another folder
SHELL_WORDS = re.compile(r"^\s*(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:python3?|torchrun|cd|unzip)\s")


def shell_commands(block: Block) -> list[list[str]]:
    """The simple commands of a shell code block, as argv lists (``&&``, ``;`` and ``|`` split commands).

    Only lines that start with ``python``, ``torchrun``, ``cd`` or ``unzip`` are read: a diagram or an output in an
    unmarked block is not shell.
    """
    logical: list[str] = []
    pending = ""
    for line in block.lines:
        line = strip_comment(line).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    logical.append(pending)
    commands = []
    for line in logical:
        if not SHELL_WORDS.match(line + " "):
            continue
        words = shlex.split(line)
        current: list[str] = []
        for word in words:
            if word in {"&&", "||", ";", "|"}:
                commands.append(current)
                current = []
            else:
                current.append(word)
        commands.append(current)
    return [command for command in commands if command]


@dataclass(frozen=True)
class Folder:
    """Where a documented command runs: the repository root, a bundle's folder, or a folder ``new_bundle`` made."""

    bundle: str | None = None
    new: bool = False

    def resolve(self, path: str) -> Path:
        if self.bundle is None:
            return REPO / path
        if self.new:  # a bundle made from the template: its configs/ are the template's files
            return TEMPLATES / path.removeprefix("configs/") if path.startswith("configs/") else REPO / "-missing-"
        return BUNDLES / self.bundle / path

    def __str__(self) -> str:
        return "the repository root" if self.bundle is None else f"the folder of bundle {self.bundle}"


@dataclass(frozen=True)
class Command:
    """A documented ``python -m <module> ...`` command and where it runs."""

    module: str
    argv: tuple[str, ...]
    folder: Folder
    where: str

    def __str__(self) -> str:
        return f"{self.where}: python -m {self.module} {shlex.join(self.argv)}"


@dataclass(frozen=True)
class Script:
    """A documented ``python <file>.py ...`` command."""

    path: str
    argv: tuple[str, ...]
    folder: Folder
    where: str

    def __str__(self) -> str:
        return f"{self.where}: python {self.path} {shlex.join(self.argv)}"


def documented_commands(page: Path, text: str | None = None) -> tuple[list[Command], list[Script], list[str]]:
    """The ``python -m`` commands and ``python <script>.py`` commands of a page's shell code blocks.

    A ``cd`` in a block moves the commands after it, as in a shell: into ``bundles/<name>`` for a bundle of the
    repository, into the template's configs for a folder that ``python -m monai_shpeft.zoo new_bundle`` made earlier
    in the block. Returns the commands, the scripts and the problems found while reading (a ``cd`` to an unknown
    folder).
    """
    text = page.read_text(encoding="utf-8") if text is None else text
    blocks, _ = split_markdown(text)
    commands, scripts, problems = [], [], []
    for block in blocks:
        if block.lang not in {"", "bash", "sh", "shell", "console"}:
            continue
        where = f"{rel(page)}:{block.line}"
        folder = Folder()
        made: set[str] = set()
        for argv in shell_commands(block):
            while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):  # VAR=value prefixes
                argv = argv[1:]
            if not argv:
                continue
            if argv[0] == "cd" and len(argv) == 2:
                name = argv[1].rstrip("/")
                if name in made:
                    folder = Folder(name, new=True)
                elif (BUNDLES / name / "configs").is_dir():
                    folder = Folder(name)
                else:
                    problems.append(f"{where}: cd {name}: neither a bundle of bundles/ nor a folder new_bundle made")
                continue
            if argv[0] not in {"python", "python3", "torchrun"}:
                continue
            if (argv[0] == "torchrun" and "-m" in argv) or argv[1:2] == ["-m"]:
                index = argv.index("-m")
                module, rest = argv[index + 1], tuple(argv[index + 2 :])
                command = Command(module, rest, folder, where)
                commands.append(command)
                if module == "monai_shpeft.zoo" and rest[:1] == ("new_bundle",) and len(rest) > 1:
                    made.add(rest[1])
            elif argv[0] != "torchrun" and len(argv) > 1 and argv[1].endswith(".py"):
                scripts.append(Script(argv[1], tuple(argv[2:]), folder, where))
    return commands, scripts, problems


# --- the command lines, read from their sources -----------------------------------------------------------------


@dataclass
class Option:
    takes_value: bool = True
    choices: tuple | None = None
    required: bool = False
    many: bool = False  # nargs '+' or '*': every following word up to the next option is a value


@dataclass
class Parser:
    """What an argparse parser accepts, as read from the source that builds it."""

    options: dict[str, Option] = field(default_factory=dict)
    positionals: list[tuple[str, bool]] = field(default_factory=list)  # (dest, required)
    subcommands: dict[str, Parser] = field(default_factory=dict)
    exclusive: list[tuple[bool, list[str]]] = field(default_factory=list)  # (required, option strings)


@dataclass
class Cli:
    parser: Parser
    known_args: bool  # parse_known_args: '--key value' pairs it does not define are passed on (config overrides)


class _Subparsers:
    def __init__(self, parent: Parser):
        self.parent = parent


class _Group:
    def __init__(self, parser: Parser, required: bool, exclusive: bool):
        self.parser, self.names = parser, []
        if exclusive:
            parser.exclusive.append((required, self.names))


def _constant(node: ast.AST | None):
    try:
        return ast.literal_eval(node) if node is not None else None
    except (ValueError, TypeError, SyntaxError):
        return None


def _read_parsers(function: ast.AST) -> list[Parser]:
    """The argparse parsers a function (or module body) builds, with their options and subcommands."""
    nodes = sorted(
        (n for n in ast.walk(function) if isinstance(n, (ast.Assign, ast.Call))),
        key=lambda n: (n.lineno, n.col_offset, isinstance(n, ast.Call)),
    )
    names: dict[str, object] = {}
    roots: list[Parser] = []
    done: set[int] = set()
    for node in nodes:
        call = node.value if isinstance(node, ast.Assign) else node
        if not isinstance(call, ast.Call) or id(call) in done:
            continue
        done.add(id(call))
        func = call.func
        kwargs = {k.arg: k.value for k in call.keywords if k.arg}
        made: object = None
        if (isinstance(func, ast.Attribute) and func.attr == "ArgumentParser") or (
            isinstance(func, ast.Name) and func.id == "ArgumentParser"
        ):
            made = Parser()
            roots.append(made)
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            owner = names.get(func.value.id)
            parser = owner.parser if isinstance(owner, _Group) else owner
            if func.attr == "add_subparsers" and isinstance(parser, Parser):
                made = _Subparsers(parser)
            elif func.attr == "add_parser" and isinstance(owner, _Subparsers) and call.args:
                made = owner.parent.subcommands.setdefault(_constant(call.args[0]), Parser())
            elif func.attr in {"add_mutually_exclusive_group", "add_argument_group"} and isinstance(parser, Parser):
                made = _Group(parser, bool(_constant(kwargs.get("required"))), func.attr.startswith("add_mutually"))
            elif func.attr == "add_argument" and isinstance(parser, Parser):
                strings = [_constant(a) for a in call.args]
                action = _constant(kwargs.get("action"))
                option = Option(
                    takes_value=action not in FLAG_ACTIONS,
                    choices=tuple(c) if isinstance(c := _constant(kwargs.get("choices")), (list, tuple)) else None,
                    required=bool(_constant(kwargs.get("required"))),
                    many=_constant(kwargs.get("nargs")) in {"+", "*"},
                )
                if strings and all(isinstance(s, str) and s.startswith("-") for s in strings):
                    for string in strings:
                        parser.options[string] = option
                    if isinstance(owner, _Group):
                        owner.names.extend(strings)
                elif len(strings) == 1 and isinstance(strings[0], str):
                    nargs = _constant(kwargs.get("nargs"))
                    parser.positionals.append((strings[0], nargs not in {"?", "*"}))
        if made is not None and isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            names[node.targets[0].id] = made
    return roots


@cache
def module_cli(module: str) -> Cli | str:
    """The command line of ``python -m <module>`` (a module of monai_shpeft), or why it cannot be read."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        return f"no module {module}"
    if spec.submodule_search_locations:
        main = Path(next(iter(spec.submodule_search_locations))) / "__main__.py"
        if not main.is_file():
            return f"{module} is a package without __main__.py: python -m {module} cannot run"
    else:
        main = Path(spec.origin)
    if spec.submodule_search_locations is None and '__name__ == "__main__"' not in main.read_text(encoding="utf-8"):
        return f"{module} has no command line (no __main__ block)"
    return read_cli(main)


@cache
def read_cli(main: Path) -> Cli | str:
    """The argparse command line a Python file builds, or why it cannot be read."""
    tree = ast.parse(main.read_text(encoding="utf-8"))
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    scopes = [ast.Module([s for s in tree.body if not isinstance(s, definitions)], []), *functions]
    roots = [root for scope in scopes for root in _read_parsers(scope)]
    if len(roots) != 1:
        return f"cannot read the command line of {rel(main)}: {len(roots)} argparse parsers found"
    known = any(isinstance(n, ast.Attribute) and n.attr == "parse_known_args" for n in ast.walk(tree))
    return Cli(roots[0], known)


@dataclass
class Fire:
    """A MONAI bundle function as python-fire exposes it: its parameters and whether it takes overrides."""

    params: list[str]
    var_keyword: str | None


@cache
def monai_bundle_commands() -> dict[str, Fire]:
    """The subcommands of ``python -m monai.bundle``: the names its __main__ imports, with their parameters."""
    spec = importlib.util.find_spec("monai")
    assert spec and spec.submodule_search_locations, "MONAI is not installed"
    bundle = Path(next(iter(spec.submodule_search_locations))) / "bundle"
    exported = {
        alias.asname or alias.name
        for node in ast.walk(ast.parse((bundle / "__main__.py").read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    functions = {}
    for node in ast.parse((bundle / "scripts.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and node.name in exported:
            args = node.args
            params = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
            functions[node.name] = Fire(params, args.kwarg.arg if args.kwarg else None)
    assert {"run", "verify_net_in_out", "ckpt_export"} <= set(functions), "monai.bundle's commands not found"
    return functions


# --- bundle configs ---------------------------------------------------------------------------------------------


@cache
def load_config(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def has_key(configs: list[dict], key: str) -> bool:
    """Whether a config id (``a``, ``a#b``, ``a::0``) names an entry of the merged configs."""
    parts = re.split(r"#|::", key)
    for config in configs:
        node: object = config
        for part in parts:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                break
        else:
            return True
    return False


def bundle_of(path: str, folder: Folder) -> Path | None:
    """The bundle folder a positional argument names: a folder with configs/, or ``<bundle>_v<version>.zip``."""
    zipped = re.fullmatch(r"(?:.*/)?([A-Za-z0-9_]+)_v[0-9][0-9.]*\.zip", path)
    candidate = BUNDLES / zipped.group(1) if zipped else folder.resolve(path)
    return candidate if (candidate / "configs" / "metadata.json").is_file() else None


def config_files(value: str, folder: Folder) -> list[Path] | str:
    """The files of a ``--config_file`` value (one path, or a Python list of paths), or why it cannot be read."""
    try:
        names = ast.literal_eval(value) if value.lstrip().startswith("[") else [value]
    except (ValueError, SyntaxError):
        return f"--config_file {value!r} is neither a path nor a list of paths"
    return [folder.resolve(name) for name in names]


def pairs(argv: tuple[str, ...]) -> tuple[list[str], list[tuple[str, str | None]], list[str]]:
    """Split fire/monai-style arguments into positionals and ``(--name, value)`` pairs; ``...`` is skipped."""
    positionals, named, problems = [], [], []
    words = [w for w in argv if w != ELLIPSIS]
    index = 0
    while index < len(words):
        word = words[index]
        if word.startswith("--"):
            name, equals, value = word[2:].partition("=")
            if not equals:
                following = words[index + 1] if index + 1 < len(words) else None
                value = None if following is None or following.startswith("--") else following
                index += value is not None
            named.append((name, value))
        elif word.startswith("-") and len(word) > 1 and not re.match(r"^-[0-9.]", word):
            problems.append(f"short option {word}: not something the documented commands use")
        else:
            positionals.append(word)
        index += 1
    return positionals, named, problems


def check_monai_bundle(command: Command) -> list[str]:
    """Problems of a ``python -m monai.bundle <function> ...`` command."""
    functions = monai_bundle_commands()
    if not command.argv or command.argv[0] not in functions:
        return [f"{command}: monai.bundle has no command {command.argv[:1]} (it has {', '.join(sorted(functions))})"]
    fire = functions[command.argv[0]]
    positionals, named, problems = pairs(command.argv[1:])
    problems = [f"{command}: {p}" for p in problems]
    values = dict(zip(fire.params, positionals))
    if len(positionals) > len(fire.params):
        problems.append(f"{command}: {len(positionals)} positional arguments, {command.argv[0]} takes at most so many")
    overrides = []
    for name, value in named:
        if name in fire.params:
            values[name] = value
        elif fire.var_keyword == "override":
            overrides.append(name)
        else:
            problems.append(f"{command}: {command.argv[0]} has no parameter --{name}")
    for key in ("meta_file", "args_file"):
        if values.get(key) and not command.folder.resolve(values[key]).is_file():
            problems.append(f"{command}: --{key} {values[key]} does not exist from {command.folder}")
    configs: list[dict] = []
    if "config_file" in fire.params:
        if not values.get("config_file"):
            if command.argv[0] == "run" or overrides:
                problems.append(f"{command}: no --config_file")
        else:
            files = config_files(values["config_file"], command.folder)
            if isinstance(files, str):
                return [*problems, f"{command}: {files}"]
            missing = [rel(f) for f in files if not f.is_file()]
            if missing:
                return [*problems, f"{command}: config file(s) {', '.join(missing)} do not exist from {command.folder}"]
            configs = [load_config(f) for f in files]
    for name in overrides:
        if not has_key(configs, name):
            problems.append(f"{command}: --{name} is not a key of the configs it names")
    if values.get("net_id") and configs and not has_key(configs, values["net_id"]):
        problems.append(f"{command}: {values['net_id']} is not a key of the configs it names")
    return problems


def check_monai_shpeft(command: Command) -> list[str]:
    """Problems of a ``python -m monai_shpeft.<module> ...`` command, against its argparse parser."""
    cli = module_cli(command.module)
    if isinstance(cli, str):
        return [f"{command}: {cli}"]
    return check_argparse(cli, command, command.module)


def check_argparse(cli: Cli, command: Command | Script, label: str) -> list[str]:
    """Problems of a command's arguments against the argparse parser it runs."""
    parser = cli.parser
    argv = [w for w in command.argv if w != ELLIPSIS]
    if parser.subcommands:
        if not argv or argv[0] not in parser.subcommands:
            known = ", ".join(sorted(parser.subcommands))
            return [f"{command}: {argv[:1] or 'no subcommand'} is not a subcommand of {label} ({known})"]
        parser = parser.subcommands[argv[0]]
        argv = argv[1:]
    problems: list[str] = []
    given: dict[str, str | None] = {}
    positionals: list[str] = []
    extra: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        name, equals, inline = word.partition("=")
        if word.startswith("-") and len(word) > 1 and not re.match(r"^-[0-9.]", word):
            option = parser.options.get(name)
            if option is None and cli.known_args and name.startswith("--"):
                extra.append(name[2:])  # a config override, checked below
                index += 1 if equals else 2
                continue
            if option is None:
                problems.append(f"{command}: {label} has no option {name}")
                following = argv[index + 1] if index + 1 < len(argv) else "-"
                index += 1 if equals or following.startswith("-") else 2  # its value, if it has one
                continue
            value = inline if equals else None
            if option.takes_value and not equals:
                value = argv[index + 1] if index + 1 < len(argv) else None
                index += 1
                if value is None:
                    problems.append(f"{command}: {name} needs a value")
            values = [value]
            while option.many and not equals and index + 1 < len(argv) and not argv[index + 1].startswith("-"):
                index += 1
                values.append(argv[index])
            for value in values:
                if option.choices and value is not None and value not in option.choices:
                    problems.append(f"{command}: {name} {value}: not one of {option.choices}")
            given[name] = value
        else:
            positionals.append(word)
        index += 1
    wanted = parser.positionals
    if len(positionals) > len(wanted) or len(positionals) < sum(required for _, required in wanted):
        problems.append(f"{command}: {len(positionals)} positional argument(s), the parser takes {len(wanted)}")
    for name, option in parser.options.items():
        if option.required and name not in given:
            problems.append(f"{command}: {name} is required")
    for required, names in parser.exclusive:
        chosen = [n for n in names if n in given]
        if len(chosen) > 1 or (required and not chosen):
            problems.append(f"{command}: exactly one of {', '.join(names)} is needed (given: {chosen})")
    bundle = None
    for (dest, _), value in zip(wanted, positionals):
        if dest in {"bundle_dir", "path"}:
            bundle = bundle_of(value, command.folder)
            if bundle is None:
                problems.append(f"{command}: {value} is not a bundle folder (or <bundle>_v<version>.zip) of bundles/")
    if "--dataset" in given and "--bundle" not in given and not (BUNDLES / str(given["--dataset"])).is_dir():
        problems.append(f"{command}: --dataset {given['--dataset']}: there is no bundles/{given['--dataset']}")
    if extra:
        configs = [load_config(f) for f in sorted((bundle or REPO / "-none-").glob("configs/*.json"))]
        for name in extra:
            if not has_key(configs, name):
                problems.append(f"{command}: --{name} is neither an option nor a key of the bundle's configs")
    return problems


def check_command(command: Command) -> list[str]:
    if command.module == "monai.bundle":
        return check_monai_bundle(command)
    if command.module.split(".")[0] == "monai_shpeft":
        return check_monai_shpeft(command)
    return []


def check_page_commands(page: Path, text: str | None = None) -> tuple[list[str], int, int]:
    """Problems of the commands of one page, and how many monai_shpeft and monai.bundle commands it has."""
    commands, scripts, problems = documented_commands(page, text)
    for command in commands:
        problems.extend(check_command(command))
    for script in scripts:
        path = script.folder.resolve(script.path)
        if not path.is_file():
            problems.append(f"{script}: no such script from {script.folder}")
        elif isinstance(cli := read_cli(path), Cli):  # scripts with one argparse parser: their options too
            problems.extend(check_argparse(cli, script, script.path))
    ours = sum(c.module.startswith("monai_shpeft") for c in commands)
    return problems, ours, sum(c.module == "monai.bundle" for c in commands)


def zip_problems(page: Path, text: str | None = None) -> list[str]:
    """``<bundle>_v<version>.zip`` names that do not carry the bundle's current version."""
    text = page.read_text(encoding="utf-8") if text is None else text
    problems = []
    for name, version in set(re.findall(r"\b([a-z0-9_]+)_v([0-9]+\.[0-9]+\.[0-9]+)\.zip\b", text)):
        metadata = BUNDLES / name / "configs" / "metadata.json"
        if metadata.is_file() and (current := load_config(metadata)["version"]) != version:
            problems.append(f"{rel(page)}: {name}_v{version}.zip, but bundle {name} is at version {current}")
    return problems


# --- names of the package ----------------------------------------------------------------------------------------


@cache
def module_path(dotted: str) -> Path | None:
    """The source file of a module of monai_shpeft (``__init__.py`` for a package), found without importing it."""
    spec = importlib.util.find_spec("monai_shpeft")
    assert spec and spec.origin, "monai_shpeft is not installed"
    base = Path(spec.origin).parent.parent.joinpath(*dotted.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


@cache
def top_level_names(path: Path) -> frozenset[str] | None:
    """The names a module defines or imports at its top level (``None``: it has a module ``__getattr__``)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "__getattr__":
                return None
            names.add(node.name)
        for inner in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(inner, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = inner.targets if isinstance(inner, ast.Assign) else [inner.target]
                names.update(n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(inner, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split(".")[0] for alias in inner.names)
    return frozenset(names)


def name_problem(dotted: str) -> str | None:
    """Why ``monai_shpeft.a.b.c`` names nothing: no such module, or no such name in the longest module it names."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        path = module_path(".".join(parts[:end]))
        if path is None:
            continue
        if end == len(parts):
            return None
        names = top_level_names(path)
        if names is None or parts[end] in names:
            return None
        return f"{'.'.join(parts[:end])} has no {parts[end]}"
    return f"no module {parts[0]}"


def name_problems(page: Path, text: str | None = None) -> list[str]:
    """Names of the package a page uses that do not exist: imports in Python blocks, dotted names elsewhere."""
    text = page.read_text(encoding="utf-8") if text is None else text
    blocks, prose = split_markdown(text)
    used: set[str] = set()
    for block in blocks:
        if block.lang == "python":
            for node in ast.walk(ast.parse("\n".join(block.lines))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "monai_shpeft":
                    used.update(f"{node.module}.{alias.name}" for alias in node.names)
                elif isinstance(node, ast.Import):
                    used.update(a.name for a in node.names if a.name.split(".")[0] == "monai_shpeft")
        else:
            used.update(re.findall(r"\bmonai_shpeft(?:\.[A-Za-z_]\w*)+", "\n".join(block.lines)))
    used.update(re.findall(r"\bmonai_shpeft(?:\.[A-Za-z_]\w*)+", prose))
    return [f"{rel(page)}: {name}: {problem}" for name in sorted(used) if (problem := name_problem(name))]


# --- the tests --------------------------------------------------------------------------------------------------


def test_readme_is_a_front_page_with_contents():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES, f"README.md has {len(text.splitlines())} lines"
    _, prose = split_markdown(text)
    match = re.search(r"^## Contents *\n(.*?)(?=^## )", prose, flags=re.M | re.S)
    assert match, "README.md has no '## Contents' section followed by other sections"
    contents = set(links(match.group(1)))
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ holds no pages"
    missing = [rel(p) for p in pages if f"docs/{p.name}" not in contents]
    assert not missing, f"the README's contents do not link {missing}"
    sections = [github_slug(h) for h in re.findall(r"^## +(.*?) *$", prose, flags=re.M)]
    unlinked = [s for s in sections if s != "contents" and f"#{s}" not in contents]
    assert not unlinked, f"the README's contents do not link its sections {unlinked}"


def test_links_resolve():
    problems = [problem for page in doc_files() for problem in link_problems(page)]
    assert not problems, "\n".join(problems)


def test_documented_commands_fit_the_cli():
    problems: list[str] = []
    ours = bundle_commands = 0
    for page in doc_files():
        found, n_ours, n_bundle = check_page_commands(page)
        problems += found
        ours += n_ours
        bundle_commands += n_bundle
    assert not problems, "\n".join(dict.fromkeys(problems))
    # the pages document the zoo, data and benchmark command lines and many bundle runs: finding none means the
    # extraction broke, not that everything is fine
    assert ours >= 10 and bundle_commands >= 20, (ours, bundle_commands)


def test_python_blocks_compile_and_zip_names_carry_the_version():
    problems = []
    for page in doc_files():
        text = page.read_text(encoding="utf-8")
        blocks, _ = split_markdown(text)
        for block in blocks:
            if block.lang == "python":
                try:
                    compile("\n".join(block.lines), f"{rel(page)}:{block.line}", "exec")
                except SyntaxError as error:
                    problems.append(f"{rel(page)}:{block.line}: {error}")
        problems += zip_problems(page, text)
    assert not problems, "\n".join(problems)


def test_names_of_the_package_exist():
    problems = [problem for page in doc_files() for problem in name_problems(page)]
    assert not problems, "\n".join(problems)


def test_the_checks_find_what_is_wrong():
    """Each check fails on a page that breaks its rule (so that a passing run means something)."""
    page = DOCS / "example.md"
    bad = """# Example

## A heading, with punctuation!

[fine](#a-heading-with-punctuation) [fine too](../README.md#bundles) [gone](missing.md) [no heading](#nowhere)
[not a heading of the README](../README.md#no-such-section) `[in code](missing-too.md)`

```bash
python -m monai.bundle run --config_file bundles/busi/configs/train.json --no_such_knob 1
python -m monai.bundle run --config_file bundles/no_such_bundle/configs/train.json
python -m monai.bundle run --config_file "['bundles/busi/configs/train.json','bundles/busi/configs/evaluate.json']" \\
    --input_dir DIR
python -m monai.bundle runn --config_file bundles/busi/configs/train.json
python -m monai.bundle verify_metadata --meta_file bundles/busi/configs/metadata.json --no_such_parameter 1
python -m monai_shpeft.no_such_module check DIR
python -m monai_shpeft.zoo pakage bundles/busi
python -m monai_shpeft.zoo package bundles/busi --output_directory dist
python -m monai_shpeft.zoo export_delta bundles/busi --no_such_knob 3
python -m monai_shpeft.zoo export_delta bundles/nowhere
python -m monai_shpeft.zoo new_bundle knee --image_folder a --csv b.csv
python -m monai_shpeft.data check
python -m monai_shpeft.benchmark --dataset busi --dataset_dir DIR --output_dir runs/x --head_warmup sometimes
python benchmarks/no_such_script.py
python benchmarks/delta_size.py --dataset_dir DIR --no_such_option 1
cd nowhere
unzip busi_v0.0.1.zip && cd busi && python -m monai.bundle run --config_file configs/no_such.json
```
"""
    link_issues = link_problems(page, bad)
    assert len(link_issues) == 3, link_issues  # missing.md, #nowhere, README#no-such-section
    command_issues, _, _ = check_page_commands(page, bad)
    expected = [
        "--no_such_knob is not a key",
        "no_such_bundle/configs/train.json do not exist",
        "--input_dir is not a key",
        "has no command ('runn',)",
        "has no parameter --no_such_parameter",
        "no module monai_shpeft.no_such_module",
        "['pakage'] is not a subcommand",
        "--output_directory is neither an option nor a key",
        "--no_such_knob is neither an option nor a key",
        "bundles/nowhere is not a bundle folder",
        "exactly one of --image_folder, --csv",
        "0 positional argument(s)",
        "--head_warmup sometimes: not one of",
        "no such script",
        "benchmarks/delta_size.py has no option --no_such_option",
        "cd nowhere",
        "configs/no_such.json do not exist",
    ]
    for fragment in expected:
        assert any(fragment in issue for issue in command_issues), (fragment, command_issues)
    assert len(command_issues) == len(expected), command_issues
    assert zip_problems(page, bad), "busi_v0.0.1.zip passed"
    names = """`monai_shpeft.errors.ShpeftError` `monai_shpeft.errors.no_such_function` `monai_shpeft.no_such_module`

```python
from monai_shpeft.handlers import GradientMaskHandler, NoSuchHandler
```
"""
    assert {p.split(": ", 2)[2] for p in name_problems(page, names)} == {
        "monai_shpeft.handlers has no NoSuchHandler",
        "monai_shpeft has no no_such_module",
        "monai_shpeft.errors has no no_such_function",
    }
    good = """```bash
python -m monai.bundle run --config_file bundles/busi/configs/train.json --network_def#_target_ x  # an 'a#b' id
python -m monai_shpeft.zoo new_bundle mine --csv labels.csv && cd mine
python -m monai.bundle run --config_file configs/train.json --max_epochs 1
```"""
    assert check_page_commands(page, good) == ([], 1, 2)
