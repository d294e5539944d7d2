"""README.md is true: what it names exists, and what exists is named.

Each list is derived from the code, never written down here: the environment variables from
`Settings` and from every `os.environ` read in `sentinel/`, the endpoints from a started app's
route table (every optional surface on), the command line from `build_parser()`. The quick start's
commands are run as printed in `tests/test_serve_demo.py`.
"""

from __future__ import annotations

import argparse
import ast
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import sentinel
from sentinel.app import create_app
from sentinel.cli import build_parser
from sentinel.config import Settings
from tests.support.inprocess import route_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The README's text under the heading `title` (any level), up to the next heading of that level or above."""
    level = title.split(" ")[0]
    start = README.index(f"\n{title}\n") + len(title) + 2
    end = re.search(r"\n#{1,%d} " % len(level), README[start:])  # noqa: UP031 - a regex's braces
    return README[start:start + end.start()] if end else README[start:]


# --- configuration ------------------------------------------------------------------------------

def configuration_rows() -> list[tuple[list[str], str]]:
    """(the variables, the default cell) of each row of README's Configuration tables."""
    text = section("## Configuration").split("\n### ", 1)[0]
    rows = []
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.split("|")[1:-1]]
            rows.append((re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]), cells[1]))
    return rows


def settings_variables() -> dict[str, object]:
    """Each environment name `Settings` reads -> its default."""
    names = {}
    for name, field in Settings.model_fields.items():
        assert isinstance(field.validation_alias, str), f"Settings.{name} is read under no one environment name"
        names[field.validation_alias] = field.default
    return names


@dataclass(frozen=True)
class EnvironmentRead:
    name: str | None  # None: a name the code computes
    default: str | None  # the literal a `.get(name, default)` falls back to
    where: str  # module:function


def package_sources() -> dict[str, str]:
    """Dotted module name -> source, for every module of the package."""
    return {
        ".".join(path.relative_to(ROOT).with_suffix("").parts): path.read_text(encoding="utf-8")
        for path in sorted(Path(sentinel.__file__).parent.rglob("*.py"))
    }


def _module_constants(sources: dict[str, str]) -> dict[str, set[str]]:
    """Every module-level `NAME = "text"` of the package, by name (a constant may be imported anywhere)."""
    found: dict[str, set[str]] = {}
    for source in sources.values():
        for name, value in re.findall(r'^([A-Z_][A-Z0-9_]*)(?:: str)? = "([^"\\]*)"', source, re.M):
            found.setdefault(name, set()).add(value)
    return found


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ")


@functools.cache
def environment_reads() -> tuple[EnvironmentRead, ...]:
    """Every use of `os.environ`/`os.getenv` in the package, with the variable it names.

    A use this cannot read a name from (`os.environ.copy()`, a computed key) is returned with no name:
    the test below allows that only where the README says so (the providers file's `${VAR}`).
    """
    sources = package_sources()
    constants = _module_constants(sources)

    def text(node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name) and len(constants.get(node.id, ())) == 1:
            return next(iter(constants[node.id]))
        return None

    reads: list[EnvironmentRead] = []
    for module, source in sources.items():
        if "environ" not in source and "getenv" not in source:
            continue  # (parsing all of them takes seconds)
        tree = ast.parse(source)
        scopes: dict[ast.AST, str] = {}
        for scope in ast.walk(tree):
            if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(scope):
                    scopes.setdefault(inner, scope.name)  # the outermost function holding it
        named: set[int] = set()  # ids of the `environ` nodes a read below accounts for
        for node in ast.walk(tree):
            where = f"{module}:{scopes.get(node, '<module>')}"
            target: ast.AST | None = None
            key: ast.AST | None = None
            default: ast.AST | None = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in ("get", "pop", "setdefault") and _is_environ(node.func.value):
                    target, key = node.func.value, node.args[0] if node.args else None
                    default = node.args[1] if len(node.args) > 1 else None
                elif node.func.attr == "getenv":
                    key = node.args[0] if node.args else None
                    default = node.args[1] if len(node.args) > 1 else None
                    reads.append(EnvironmentRead(text(key), text(default), where))
                    continue
            elif isinstance(node, ast.Subscript) and _is_environ(node.value):
                target, key = node.value, node.slice
            elif isinstance(node, ast.Compare) and len(node.comparators) == 1 and _is_environ(node.comparators[0]):
                target, key = node.comparators[0], node.left
            if target is None:
                continue
            named.add(id(target))
            reads.append(EnvironmentRead(text(key), text(default), where))
        for node in ast.walk(tree):  # any other use of the environment: not a name this can check
            if _is_environ(node) and id(node) not in named and not (
                isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id != "os"
            ):
                reads.append(EnvironmentRead(None, None, f"{module}:{scopes.get(node, '<module>')}"))
    return tuple(reads)


# `${VAR}` in the providers file is any variable the operator names (README, The providers file).
COMPUTED_NAMES_ALLOWED = {"sentinel.config:load_providers_file"}


def test_the_environment_reads_outside_settings_are_found() -> None:
    """The scan below sees the package's reads (it would pass on a scan that finds nothing)."""
    names = {read.name for read in environment_reads()}
    assert {"OTEL_TRACES_SAMPLER", "PROMETHEUS_MULTIPROC_DIR"} <= names
    assert {read.where for read in environment_reads() if read.name is None} == COMPUTED_NAMES_ALLOWED


def test_the_readme_documents_every_variable_read_and_only_those() -> None:
    """Both directions: a variable the code reads is in the Configuration tables, and a variable the
    tables name is read (by `Settings` or by an `os.environ` read elsewhere in the package)."""
    documented = {name for names, _ in configuration_rows() for name in names}
    reads = environment_reads()
    elsewhere = {read.name for read in reads if read.name is not None}
    read = set(settings_variables()) | elsewhere
    assert read - documented == set(), "read by the code, missing from README's Configuration tables"
    assert documented - read == set(), "in README's Configuration tables, read nowhere"
    # The README names those read outside config.py (they are not read from `.env`).
    intro = section("## Configuration").split("\n|", 1)[0]
    outside = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", intro.split("are read from the process environment only")[0]))
    assert outside >= elsewhere - set(settings_variables()), "README's Configuration intro"


def test_the_readme_s_defaults_are_the_code_s_defaults() -> None:
    """A default written as one literal (`8080`, `true`, `0.25`) is the field's; one written in words
    (`unset (...)`) is a setting without a value. A variable read outside Settings is `unset`, and the
    value its read falls back to is written in the cell."""
    fields = settings_variables()
    fallbacks = {read.name: read.default for read in environment_reads() if read.name not in fields}
    for names, cell in configuration_rows():
        for name in names:
            if name in fallbacks:
                assert cell.startswith("unset"), (name, cell)
                fallback = fallbacks[name]
                assert not fallback or f"`{fallback}`" in cell, (name, cell, fallback)
                continue
            default = fields[name]
            literal = re.fullmatch(r"`([^`]*)`", cell)
            if literal is None:
                assert cell.startswith("unset") and default in (None, ""), (name, cell, default)
                continue
            if isinstance(default, bool):
                expected = str(default).lower()
            elif isinstance(default, float):
                expected = format(default, "g")
            else:
                expected = str(getattr(default, "value", default))
            assert literal.group(1) == expected, (name, cell, default)


# --- endpoints ----------------------------------------------------------------------------------

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class Documented:
    methods: frozenset[str] | None  # None: the row names no method (any)
    path: str  # as written, without a query string; a trailing `/*`: everything below


def documented_endpoints() -> list[Documented]:
    """The paths of the first column of README's Endpoints table. A method applies to the paths after
    it in its cell (`POST /v1/completions`, `/v1/embeddings`); `GET`/`DELETE /x` is both methods."""
    found = []
    for line in section("## Endpoints").splitlines():
        if not line.startswith("| `") and not line.startswith("| any") and not line.startswith("| paths"):
            continue
        cell = line.split("|")[1]
        pending: set[str] = set()
        current: frozenset[str] | None = None
        for span in re.findall(r"`([^`]+)`", cell):
            method, _, path = span.partition(" ")
            if span in METHODS:
                pending.add(span)
            elif method in METHODS and path.startswith("/"):
                current, pending = frozenset(pending | {method}), set()
                found.append(Documented(current, path.split("?")[0]))
            elif span.startswith("/"):
                found.append(Documented(current, span.split("?")[0]))
    return found


def _shape(path: str) -> str:
    """A path with each parameter as `{}` and no trailing slash (`/admin/` is `/admin`'s)."""
    shaped = re.sub(r"\{[^}]*\}", "{}", path)
    return shaped.rstrip("/") or "/"


def _covers(doc: Documented, template: str) -> bool:
    if doc.path.endswith("/*"):
        return template.startswith(doc.path[:-1])
    return _shape(doc.path) == _shape(template)


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[str, frozenset[str]]]]:
    """The route table of an app with every optional surface on (as the route sweep builds it)."""
    import asyncio

    tmp = tmp_path_factory.mktemp("readme")
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=f"sqlite+aiosqlite:///{tmp}/readme.db", access_log=False, redis_url=None,
        openai_api_url="http://127.0.0.1:9/v1", openai_api_key="sk-upstream", anthropic_api_url="http://127.0.0.1:9",
        anthropic_api_key="sk-ant-upstream", admin_key="admin-key-for-the-readme-0123",
        docs_api_key="docs-key-for-the-readme-0123", metrics_token="metrics-token-for-the-readme",
        debug=True, passthrough="/v1/*",
    )

    async def table() -> list[tuple[str, frozenset[str]]]:
        app = create_app(settings)
        await app.startup()
        try:
            return route_table(app)
        finally:
            await app.shutdown()

    yield asyncio.run(table())


def test_the_endpoints_table_is_read() -> None:
    documented = documented_endpoints()
    assert Documented(frozenset({"GET", "DELETE"}), "/v1/responses/{id}") in documented
    assert Documented(frozenset({"POST"}), "/v1/embeddings") in documented
    assert Documented(None, "/admin/api/*") in documented


def test_every_endpoint_the_readme_names_is_served_with_its_methods(routes: list[tuple[str, frozenset[str]]]) -> None:
    for doc in documented_endpoints():
        serving = [(template, methods) for template, methods in routes if _covers(doc, template)]
        assert serving, f"README's Endpoints names {doc.path}: no route serves it"
        if doc.methods is None:
            continue
        if doc.path.endswith("/*"):
            for method in doc.methods:
                assert any(method in methods for _, methods in serving), (doc, serving)
        else:
            for template, methods in serving:
                assert doc.methods <= methods, f"README: {sorted(doc.methods)} {doc.path}; {template}: {sorted(methods)}"


def test_every_route_is_in_the_readme_s_endpoints_table(routes: list[tuple[str, frozenset[str]]]) -> None:
    """HEAD aside (answered wherever GET is), each method of each route is in a row of the table."""
    documented = documented_endpoints()
    missing = [
        f"{method} {template}"
        for template, methods in routes
        for method in sorted(methods - {"HEAD"})
        if not any(_covers(doc, template) and (doc.methods is None or method in doc.methods) for doc in documented)
    ]
    assert missing == [], "served, missing from README's Endpoints"


def documented_admin_api() -> list[Documented]:
    """README's Admin API table (paths under `/admin/api/`; `GET; PUT, DELETE` gives each path its
    own methods, `GET, POST` for two paths one each), the `users/{id}` twins it names
    (`user/plan?id=`) and the paths it names in full (`GET /admin/api/openapi.json`)."""
    text = section("### Admin API")
    found = []
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = line.split("|")[1:3]
        paths = ["/admin/api/" + path.split("?")[0] for path in re.findall(r"`([^`]+)`", cells[0])]
        groups = [frozenset(m.strip() for m in group.split(",")) for group in cells[1].split(";")]
        if len(groups) == 1 and len(paths) > 1 and len(groups[0]) == len(paths):
            groups = [frozenset({m.strip()}) for m in cells[1].split(",")]
        if len(groups) == 1:
            groups *= len(paths)
        assert len(groups) == len(paths) and all(group <= METHODS for group in groups), line
        found += [Documented(group, path) for group, path in zip(groups, paths, strict=True)]
    twins = text.split("has a\ntwin", 1)[1].split("The console", 1)[0]
    found += [Documented(None, "/admin/api/" + span.split("?")[0]) for span in re.findall(r"`(user[^`]*)`", twins)]
    found += [Documented(frozenset({m}), path) for m, path in re.findall(r"`([A-Z]+) (/admin/api/[^`? ]+)`", text)]
    return found


def test_the_admin_api_table_is_read() -> None:
    documented = documented_admin_api()
    assert Documented(frozenset({"GET", "PUT", "DELETE"}), "/admin/api/plans/{name}") in documented
    assert Documented(frozenset({"POST"}), "/admin/api/keys/{key_id}/revoke") in documented
    assert Documented(None, "/admin/api/user/plan") in documented


def test_the_admin_api_table_is_the_admin_api(routes: list[tuple[str, frozenset[str]]]) -> None:
    """Each path and method README's Admin API names is served, and each admin API route is named there."""
    documented = documented_admin_api()
    for doc in documented:
        serving = [methods for template, methods in routes if _covers(doc, template)]
        assert len(serving) == 1, f"README's Admin API names {doc.path}: served by {len(serving)} routes"
        assert doc.methods is None or doc.methods <= serving[0], (doc, serving)
    missing = [
        f"{method} {template}"
        for template, methods in routes if template.startswith("/admin/api/")
        for method in sorted(methods - {"HEAD"})
        if not any(_covers(doc, template) and (doc.methods is None or method in doc.methods) for doc in documented)
    ]
    assert missing == [], "served, missing from README's Admin API"


# --- the command line ---------------------------------------------------------------------------

@functools.cache
def cli_commands() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command path of `sentinel` (groups and leaves) -> its parser."""
    found: dict[tuple[str, ...], argparse.ArgumentParser] = {}

    def walk(prefix: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
        found[prefix] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk((*prefix, name), sub)

    walk((), build_parser())
    return found


def _is_group(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(action, argparse._SubParsersAction) for action in parser._actions)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings} - {"-h", "--help"}


@dataclass(frozen=True)
class Mention:
    words: tuple[str, ...]  # after `sentinel`, up to a comment or a redirection; [ ] taken out
    line: str
    complete: bool  # a command line of a code block, to run as it is written


# An inline span starting with a command group's name that is prose, not a command line.
PROSE = re.compile(r"^usage records? ")


def cli_mentions(text: str) -> list[Mention]:
    """The `sentinel ...` command lines of `text`'s code blocks, and its inline spans that name a
    command (`sentinel keys create`, `serve --workers`, `tiers reset [TIER]`, `bash scripts/serve.sh --port 9000`)."""
    top = {path[0] for path in cli_commands() if len(path) == 1}
    found: list[Mention] = []

    def add(command: str, line: str, complete: bool) -> None:
        command = re.sub(r"^(\$ )?(python -m |\.venv/bin/)?sentinel ", "", command.strip())
        command = re.sub(r"^bash scripts/serve\.sh\b", "serve", command)
        words = command.split(">")[0].replace("[", " ").replace("]", " ").split()
        found.append(Mention(tuple(words), line, complete))

    def spans(prose: str, line: str) -> None:
        for span in re.findall(r"`([^`\n]+)`", prose):
            if re.match(r"(python -m )?sentinel [a-z]", span) or re.match(r"bash scripts/serve\.sh\b", span):
                add(span, line, False)
            elif span.split(" ")[0] in top and " " in span and not PROSE.match(span):
                add(span, line, False)

    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            spans(line, line)
            continue
        command, _, comment = line.partition("  #")
        if re.match(r"(\$ )?(python -m |\.venv/bin/)?sentinel [a-z]", command) or command.startswith("bash scripts/serve.sh"):
            add(command, line, True)
        spans(comment, line)
    return found


def _walk(mention: Mention) -> tuple[list[tuple[str, ...]], list[str]]:
    """The command paths a mention names (`plans set|delete`: two) and the words after them."""
    commands = cli_commands()
    paths: list[tuple[str, ...]] = [()]
    words = list(mention.words)
    while words and all(_is_group(commands[path]) for path in paths):
        choices = words.pop(0).split("|")
        paths = [(*path, choice) for path in paths for choice in choices]
        unknown = [path for path in paths if path not in commands]
        assert not unknown, f"README names `sentinel {' '.join(unknown[0])}`, which is no command: {mention.line!r}"
    return paths, words


def test_the_readme_s_command_lines_are_read() -> None:
    mentions = cli_mentions(README)
    assert any(m.words[:3] == ("plans", "set", "pro") and m.complete for m in mentions)
    assert any(m.words == ("users", "set-plan", "alice", "--default") for m in mentions)
    assert any(m.words == ("serve", "--port", "9000") for m in mentions)
    assert not any(m.words[0] == "usage" and m.words[1] == "record" for m in mentions)


def test_every_command_and_option_the_readme_shows_exists() -> None:
    for mention in cli_mentions(README):
        paths, rest = _walk(mention)
        for path in paths:
            options = _options(cli_commands()[path])
            for word in rest:
                if word.startswith("-"):
                    option = word.split("=")[0]
                    assert option in options, f"`sentinel {' '.join(path)}` has no {option}: {mention.line!r}"
        placeholder = any(re.fullmatch(r"[A-Z]+|<[^>]*>|\S*\|\S*", word) for word in rest)
        if mention.complete and not placeholder:
            try:
                build_parser().parse_args(list(mention.words))
            except SystemExit:
                pytest.fail(f"`sentinel` refuses README's command line: {mention.line!r}")


def test_every_command_and_option_is_in_the_readme_s_command_line_section() -> None:
    """The section `### The command line` shows each command and each of its options."""
    shown: dict[tuple[str, ...], set[str]] = {}
    for mention in cli_mentions(section("### The command line")):
        paths, rest = _walk(mention)
        for path in paths:
            shown.setdefault(path, set()).update(word.split("=")[0] for word in rest if word.startswith("--"))
    for path, parser in cli_commands().items():
        if not path or _is_group(parser):
            continue
        assert path in shown, f"`sentinel {' '.join(path)}` is not in README's command line section"
        assert _options(parser) <= shown[path], (path, _options(parser) - shown[path])
