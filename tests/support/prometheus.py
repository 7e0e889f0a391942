"""A strict reader of the Prometheus text format 0.0.4, for tests that scrape /metrics: it
fails on anything malformed and gives samples back with labels unescaped."""

from __future__ import annotations

import re

__all__ = ["Sample", "parse", "samples_of", "value_of"]


Sample = tuple[str, tuple[tuple[str, str], ...], float]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _unescape(text: str) -> str:
    return re.sub(r'\\\\|\\"|\\n', lambda m: _UNESCAPE[m.group(0)], text)


def parse(text: str) -> tuple[dict[str, str], dict[str, str], list[Sample]]:
    """(help by name, type by name, samples); raises AssertionError on anything malformed."""
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    samples: list[Sample] = []
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[len("# HELP ") :].partition(" ")
            helps[name] = doc.replace("\\n", "\n").replace("\\\\", "\\")
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE ") :].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in types, f"second TYPE line for {name}"
            types[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"malformed sample line {line!r}"
        name, label_text, value = match.groups()
        labels: list[tuple[str, str]] = []
        if label_text:
            body = label_text[1:-1]
            pos = 0
            while pos < len(body):
                label = _LABEL.match(body, pos)
                assert label, f"malformed labels in {line!r} at {body[pos:]!r}"
                labels.append((label.group(1), _unescape(label.group(2))))
                pos = label.end()
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or family in types, f"sample {name} before its TYPE line"
        samples.append((name, tuple(labels), float(value)))
    return helps, types, samples


def value_of(samples: list[Sample], name: str, **labels: str) -> float:
    wanted = tuple(sorted(labels.items()))
    found = [v for n, ls, v in samples if n == name and tuple(sorted(ls)) == wanted]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def samples_of(samples: list[Sample], name: str, **labels: str) -> list[Sample]:
    """The samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return [s for s in samples if s[0] == name and wanted <= set(s[1])]
