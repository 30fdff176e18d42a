"""The README's API examples, run in order against the app, answer what the README says.

Every `curl` in a ```bash block of README.md is parsed (method, URL, headers, `-d` body, with
the block's `KEY=`/`API=` variables substituted) and sent through Django's test client; a
`python manage.py ...` line runs that command. The documented answer is the `# -> STATUS JSON`
comment that follows a call (continued on `#` lines indented by two or more spaces). In that
JSON, `...` elides: `"..."` or a bare `...` as a value matches any value, `, ...}` lets the
object have more keys, `, ...]` lets the list have more items. Without an elision an object
must have exactly the keys shown.

The README's examples run after `make run`, so the test first loads what `make run` loads, in
small: the demo (its API key, meters and first account, northwind-travel) and its
subscriptions.
"""

from __future__ import annotations

import io
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

ANY = "\u2026any"
MORE = "\u2026more"


@dataclass
class Step:
    argv: list[str]
    line: int
    answer: str | None = None
    answer_line: int | None = None

    @property
    def is_curl(self) -> bool:
        return self.argv[0] == "curl"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None


def readme_steps(text: str) -> list[Step]:
    """The runnable lines of the README's bash blocks that contain curl calls, in order."""
    steps: list[Step] = []
    variables: dict[str, str] = {}
    for block in re.finditer(r"```bash\n(.*?)```", text, re.S):
        if "curl " not in block.group(1):
            continue
        first_line = text[: block.start(1)].count("\n") + 1
        lines = block.group(1).splitlines()
        i = 0
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith("# ->"):
                assert steps, f"README line {first_line + i}: an answer without a call"
                start = i
                answer = [stripped[len("# ->") :].strip()]
                i += 1
                while i < len(lines) and re.match(r"#\s{2,}\S", lines[i].strip()):
                    answer.append(lines[i].strip()[1:].strip())
                    i += 1
                steps[-1].answer = " ".join(answer)
                steps[-1].answer_line = first_line + start
                continue
            if not stripped or stripped.startswith("#"):
                i += 1
                continue
            assignment = re.match(r"([A-Z_]+)=(\S+)", stripped)
            if assignment:
                variables[assignment[1]] = assignment[2]
                i += 1
                continue
            start, text_so_far = i, lines[i]
            while True:
                try:
                    if text_so_far.rstrip().endswith("\\"):
                        raise ValueError("continued")
                    argv = shlex.split(text_so_far.replace("\\\n", " "), comments=True)
                    break
                except ValueError:
                    i += 1
                    text_so_far += "\n" + lines[i]
            i += 1
            for name, value in variables.items():
                argv = [arg.replace(f"${name}", value) for arg in argv]
            steps.append(Step(argv=argv, line=first_line + start))
    return steps


def curl_request(argv: list[str]) -> Request:
    method, url, headers, body = None, None, {}, None
    args = iter(argv[1:])
    for arg in args:
        if arg == "-X":
            method = next(args)
        elif arg == "-H":
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif arg in ("-d", "--data"):
            body = next(args)
        elif arg in ("-s", "--silent"):
            continue  # progress output only; the request is the same
        elif arg.startswith("-"):
            raise AssertionError(f"curl option {arg} is not understood by this test")
        else:
            url = arg
    assert url, f"no URL in {argv}"
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return Request(method or ("POST" if body else "GET"), path, headers, body)


def parse_answer(answer: str) -> tuple[int, object]:
    status_text, _, body = answer.partition(" ")
    assert status_text.isdigit(), f"an answer starts with the HTTP status: {answer!r}"
    body = re.sub(r"\{\s*\.\.\.\s*\}", f'{{"{MORE}": true}}', body)
    body = re.sub(r",\s*\.\.\.\s*\}", f', "{MORE}": true}}', body)
    body = re.sub(r",\s*\.\.\.\s*\]", f', "{MORE}"]', body)
    body = re.sub(r":\s*\.\.\.(?=\s*[,}])", f': "{ANY}"', body)
    return int(status_text), json.loads(body)


def mismatches(expected, actual, path: str = "$") -> list[str]:
    if expected in ("...", ANY):
        return []
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        problems = []
        partial = expected.get(MORE) is True
        for key, value in expected.items():
            if key == MORE:
                continue
            if key not in actual:
                problems.append(f"{path}.{key}: missing")
            else:
                problems += mismatches(value, actual[key], f"{path}.{key}")
        if not partial:
            extra = sorted(set(actual) - set(expected))
            if extra:
                problems.append(f"{path}: undocumented keys {extra}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected a list, got {actual!r}"]
        partial = bool(expected) and expected[-1] == MORE
        shown = expected[:-1] if partial else expected
        if len(actual) < len(shown) or (not partial and len(actual) != len(shown)):
            return [f"{path}: {len(actual)} items, the README shows {len(shown)}"]
        problems = []
        for index, item in enumerate(shown):
            problems += mismatches(item, actual[index], f"{path}[{index}]")
        return problems
    if expected != actual:
        return [f"{path}: README says {expected!r}, the app answers {actual!r}"]
    return []


@pytest.fixture
def after_make_run(settings):
    settings.DEBUG = True
    call_command("demo", "--days", "2", "--accounts", "1", verbosity=0)
    call_command("demo_billing", "--no-faults", stdout=io.StringIO())


def test_readme_has_curl_examples_each_with_a_documented_answer():
    steps = readme_steps(README.read_text())
    calls = [step for step in steps if step.is_curl]

    assert len(calls) >= 8
    undocumented = [step.line for step in calls if step.answer is None]
    assert not undocumented, f"README lines {undocumented}: a curl without '# -> STATUS JSON'"


@pytest.mark.django_db
def test_readme_examples_answer_what_the_readme_says(client, after_make_run):
    failures = []
    for step in readme_steps(README.read_text()):
        if not step.is_curl:
            assert step.argv[:2] == ["python", "manage.py"], f"line {step.line}: {step.argv}"
            call_command(*step.argv[2:], stdout=io.StringIO())
            continue
        request = curl_request(step.argv)
        headers = dict(request.headers)
        content_type = headers.pop("Content-Type", "application/octet-stream")
        response = client.generic(
            request.method,
            request.path,
            data=request.body or "",
            content_type=content_type,
            headers=headers,
        )
        status, expected = parse_answer(step.answer)
        actual = json.loads(response.content)
        where = f"README line {step.line} ({request.method} {request.path})"
        if response.status_code != status:
            failures.append(f"{where}: status {response.status_code}, README says {status}")
        failures += [f"{where}: {problem}" for problem in mismatches(expected, actual)]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    ("answer", "actual", "problems"),
    [
        ('200 {"a": 1, ...}', {"a": 1, "b": 2}, 0),
        ('200 {"a": 1}', {"a": 1, "b": 2}, 1),
        ('200 {"a": "...", "b": ...}', {"a": "x", "b": 3}, 0),
        ('200 {"l": [{"i": 0}, ...]}', {"l": [{"i": 0}, {"i": 1}]}, 0),
        ('200 {"l": [{"i": 0}]}', {"l": [{"i": 0}, {"i": 1}]}, 1),
        ('200 {"l": [{"i": 1}]}', {"l": [{"i": 0}]}, 1),
        ("200 {...}", {"x": 1}, 0),
    ],
)
def test_the_answer_notation_elides_only_where_it_says_so(answer, actual, problems):
    _status, expected = parse_answer(answer)
    assert len(mismatches(expected, actual)) == problems


def _configuration_section(text: str) -> str:
    start = text.index("## Configuration")
    return text[start : text.index("\n## ", start + 1)]


def test_every_variable_settings_and_make_run_read_is_in_the_configuration_section():
    read = set()
    settings_text = (ROOT / "config" / "settings.py").read_text()
    read |= set(re.findall(r'env_(?:str|bool|int|list)\("([A-Z0-9_]+)"', settings_text))
    for script in (ROOT / "scripts").glob("*.py"):
        read |= set(re.findall(r'os\.environ(?:\.get\(|\[)"([A-Z0-9_]+)"', script.read_text()))
    for shell in [*(ROOT / "scripts").glob("*.sh"), ROOT / "Makefile"]:
        read |= set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", shell.read_text()))
        read |= set(re.findall(r"\$\(([A-Z][A-Z0-9_]+)\)", shell.read_text()))
    read -= {"DB_URL", "DB_URL_EMBEDDED"}  # Makefile macros, not variables users set

    documented = set()
    for cell in re.findall(r"^\| ([^|]+) \|", _configuration_section(README.read_text()), re.M):
        # A cell may name several: `CACHE_URL` (or `REDIS_URL`), `STATUS_X_WARNING` / `_CRITICAL`.
        names = re.findall(r"`(_?[A-Z][A-Z0-9_]*)`", cell)
        for name in names:
            if name.startswith("_") and names and not names[0].startswith("_"):
                name = names[0].rsplit("_", 1)[0] + name
            documented.add(name)

    assert {"PORT", "DATABASE_URL", "METEROPS_DB"} <= read
    assert sorted(read - documented) == []
