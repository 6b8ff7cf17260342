"""The docs (and README) name only things that exist, and the generated files are fresh.

Checked in every page's code (inline and fenced) and links: repository paths, ``llmvm``
sub-commands and their options (against the real Typer app), ``python jobs/*.py`` scripts
and their flags, ``python -m`` modules, ``module:attr`` and dotted import paths, ``from x
import y`` lines, ``make`` targets, and relative links. ``docs/openapi.json`` must equal a
fresh export.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NODE_CHECKOUTS = ("/home/ray/llmvm-ray/",)
REPO_DIRS = ("llmvm_ray", "jobs", "cluster", "k8s", "docs", "tests", "benchmarks")
ROOT_FILES = ("pyproject.toml", "Makefile", "README.md")
# Modules that exist but cannot be imported here (they need vLLM).
FIND_ONLY = ("ray.serve.llm",)

_DIRS = "|".join(REPO_DIRS)
_FILES = "|".join(re.escape(f) for f in ROOT_FILES)
PATH_RE = re.compile(rf"(?<![\w./-])(?:/home/ray/llmvm-ray/)?((?:{_DIRS})/[\w./-]*|{_FILES})")
IMPORT_PATH_RE = re.compile(r"\b((?:llmvm_ray|ray)(?:\.\w+)+):(\w+)\b")
DOTTED_RE = re.compile(r"\b(llmvm_ray(?:\.\w+)+)\b")
FROM_IMPORT_RE = re.compile(r"^\s*from\s+([\w.]+)\s+import\s+([\w, ]+)$", re.M)


def code_spans(text: str) -> list[str]:
    """Fenced blocks and inline code of a Markdown page."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    rest = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    return fenced + re.findall(r"`([^`\n]+)`", rest)


def links(text: str) -> list[str]:
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"\w+://|#", t)]


@cache
def cli():  # a click Group (Typer may bring its own copy of click: duck-typed below)
    import typer

    from llmvm_ray.cli import app

    return typer.main.get_command(app)


@cache
def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))


SEPARATORS = ("&&", "||", ";", "|")


def _own(words: list[str]) -> list[str]:
    """A command's own words: up to the first shell separator (``a && b``: ``b``'s options
    are ``b``'s, not ``a``'s)."""
    for i, word in enumerate(words):
        if word in SEPARATORS:
            return words[:i]
    return words


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:
        return line.split()


@cache
def ray_cli(name: str):
    """Ray's own click groups: ``ray`` and ``serve``."""
    if name == "ray":
        from ray.scripts.scripts import cli as ray_cli_group

        return ray_cli_group
    from ray.serve.scripts import cli as serve_cli_group

    return serve_cli_group


def check_llmvm(words: list[str], program: str = "llmvm") -> list[str]:
    """``words`` start after the program; alternatives ``a|b`` are checked one by one."""
    command = cli() if program == "llmvm" else ray_cli(program)
    if "--" in words:
        words = words[: words.index("--")]  # what follows is the job's own command line
    for i, word in enumerate(words):
        if not hasattr(command, "commands"):
            return _check_options(command, words[i:], program)
        if word.startswith("-"):
            if program != "llmvm":  # `ray`/`serve` take group options (checked loosely)
                continue
            return [f"llmvm: {word!r} before a sub-command"]
        names = word.split("|")
        missing = [n for n in names if n not in command.commands]
        if missing:
            return [f"{program}: no sub-command {missing} under {command.name!r}"]
        if len(names) > 1:
            return []  # `finetune start|list|show`: each exists; options are per command
        command = command.commands[word]
    return []


def _check_options(command, words: list[str], where: str) -> list[str]:
    known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    known.add("--help")
    return [
        f"{where} {command.name}: no option {w.split('=')[0]!r}"
        for w in words
        if w.startswith("-") and w.split("=")[0] not in known and not w.startswith("-<")
    ]


def check_python(words: list[str]) -> list[str]:
    """``words`` start after ``python``."""
    if not words:
        return []
    if words[0] == "-m":
        module = words[1]
        if module.startswith(("pytest", "pip")):
            return []
        return [] if _module_exists(module) else [f"python -m {module}: no such module"]
    script = words[0]
    for prefix in NODE_CHECKOUTS:
        script = script.removeprefix(prefix)
    if not script.endswith(".py") or "<" in script:
        return []
    path = REPO / script
    if not path.is_file():
        return [f"python {script}: no such file"]
    source = path.read_text()
    flags = {w.split("=")[0] for w in words[1:] if w.startswith("-") and "<" not in w}
    return [f"python {script}: no flag {f!r}" for f in sorted(flags) if f'"{f}"' not in source]


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def check_import(module: str, attrs: list[str]) -> list[str]:
    if module.startswith(FIND_ONLY):
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            return [f"{module}: not installed"]
        source = Path(spec.origin).read_text()
        return [f"{module}:{a} not defined" for a in attrs if f"def {a}(" not in source]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        return [f"{module}: does not import ({exc})"]
    return [f"{module}.{a}: no such attribute" for a in attrs if not hasattr(mod, a)]


def check_dotted(dotted: str) -> list[str]:
    """``llmvm_ray.a.b.C``: the longest importable prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        if _module_exists(module):
            obj = importlib.import_module(module)
            for attr in parts[cut:]:
                if not hasattr(obj, attr):
                    return [f"{dotted}: {module} has no {attr!r}"]
                obj = getattr(obj, attr)
            return []
    return [f"{dotted}: no such module"]


def check_path(path: str) -> list[str]:
    path = path.rstrip(".,:;)")
    if "<" in path or "*" in path:
        return []
    return [] if (REPO / path).exists() else [f"{path}: no such file or folder"]


def problems(text: str, base: Path) -> tuple[list[str], int]:
    """(what does not exist, how many references were checked)."""
    found: list[str] = []
    checked = 0
    for span in code_spans(text):
        span = span.replace("\\\n", " ")  # shell line continuations
        for line in span.splitlines():
            line = line.strip().removeprefix("$ ")
            words = _words(line)
            for i, word in enumerate(words):
                prev = words[i - 1] if i else ""
                if (
                    word in ("llmvm", "ray", "serve")
                    and i + 1 < len(words)
                    and prev in ("", "-", *SEPARATORS)
                    and not words[i + 1].startswith(("(", "."))
                ):
                    checked += 1
                    found += check_llmvm(_own(words[i + 1 :]), word)
                elif word == "python" and prev in ("", "--", *SEPARATORS):
                    checked += 1
                    found += check_python(_own(words[i + 1 :]))
                elif word == "make" and prev in ("", *SEPARATORS) and i + 1 < len(words):
                    checked += 1
                    if words[i + 1] not in make_targets():
                        found.append(f"make {words[i + 1]}: no such target")
        for match in PATH_RE.finditer(span):
            checked += 1
            found += check_path(match.group(1))
        for module, attr in IMPORT_PATH_RE.findall(span):
            checked += 1
            found += check_import(module, [attr])
        for dotted in DOTTED_RE.findall(IMPORT_PATH_RE.sub("", span)):
            checked += 1
            found += check_dotted(dotted)
        for module, names in FROM_IMPORT_RE.findall(span):
            if module.startswith("llmvm_ray"):
                checked += 1
                found += check_import(module, [n.strip() for n in names.split(",")])
    for target in links(text):
        checked += 1
        target = target.split("#")[0]
        if not (base / target).exists():
            found.append(f"link {target}: no such file")
    return found, checked


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_everything_a_page_names_exists(page):
    found, checked = problems(page.read_text(), page.parent)
    assert not found, f"{page.relative_to(REPO)}:\n" + "\n".join(found)
    assert checked >= 3, "the page names almost nothing: is the extraction broken?"


def test_the_checker_catches_what_does_not_exist():
    text = (
        "Run `llmvm serve --port 1 --colour red` then `llmvm frobnicate`,\n"
        "`ray job submit --wrking-dir . -- python jobs/deploy.py` and `serve deplo x.yaml`\n"
        "```bash\nray job submit -- python jobs/deploy.py --nope\npython jobs/missing.py\n"
        "make nothing\n```\n"
        "See `cluster/azure.yaml`, `llmvm_ray.serve.builder:no_builder`, "
        "`llmvm_ray.client.NoClient` and [x](nowhere.md).\n"
        "```python\nfrom llmvm_ray.client import Client, Missing\n```\n"
        "`llmvm finetune start --wait && llmvm serve --wait`\n"
    )
    found, _ = problems(text, REPO / "docs")
    expected = [
        "--colour",
        "frobnicate",
        "--nope",
        "jobs/missing.py",
        "make nothing",
        "cluster/azure.yaml",
        "no_builder",
        "NoClient",
        "nowhere.md",
        "Missing",
        "--wrking-dir",
        "deplo",
        "serve: no option '--wait'",  # after `&&`, options belong to the second command
    ]
    for needle in expected:
        assert any(needle in f for f in found), (needle, found)
    ok, _ = problems(
        "`llmvm finetune start --wait -p lr=1` `python jobs/deploy.py --delete` "
        "`llmvm_ray.serve.builder:app_builder` `make demo` `ray job logs --follow x` "
        "`serve deploy cluster/serve.yaml --address http://h:8265` "
        "`llmvm serve --port 1 && llmvm finetune start --wait` "
        "`python jobs/deploy.py --delete && python jobs/finetune.py --dataset d`",
        REPO / "docs",
    )
    assert ok == []


def test_every_docs_page_is_linked_from_the_index():
    index = (REPO / "docs/README.md").read_text()
    for page in (REPO / "docs").glob("*.md"):
        if page.name != "README.md":
            assert f"({page.name})" in index, page.name
    assert "(openapi.json)" in index


def test_openapi_json_is_up_to_date():
    from llmvm_ray.serve.openapi import render

    published = (REPO / "docs/openapi.json").read_text()
    assert published == render(), "docs/openapi.json is stale: run `llmvm docs openapi`"


def test_openapi_document_is_complete():
    import json

    doc = json.loads((REPO / "docs/openapi.json").read_text())
    schemas = doc["components"]["schemas"]
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', json.dumps(doc)))
    assert refs <= set(schemas), refs - set(schemas)  # every reference resolves
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/complete", "/v1/models"):
        (operation,) = doc["paths"][path].values()
        assert "$ref" in json.dumps(operation["responses"]["200"]), path
        assert operation["responses"]["4XX"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    assert "llmvm" in schemas["CompletionResponse"]["properties"]
    assert "guided_json" in schemas["CompletionRequest"]["properties"]
