"""Where every recipe value comes from (issue #25): the `sources:` mapping of a recipe entry in
`config/methods/<method>.yaml`, keyed by the dotted path of a value (`train.batch`, `net.dropout`,
`paper.architecture`, `steps`) or of a block that one citation covers (`net`), or `*` for the whole
entry of a demo recipe.

Why machine-checkable: a verdict compares a run with a paper only through these values, so a value
taken from memory would make a *reproduced* verdict worth no more than that memory. A source is one
of four forms (`parse_source`):

- a citation: "<X> paper <locator>" (locator: §, Sec., Table, Fig., App., Alg., Eq., abstract) or an
  official repository file "owner/repo@<commit>:<path>", read by us in that source;
- "not stated in <X> paper ...; ours: <value>, because <reason>": the paper gives no value, ours is a
  choice. It is no recipe difference in a verdict unless the source goes on with "; depends: <X> paper
  <locator>", naming where the paper says its result depends on it: then it always is one;
- "unread: <what could not be read>; ours: <value>, because <reason>": the paper states the value
  but its text could not be reached; like a `depends` value it always counts as a difference, so no
  verdict rests on it;
- "departs: <citation> gives <paper value>; ours: <value>, because <reason>": the paper's value is
  known and ours differs on purpose (e.g. PD's x-parameterised students vs ours initialised exactly
  from the EDM teacher); a run is compared with the paper's value, so ours always shows in the diff;
- "ours: <value>, because <reason>": only in demo recipes (no `paper:` block), never judged.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from benchmark.errors import ConfigError

# the papers a source may cite, with the copy of each that was read
PAPERS = {
    "EDM": "Karras et al. 2022, arXiv:2206.00364",
    "EDM2": "Karras et al. 2024, arXiv:2312.02696",
    "CM": "Song et al. 2023, arXiv:2303.01469 (ICML 2023)",
    "iCT": "Song & Dhariwal 2024, arXiv:2310.14189 (ICLR 2024)",
    "MCM": "Heek, Hoogeboom & Salimans 2024, arXiv:2403.06807v3",
    "PD": "Salimans & Ho 2022, arXiv:2202.00512 (ICLR 2022; read: the OpenReview submission, §1-7, no appendix)",
    "ECT": "Geng et al. 2024, arXiv:2406.14548",
    "IMM": "Zhou, Ermon & Song 2025, arXiv:2503.07565 (ICML 2025)",
}
_PAPER = "(?:" + "|".join(PAPERS) + ") paper"
_LOCATOR = r"(?:§\s*\d[\w.]*|Sec\.\s*\d[\w.]*|Table\s*\d+|Fig\.\s*\d+|App\.\s*[A-Z][\w.]*|Alg(?:orithm|\.)\s*\d+" \
           r"|Eq\.\s*\(?\d+|abstract)"
PAPER_CITE = re.compile(rf"\b{_PAPER} {_LOCATOR}")
REPO_CITE = re.compile(r"\b[\w.-]+/[\w.-]+@[0-9a-f]{7,40}:[\w./-]+")
BANNED = re.compile(r"unverified|memory", re.IGNORECASE)
_OURS = r"ours: (?P<value>.+?), because (?P<why>.+?)"
_FORMS = {
    "not_stated": re.compile(rf"^not stated in (?P<paper>{_PAPER})\b[^;]*; {_OURS}(?:; depends: (?P<dep>.+))?$"),
    "unread": re.compile(rf"^unread: (?P<what>[^;]+); {_OURS}$"),
    "departs": re.compile(rf"^departs: (?P<cite>[^;]+?) gives (?P<paper_value>[^;]+); {_OURS}$"),
    "ours": re.compile(rf"^{_OURS}$"),
}
DEMO_KEY = "*"


@dataclass(frozen=True)
class Source:
    """A parsed source string; `counts` says whether a run's value is compared with it at all."""

    kind: str  # 'cited' | 'not_stated' | 'unread' | 'departs' | 'ours'
    text: str
    value: str | None = None  # the "ours: <value>" text
    depends: str | None = None  # where the paper says its result depends on the unstated value
    paper_value: str | None = None  # 'departs': the value the paper states

    @property
    def always_differs(self) -> bool:
        """No run can match it: the paper's value is unknown to us and its result depends on it."""
        return self.kind == "unread" or (self.kind == "not_stated" and self.depends is not None)

    @property
    def ignored_in_diff(self) -> bool:
        """The paper states no value and does not say its result depends on one."""
        return self.kind == "not_stated" and self.depends is None


def parse_source(text: Any) -> Source:
    """The Source a string states; ConfigError naming what is wrong with a malformed one."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"source {text!r} is not a non-empty string", "cite a paper section or a repository file")
    s = " ".join(text.split())
    if BANNED.search(s):
        raise ConfigError(f"source '{s}' says UNVERIFIED or memory", "read the value in the paper or its code")
    for kind, form in _FORMS.items():
        m = form.match(s)
        if m:
            g = m.groupdict()
            for part in ("dep", "cite"):
                if g.get(part) is not None and not (PAPER_CITE.search(g[part]) or REPO_CITE.search(g[part])):
                    raise ConfigError(f"source '{s}': '{g[part]}' names no paper section or repository file",
                                      "cite e.g. 'MCM paper App. A.1' or 'owner/repo@commit:path'")
            return Source(kind, s, m["value"].strip(), g.get("dep"), g.get("paper_value"))
    if s.startswith(("not stated", "unread", "departs", "ours")):
        raise ConfigError(f"source '{s}' does not follow its form",
                          "follow one of the forms in benchmark/sources.py (not stated in / unread / departs / ours)")
    if not (PAPER_CITE.search(s) or REPO_CITE.search(s)):
        raise ConfigError(f"source '{s}' names no paper section/table/appendix and no repository file",
                          "cite e.g. 'MCM paper App. A.1' or 'NVlabs/edm@008a4e5:train.py'")
    return Source("cited", s)


def leaves(entry: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every value of a recipe entry by dotted path (lists are values), `sources` itself excluded."""
    out: dict[str, Any] = {}
    for k, v in entry.items():
        if not prefix and k == "sources":
            continue
        path = f"{prefix}.{k}" if prefix else str(k)
        out.update(leaves(v, path) if isinstance(v, dict) else {path: v})
    return out


def source_of(path: str, sources: dict[str, str]) -> str | None:
    """The source string that covers `path`: its own key, else the nearest block above it, else `*`."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in sources:
            return sources[key]
    return sources.get(DEMO_KEY)


def recipe_sources(entry: dict[str, Any]) -> dict[str, Source]:
    """Parsed source of every value of a recipe entry (unvalidated entries: see check_entry)."""
    src = entry.get("sources") or {}
    return {p: parse_source(t) for p in leaves(entry) if (t := source_of(p, src)) is not None}


def check_entry(where: str, entry: dict[str, Any]) -> list[str]:
    """Problems with one recipe entry's sources (empty: every value carries a well-formed source)."""
    src = entry.get("sources")
    if not isinstance(src, dict):
        return [f"{where}: no `sources:` mapping"]
    values, paper = leaves(entry), isinstance(entry.get("paper"), dict)
    problems = [f"{where}: sources key '{k}' names no value of the entry" for k in src
                if k != DEMO_KEY and k not in values and not any(p.startswith(f"{k}.") for p in values)]
    if paper and DEMO_KEY in src:
        problems.append(f"{where}: a paper recipe needs a source per value, not '*'")
    for path, value in values.items():
        text = source_of(path, src)
        if text is None:
            problems.append(f"{where}: {path} has no source")
            continue
        try:
            s = parse_source(text)
        except ConfigError as err:
            problems.append(f"{where}: {path}: {err}")
            continue
        if paper and s.kind == "ours":
            problems.append(f"{where}: {path}: a paper recipe value needs a citation or 'not stated in ...'")
        if s.value is not None and path in src and not same_value(s.value, value):
            problems.append(f"{where}: {path}: source says ours: {s.value} but the value is {value!r}")
    return problems


def same_value(text: str, value: Any) -> bool:
    """Whether the 'ours: <text>' of a source states `value` (YAML syntax; numbers compared as floats)."""
    try:
        stated = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return _same(_number(stated), _number(value))


def stated_value(text: str) -> Any:
    """A value written in a source ('departs: ... gives <value>') as YAML reads it."""
    try:
        return _number(yaml.safe_load(text))
    except yaml.YAMLError:
        return text


def _number(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return [_number(x) for x in v] if isinstance(v, (list, tuple)) else v


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b
