"""CV and JD text for the synthetic market: the templates that write it, the parser that reads JDs.

Templates vary order and wording but always state every field, in plain English (lower case
but for sentence starts, places and companies), short enough for ~128 (CV) and ~112 (JD) BPE
tokens. With `variation` > 0, `render_cvs` / `render_jds` write that share of the texts in a
varied style instead (`market_styles`). `parse_jd` reads any JD template or varied JD back, and
tolerates partial or garbled text: it matches lexicon phrases (and `market_styles`'s aliases)
clause by clause, so it never depends on one layout. Lines that start with "- ", "* " or "• "
are bullets: they are nice-to-have skills when the heading line above them says so.
"""

import dataclasses
import re

import numpy as np

from girl_jax.data import market_styles as styles
from girl_jax.data import market_taxonomy as tax

NUM_CV_TEMPLATES = 4
NUM_JD_TEMPLATES = 4

_REMOTE_WANT = ("prefers office work", "open to hybrid work", "wants remote work")
_RELOCATE = ("will not relocate", "willing to relocate")


def _join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _years(n: int) -> str:
    return "1 year" if n == 1 else f"{n} years"


def _education(level: int, field: int, article: bool = False) -> str:
    if level == 0:
        return "no degree"
    text = f"{tax.EDUCATION_LEVELS[level]} in {tax.DEGREE_FIELDS[field]}"
    return f"a {text}" if article else text


def render_cv(
    template: int,
    *,
    family: int,
    seniority: int,
    years: int,
    edu_level: int,
    edu_field: int,
    skills: list[int],
    city: int,
    relocate: int,
    remote_pref: int,
    salary: int,
    past: list[tuple[int, int, int]],
) -> str:
    """One CV; `past` holds (title id, company id, years) from most recent, `skills` skill ids."""
    title = tax.TITLES[family * tax.NUM_LEVELS + seniority]
    place = tax.CITIES[city].title()
    skill_words = [tax.SKILLS[s] for s in skills]
    roles = [f"{tax.TITLES[t]} at {tax.COMPANIES[c].title()}, {_years(y)}" for t, c, y in past]
    remote, reloc = _REMOTE_WANT[remote_pref], _RELOCATE[relocate]
    if template == 0:
        return (
            f"{title.capitalize()} with {_years(years)} of experience, based in {place}. "
            f"Skills: {', '.join(skill_words)}. Experience: {'; '.join(roles)}. "
            f"Education: {_education(edu_level, edu_field)}. {remote.capitalize()}, {reloc}. "
            f"Expected salary {salary}k."
        )
    if template == 1:
        return (
            f"Profile: {tax.SENIORITIES[seniority]} {tax.FAMILIES[family]} professional in "
            f"{place}, {_years(years)} in total. Education: {_education(edu_level, edu_field)}. "
            f"Work history: {'; '.join(roles)}. Key skills: {', '.join(skill_words)}. "
            f"Looking for about {salary}k, {remote}, {reloc}."
        )
    if template == 2:
        return (
            f"Current role: {title} | Location: {place} | Experience: {_years(years)} | "
            f"Skills: {', '.join(skill_words)} | Education: {_education(edu_level, edu_field)} | "
            f"Previous: {'; '.join(roles)} | Salary: {salary}k | Work: {remote}, {reloc}"
        )
    narrative = [f"{tax.TITLES[t]} at {tax.COMPANIES[c].title()} ({_years(y)})" for t, c, y in past]
    return (
        f"I am a {title} in {place} with {_years(years)} behind me. I know "
        f"{_join_and(skill_words)}. I hold {_education(edu_level, edu_field, article=True)}. "
        f"Before this I worked as {_join_and(narrative)}. I would like around {salary}k, "
        f"{remote}, and {reloc}."
    )


def _degree_need(level: int, field: int) -> str:
    return "no degree needed" if level == 0 else _education(level, field, article=True)


def render_jd(
    template: int,
    *,
    company: int,
    family: int,
    seniority: int,
    required: list[int],
    nice: list[int],
    min_years: int,
    degree_level: int,
    degree_field: int,
    city: int,
    remote: int,
    salary_lo: int,
    salary_hi: int,
    duties: list[int],
) -> str:
    """One JD; skills and duties are ids into `SKILLS` and `RESPONSIBILITIES`."""
    title = tax.TITLES[family * tax.NUM_LEVELS + seniority]
    firm, place = tax.COMPANIES[company].title(), tax.CITIES[city].title()
    policy = tax.REMOTE_POLICIES[remote]
    req = [tax.SKILLS[s] for s in required]
    plus = [tax.SKILLS[s] for s in nice]
    resp = [tax.RESPONSIBILITIES[r] for r in duties]
    degree = _degree_need(degree_level, degree_field)
    if template == 0:
        nice_part = f" Nice to have: {', '.join(plus)}." if plus else ""
        return (
            f"{title.capitalize()} at {firm}, {place}, {policy}. Salary {salary_lo}k to "
            f"{salary_hi}k. " + " ".join(f"You will {r}." for r in resp) + f" Required: "
            f"{', '.join(req)}.{nice_part} At least {_years(min_years)} of experience, {degree}."
        )
    if template == 1:
        nice_part = f" Bonus: {', '.join(plus)}." if plus else ""
        return (
            f"{firm} is hiring a {title} in {place}. Work is {policy}. Must have: "
            f"{', '.join(req)}.{nice_part} "
            + " ".join(f"{r.capitalize()}." for r in resp)
            + f" Needs {min_years}+ years and {degree}. Pay {salary_lo}k - {salary_hi}k."
        )
    if template == 2:
        nice_part = f" | Plus: {', '.join(plus)}" if plus else ""
        return (
            f"Role: {title} | Company: {firm} | Location: {place}, {policy} | Skills: "
            f"{', '.join(req)}{nice_part} | Experience: {_years(min_years)} minimum | "
            f"Education: {degree} | Salary: {salary_lo}k to {salary_hi}k | Duties: "
            + "; ".join(resp)
        )
    nice_part = f"; {', '.join(plus)} is a plus" if plus else ""
    return (
        f"Join {firm} as {title} ({policy}, {place}). "
        + " ".join(f"{r.capitalize()}." for r in resp)
        + f" We need {_join_and(req)}{nice_part}. You have {min_years}+ years and {degree}. "
        f"We pay {salary_lo}k to {salary_hi}k."
    )


def _render(kind: str, plain, facts, templates, variation: float, seed: int) -> list[str]:
    """Row i: plain template text, or (share `variation`, drawn per row) a varied style."""
    vary = styles.vary_cv if kind == "cv" else styles.vary_jd
    out = []
    for i, (template, f) in enumerate(zip(templates, facts)):
        rng = styles.row_rng(seed, kind, i) if variation > 0 else None
        varied = variation > 0 and rng.random() < variation
        out.append(vary(rng, **f) if varied else plain(template, **f))
    return out


def render_cvs(s: dict, variation: float = 0.0, seed: int = 0) -> list[str]:
    """CV text of every seeker, from the structured arrays (see `market`); `variation` (with
    `seed`): the share written in a varied style (`market_styles`), 0 = the templates only."""
    cols = {k: v.tolist() for k, v in s.items()}
    keys = "family seniority years edu_level edu_field city relocate remote_pref salary".split()
    facts = (
        {k: cols[k][i] for k in keys}
        | dict(
            skills=cols["skills"][i][: cols["num_skills"][i]],
            past=list(zip(cols["past_title"][i], cols["past_company"][i], cols["past_years"][i]))[
                : cols["num_past"][i]
            ],
        )
        for i in range(len(cols["family"]))
    )
    return _render("cv", render_cv, facts, cols["template"], variation, seed)


def render_jds(j: dict, variation: float = 0.0, seed: int = 0) -> list[str]:
    """JD text of every job, from the structured arrays (see `market`); `variation` and `seed`
    as for `render_cvs`. Every varied JD parses to the fields of its plain JD."""
    cols = {k: v.tolist() for k, v in j.items()}
    keys = "company family seniority min_years degree_level degree_field city remote".split()
    facts = (
        {k: cols[k][i] for k in keys + ["salary_lo", "salary_hi"]}
        | dict(
            required=cols["required"][i][: cols["num_required"][i]],
            nice=cols["nice"][i][: cols["num_nice"][i]],
            duties=[d for d in cols["duties"][i] if d >= 0],
        )
        for i in range(len(cols["family"]))
    )
    return _render("jd", render_jd, facts, cols["template"], variation, seed)


@dataclasses.dataclass(frozen=True)
class ParsedJD:
    """Fields read back from a JD; ids index the taxonomy tables, -1 means not found.

    `valid` is True when the essentials were recovered: a family (from the title, else from
    the skills) and at least one skill. The oracle scores only valid JDs.
    """

    valid: bool
    family: int
    seniority: int
    title: int
    required: tuple[int, ...]
    nice: tuple[int, ...]
    company: int
    city: int
    remote: int
    min_years: int
    degree_level: int
    degree_field: int
    salary_lo: int
    salary_hi: int

    @property
    def title_text(self) -> str | None:
        return tax.TITLES[self.title] if self.title >= 0 else None

    @property
    def family_name(self) -> str | None:
        return tax.FAMILIES[self.family] if self.family >= 0 else None


def _phrase_table() -> dict[tuple[str, ...], tuple[str, int]]:
    table = {}
    for kind, phrases in (
        ("skill", tax.SKILLS),
        ("title", tax.TITLES),
        ("city", tax.CITIES),
        ("company", tax.COMPANIES),
    ):
        for i, p in enumerate(phrases):
            table[tuple(p.split())] = (kind, i)
    return table | styles.PARSE_ALIASES  # "sr data analyst", "a/b testing", "bramble & co"


_PHRASES = _phrase_table()
_FIELDS = {tuple(f.split()): i for i, f in enumerate(tax.DEGREE_FIELDS)}
_MAX_WORDS = max(len(k) for k in list(_PHRASES) + list(_FIELDS))
_WORD = re.compile(r"[a-z0-9]+")
_CLAUSE = re.compile(r"[.;|\n!?]\s")
_NICE_CUES = ("nice to have", "bonus", "plus", "desirable", "ideally")
_YEARS = re.compile(r"(\d{1,2})\s*\+?\s*(?:years|year|yrs)\b")
_SALARY = re.compile(r"(\d{2,3})\s*k\s*(?:to|-|–|and)\s*(\d{2,3})\s*k\b")
_DEGREE = re.compile(r"\b(phd|master|bachelor)s?\b(?:'s)?(?:\s+degree)?\s+in\s+([a-z ]+)")
# read only where the patterns above find nothing (so plain text parses as it always did)
_SALARY_ALT = re.compile(
    r"£?(\d{2,3})(?:,000|\s?k)?\s*(?:to|-|–|and)\s*£?(\d{2,3})(?:,000|\s?k|\s+thousand)\b"
)
_DEGREE_ALT = re.compile(r"\b(msc|ma|bsc|ba)\b(?:\s+degree)?\s+in\s+([a-z ]+)")
_BULLET = ("- ", "* ", "• ")
_LEVEL_WORDS = {
    "graduate": 0,
    "trainee": 0,
    "junior": 0,
    "assistant": 0,
    "commis": 0,
    "senior": 2,
    "sous": 2,
    "lead": 3,
    "head": 3,
    "manager": 3,
}


def _longest(words: list[str], i: int, table: dict) -> tuple[int, object]:
    for n in range(min(_MAX_WORDS, len(words) - i), 0, -1):
        hit = table.get(tuple(words[i : i + n]))
        if hit is not None:
            return n, hit
    return 0, None


def _scan(clause: str) -> list[tuple[str, int]]:
    """Lexicon phrases in one clause, longest match first, left to right."""
    words, found, i = _WORD.findall(clause), [], 0
    while i < len(words):
        n, hit = _longest(words, i, _PHRASES)
        if hit:
            found.append(hit)
        i += max(n, 1)
    return found


def _first(hits: list[tuple[str, int]], kind: str) -> int:
    return next((i for k, i in hits if k == kind), -1)


def _unique(ids: list[int]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(ids))


def _degree(low: str) -> tuple[int, int]:
    if "no degree" in low:
        return 0, -1
    m = _DEGREE.search(low)
    alt = _DEGREE_ALT.search(low) if m is None else None
    if alt is not None:  # "msc in statistics"
        _, field = _longest(alt.group(2).split(), 0, _FIELDS)
        return styles.PARSE_DEGREE_ABBR[alt.group(1)], -1 if field is None else field
    if m is None:
        level = next(
            (i for i, w in enumerate(tax.EDUCATION_LEVELS) if re.search(rf"\b{w}", low)), -1
        )
        return level, -1
    words = m.group(2).split()
    _, field = _longest(words, 0, _FIELDS)
    return tax.EDUCATION_LEVELS.index(m.group(1)), -1 if field is None else field


def parse_jd(text) -> ParsedJD | None:
    """Recovers a JD's fields from text in any template; None when nothing is recognisable."""
    if not isinstance(text, str) or not text.strip():
        return None
    low = text.lower()
    required, nice, hits, nice_section = [], [], [], False
    for line in low.split("\n"):  # one line (every plain template): clause by clause
        bullet = line.lstrip().startswith(_BULLET)
        line_cue = False
        for clause in _CLAUSE.split(line + " "):
            clause_hits = _scan(clause)
            hits += clause_hits
            cue = any(re.search(rf"\b{c}\b", clause) for c in _NICE_CUES)
            line_cue |= cue
            is_nice = cue or (bullet and nice_section)  # bullets under a "nice to have:" line
            (nice if is_nice else required).extend(i for k, i in clause_hits if k == "skill")
        nice_section = nice_section if bullet or not line.strip() else line_cue
    required = _unique(required)
    nice = tuple(s for s in _unique(nice) if s not in required)
    if not required:  # garbled cue words: every skill counts as required
        required, nice = nice, ()
    title, company, city = _first(hits, "title"), _first(hits, "company"), _first(hits, "city")
    if not (required or title >= 0 or company >= 0 or city >= 0):
        return None
    if title >= 0:
        family, seniority = divmod(title, tax.NUM_LEVELS)
    else:
        fams = [int(tax.SKILL_FAMILY[s]) for s in required]
        family = max(set(fams), key=fams.count) if fams else -1
        words = _WORD.findall(low)
        seniority = next((_LEVEL_WORDS[w] for w in words if w in _LEVEL_WORDS), 1)
    remote = next(
        (
            i
            for i, pat in (
                (2, r"\bremote\b"),
                (1, r"\bhybrid\b"),
                (0, r"\bon[ -]?site\b|\boffice\b"),
            )
            if re.search(pat, low)
        ),
        -1,
    )
    years = _YEARS.search(low)
    salary = _SALARY.search(low) or _SALARY_ALT.search(low)
    lo, hi = sorted(int(x) for x in salary.groups()) if salary else (-1, -1)
    level, field = _degree(low)
    return ParsedJD(
        valid=family >= 0 and bool(required),
        family=family,
        seniority=seniority,
        title=title,
        required=required,
        nice=nice,
        company=company,
        city=city,
        remote=remote,
        min_years=int(years.group(1)) if years else -1,
        degree_level=level,
        degree_field=field,
        salary_lo=lo,
        salary_hi=hi,
    )


def parsed_fields(parsed: list[ParsedJD]) -> dict[str, np.ndarray]:
    """Stacks parsed JDs into the arrays `_utility` reads, padding skill lists with -1."""
    out = {}
    keys = "company family seniority min_years degree_level degree_field city remote salary_lo"
    for key in keys.split() + ["salary_hi"]:
        out[key] = np.array([getattr(p, key) for p in parsed], dtype=np.int64)
    for key in ("required", "nice"):
        width = max([1] + [len(getattr(p, key)) for p in parsed])
        pad = np.full((len(parsed), width), -1, dtype=np.int64)
        for i, p in enumerate(parsed):
            pad[i, : len(getattr(p, key))] = getattr(p, key)
        out[key] = pad
    return out
