"""Varied CV and JD text for the synthetic market (`data.text_variation`, off by default).

The plain templates of `market_text` write every CV and JD in one of 4 fixed ways. A varied
text states the SAME hidden facts the way people write them: one of five layouts (prose,
sections with headings, bullet lists, a one-line summary, a "key skills" list) with its
sentences or sections shuffled, lower case or the usual case (SQL, AWS, HACCP, Power BI),
synonyms and abbreviations (A/B testing, K8s, Sr, MSc, "yrs", "£58k", "55-60k", "around 60
thousand"), an irrelevant line or two (hobbies, references, an email and phone line, an
employer's boilerplate). CVs also leave things out (salary, degree, location wishes) and carry
typos at a small rate; CVs are written on one line, as `girl generate` reads a CV file.

JDs keep every field `market_text.parse_jd` reads, in forms it reads back to the fields of the
plain JD: skills, titles and companies are a taxonomy phrase or an alias of `PARSE_ALIASES`,
required and nice skills keep their order, irrelevant lines name nothing the parser looks for,
and JDs carry no typos. Everything is drawn from the `random.Random` a caller passes
(`row_rng`: one per row, seeded by the market seed), so a market's text is reproducible.
"""

import itertools
import random
import re

from girl_jax.data import market_taxonomy as tax

CV_LAYOUTS = JD_LAYOUTS = ("prose", "sections", "bullets", "summary", "key_skills")
CV_TYPO_SHARE, TYPO_RATE = 0.4, 0.03  # share of varied CVs with typos; typo rate per word
# most pieces (`_pieces`, ~ tokens) of a varied text: plain CVs / JDs have <= 108 / 91 tokens
CV_BUDGET, JD_BUDGET = 100, 85
_PIECE = re.compile(r"[A-Za-z]+|\d+|[^\w\s]|\n")


def _table(text: str, sep: str = ";") -> dict[str, tuple[str, ...]]:
    """ "key: a, b; key2: c" -> {"key": ("a", "b"), "key2": ("c",)}."""
    items = (item.split(":") for item in text.split(sep) if item.strip())
    return {k.strip(): tuple(v.strip() for v in vs.split(",")) for k, vs in items}


_UPPER = "sql aws etl seo ppc crm vat ifrs cpr haccp bim sap iv b2b ci hr bi ab uk cv".split()
_MIXED = dict(w.split("=") for w in (
    "apis=APIs javascript=JavaScript typescript=TypeScript graphql=GraphQL autocad=AutoCAD "
    "hubspot=HubSpot quickbooks=QuickBooks numpy=NumPy bigquery=BigQuery indesign=InDesign "
    "matlab=MATLAB node=Node.js"
).split())  # fmt: skip
_PROPER = set(
    "python java golang rust postgres git docker kubernetes linux react redis kotlin excel "
    "tableau power pandas spark looker airflow sage xero salesforce mailchimp figma sketch "
    "illustrator photoshop revit lean six sigma google ads analytics english".split()
)
_CASED = {**{w: w.upper() for w in _UPPER}, **_MIXED}
_SMALL = {"of", "de", "and", "at", "in", "to"}
# Other ways to write a skill. In JDs too: each reads back as the skill (`PARSE_ALIASES`).
_SKILL_SYNONYMS = _table(
    "ab testing: A/B testing, split testing; postgres: PostgreSQL; ci pipelines: CI/CD "
    "pipelines, CI/CD; kubernetes: K8s; scikit learn: scikit-learn, sklearn; microservices: "
    "micro-services; unit testing: unit tests; code review: code reviews; rest apis: RESTful "
    "APIs, REST API design; data visualisation: data visualization, "
    "data viz; data cleaning: data cleansing; email marketing: e-mail marketing, email "
    "campaigns; seo: search engine optimisation; ppc: pay-per-click; google analytics: GA4; "
    "power bi: PowerBI; health and safety: health & safety; diversity and inclusion: "
    "diversity & inclusion; learning and development: learning & development; picking and "
    "packing: pick and pack; stock taking: stocktaking; forklift driving: forklift licence; "
    "accounts payable: purchase ledger; accounts receivable: sales ledger; bookkeeping: "
    "book-keeping; month end close: month-end close; "
    "b2b sales: business-to-business sales; account management: account mgmt; customer "
    "onboarding: client onboarding; user research: UX research; usability testing: user "
    "testing; wireframing: wireframes; special needs support: SEN support, SEND support; "
    "early years: EYFS; hr policies: HR policy"
)
_TITLE_SUBS = _table("senior: senior, sr, snr; junior: junior, jr; advisor: advisor, adviser")
# CVs only (CVs are never parsed): forms a cut-off plain JD could also end with ("lead gen")
_CV_SKILL_SYNONYMS = _table(
    "machine learning: ML; lead generation: lead gen; month end close: month-end; javascript: "
    "JS; golang: Go; excel: MS Excel, Microsoft Excel; customer onboarding: "
    "onboarding clients; google ads: AdWords"
)
_CV_TITLE_SUBS = _TITLE_SUBS | _table("developer: developer, dev; executive: executive, exec")
_DEGREE_ABBR = {1: ("BSc", "BA"), 2: ("MSc", "MA"), 3: ("PhD",)}
PARSE_DEGREE_ABBR = {"bsc": 1, "ba": 1, "msc": 2, "ma": 2}  # what `parse_jd` also reads
_NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
_FIRST = "amira ben chloe daniel ewan fatima grace harry isla jacob kasia liam maya nathan".split()
_LAST = "ahmed brown clarke davies evans fraser green hughes khan lewis murphy novak patel".split()
_CV_EXTRAS = (
    "Hobbies: hiking, chess and cooking for friends.|Interests: running, photography and "
    "travel.|References available on request.|Full UK driving licence.|Languages: English and "
    "Polish.|Volunteer at a local food bank."
).split("|")
_JD_EXTRAS = (
    "We are an equal opportunities employer.|Apply with your CV and a short cover letter.|"
    "Closing date: end of the month.|Benefits: pension, health cover and free lunches.|"
    "We review applications as they arrive.|Friendly team, flexible hours."
).split("|")
_JD_REMOTE = ("on site|on-site|office-based", "hybrid|hybrid working",
              "remote|fully remote|remote-first")  # fmt: skip
_CV_REMOTE = ("office-based|prefers the office", "open to hybrid|hybrid",
              "remote only|WFH preferred")  # fmt: skip
_CV_RELOCATE = ("not looking to relocate|can't relocate", "happy to relocate|open to relocation")
_JD_PAY = ("£{lo}k - £{hi}k|£{lo}k to £{hi}k|{lo}-{hi}k|£{lo}-{hi}k|£{lo},000 - £{hi},000|"
           "{lo}k to {hi}k|between £{lo}k and £{hi}k|{lo} to {hi} thousand").split("|")  # fmt: skip
_CV_PAY = "£{k}k|{k}k|£{lo}-{hi}k|around {r} thousand|£{k},000|{k}k+".split("|")
_JD_NICE = ("Nice to have: {l}.|Bonus points for {j}.|{j} would be a plus.|"
            "Ideally also {j}.").split("|")  # fmt: skip
_CV_HEADS = ("Skills|Experience|Education", "SKILLS|EXPERIENCE|EDUCATION",
             "Key skills:|Work history:|Education:")  # fmt: skip


def _words(text: str) -> tuple[str, ...]:
    return tuple("".join(c if c.isalnum() else " " for c in text.lower()).split())


def _aliases() -> dict[tuple[str, ...], tuple[str, int]]:
    """Word tuples `parse_jd` also reads: synonyms of skills, title abbreviations, "& co"."""
    out = {}
    for skill, writings in _SKILL_SYNONYMS.items():
        for w in writings:
            out[_words(w)] = ("skill", tax.SKILLS.index(skill))
    for i, title in enumerate(tax.TITLES):
        for words in itertools.product(*[_TITLE_SUBS.get(w, (w,)) for w in title.split()]):
            out[words] = ("title", i)
    for i, company in enumerate(tax.COMPANIES):
        if company.endswith(" and co"):
            out[tuple(company.split()[:-2]) + ("co",)] = ("company", i)
    phrases = {tuple(p.split()) for p in tax.SKILLS + tax.TITLES + tax.CITIES + tax.COMPANIES}
    texts = [" ".join(p) for p in phrases]
    for words, (kind, i) in list(out.items()):
        cut = [t for t in texts if t.startswith(" ".join(words)) and words not in phrases]
        if cut or len(" ".join(words)) < 3:  # a plain JD cut short must not read differently
            raise ValueError(f"market styles: alias {' '.join(words)!r} is short or cuts {cut}")
        if words in phrases:  # the phrase itself: keep it out, and check it is the same one
            canonical = {"skill": tax.SKILLS, "title": tax.TITLES, "company": tax.COMPANIES}
            if tuple(canonical[kind][i].split()) != words:
                raise ValueError(f"market styles: alias {' '.join(words)!r} shadows a phrase")
            del out[words]
    return out


PARSE_ALIASES = _aliases()


def row_rng(seed: int, kind: str, row: int) -> random.Random:
    """The generator of row `row`'s style (`kind`: "cv" or "jd"), the same in every process."""
    return random.Random(f"girl-market-text:{int(seed)}:{kind}:{int(row)}")


def _nat(phrase: str, title: bool = False) -> str:
    """`phrase` as people write it: acronyms, product names; every word capitalised if title."""
    out = []
    for w in phrase.split():
        if w in _CASED:
            out.append(_CASED[w])
        else:
            out.append(w.capitalize() if w in _PROPER or (title and w not in _SMALL) else w)
    return " ".join(out)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _pick(rng, options: str) -> str:
    return rng.choice(options.split("|"))


def _skill(rng, s: int, cv: bool = False) -> str:
    name = tax.SKILLS[s]
    forms = _SKILL_SYNONYMS.get(name, ()) + (_CV_SKILL_SYNONYMS.get(name, ()) if cv else ())
    return rng.choice(forms) if forms and rng.random() < 0.35 else _nat(name)


def _title(rng, t: int, cv: bool = False) -> str:
    subs = _CV_TITLE_SUBS if cv else _TITLE_SUBS
    words = [rng.choice(subs.get(w, (w,))) for w in tax.TITLES[t].split()]
    return _nat(" ".join(words), title=rng.random() < 0.6)


def _company(rng, c: int) -> str:
    name = _nat(tax.COMPANIES[c], title=True)
    if name.endswith(" and Co") and rng.random() < 0.5:
        name = name[: -len(" and Co")] + " & Co"
    return name + rng.choice(("", "", " Ltd"))


def _place(rng, c: int, cv: bool = False) -> str:
    city = tax.CITIES[c].capitalize()
    country = {"dublin": "Ireland", "belfast": "Northern Ireland"}.get(tax.CITIES[c], "UK")
    forms = [city, city, f"{city}, {country}", f"central {city}", f"{city} city centre"]
    return rng.choice(forms + ([f"{city} area", f"near {city}"] if cv else []))


def _join(rng, items: list[str]) -> str:
    last = " and " if len(items) > 1 and rng.random() < 0.5 else ", "
    return last.join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


def _an(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _jd_degree(rng, level: int, field: int) -> str:
    """A degree as a JD may write it (`parse_jd` reads every form back)."""
    if level == 0:
        return rng.choice(("no degree needed", "no degree required"))
    name, subject = tax.EDUCATION_LEVELS[level], tax.DEGREE_FIELDS[field]
    subject = _nat(subject, title=rng.random() < 0.5)
    abbr = rng.choice(_DEGREE_ABBR[level])
    forms = [f"a {name} in {subject}", f"{'an' if abbr[0] == 'M' else 'a'} {abbr} in {subject}"]
    forms += [f"a {name}'s degree in {subject}"] if level < 3 else []
    return rng.choice(forms) + rng.choice(("", "", " or similar"))


def _cv_degree(rng, level: int, field: int) -> str | None:
    """A CV's degree line, or None (left out: a third without a degree, 15% with one)."""
    if level == 0:
        return rng.choice((None, "No degree", "A-levels"))
    if rng.random() < 0.15:
        return None
    subject = _nat(tax.DEGREE_FIELDS[field], title=rng.random() < 0.6)
    abbr = rng.choice(_DEGREE_ABBR[level])
    long = ("", "Bachelor's", "Master's", "PhD")[level]
    forms = (f"{abbr} {subject}", f"{abbr} in {subject}", f"{long} in {subject}")
    return rng.choice((*forms, f"{subject} ({abbr})"))


def _cv_years(rng, n: int) -> str:
    count = _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) and rng.random() < 0.3 else str(n)
    unit = "yr" if n == 1 else "yrs"
    return rng.choice((f"{count} {unit}", f"{count} years' experience", f"{n}+ years"))


def _duration(rng, n: int) -> str:
    return _pick(rng, f"{n} yrs|{n} years|{n}y") if n > 1 else _pick(rng, "1 yr|1 year")


def _typo(rng, w: str) -> str:
    i = rng.randrange(1, len(w) - 1)
    op = rng.randrange(3)  # swap two letters, drop one, double one
    if op == 0:
        return w[:i] + w[i + 1] + w[i] + w[i + 2 :]
    return w[:i] + w[i + 1 :] if op == 1 else w[:i] + w[i] + w[i:]


def _typos(rng, text: str) -> str:
    words = text.split(" ")
    hit = [len(w) >= 4 and w.isalpha() and rng.random() < TYPO_RATE for w in words]
    return " ".join(_typo(rng, w) if h else w for w, h in zip(words, hit))


def _case(rng, text: str) -> str:
    """Lower case throughout (as some people write), else as written: 30 / 70."""
    return text.lower() if rng.random() < 0.3 else text


def _pieces(text: str) -> int:
    """Words, numbers, punctuation marks and line breaks: about the market tokenizer's count."""
    return len(_PIECE.findall(text))


def _shorten(vary, budget: int, rng, layout: str, extras: list, f: dict, key: str) -> str:
    """`vary`'s text; over `budget` pieces, again without an extra line, then an item of `key`,
    then as a one-line summary (the most compact layout)."""
    while True:
        text = vary(rng, layout, extras, f)
        if _pieces(text) <= budget or layout == "summary" and not extras and len(f[key]) < 2:
            return text
        if extras or len(f[key]) > 1:
            extras, f = (extras[:-1], f) if extras else (extras, f | {key: f[key][:-1]})
        else:
            layout = "summary"


def vary_cv(rng, layout: str | None = None, **facts) -> str:
    """A varied CV of the facts `market_text.render_cv` takes; `layout` one of CV_LAYOUTS.
    Over CV_BUDGET pieces, it loses its extra lines, then its oldest past jobs."""
    layout = layout or rng.choice(CV_LAYOUTS)
    extras = rng.sample(_CV_EXTRAS, rng.randrange(0, 2))
    if rng.random() < 0.35:
        name = f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}"
        extras.append(f"{name}@example.com | 07700 900{rng.randrange(100, 1000)}")
    text = _shorten(_cv, CV_BUDGET, rng, layout, extras, facts, "past")
    text = _case(rng, " ".join(text.split()))  # one line, as `girl generate` reads a CV
    return _typos(rng, text) if rng.random() < CV_TYPO_SHARE else text


def vary_jd(rng, layout: str | None = None, **facts) -> str:
    """A varied JD of the facts `market_text.render_jd` takes; `layout` one of JD_LAYOUTS.
    `parse_jd` reads it back to the fields of the plain JD (no typos, no field left out);
    over JD_BUDGET pieces it loses its extra line, then duties (which no parser reads)."""
    layout = layout or rng.choice(JD_LAYOUTS)
    extras = rng.sample(_JD_EXTRAS, rng.randrange(0, 2))
    return _case(rng, _shorten(_jd, JD_BUDGET, rng, layout, extras, facts, "duties"))


def _cv(rng, layout: str, extras: list, f: dict) -> str:
    title = _title(rng, f["family"] * tax.NUM_LEVELS + f["seniority"], cv=True)
    place, yrs = _place(rng, f["city"], cv=True), _cv_years(rng, f["years"])
    skills = [_skill(rng, s, cv=True) for s in rng.sample(list(f["skills"]), len(f["skills"]))]
    roles = [
        _pick(rng, "{t} at {c} ({y})|{c} - {t}, {y}|{t}, {c} ({y})").format(
            t=_title(rng, t, cv=True), c=_company(rng, c), y=_duration(rng, y)
        )
        for t, c, y in f["past"]
    ]
    degree = _cv_degree(rng, f["edu_level"], f["edu_field"])
    k, lo = f["salary"], 5 * (f["salary"] // 5)
    pay = rng.choice([None, *_CV_PAY]) or ""  # left out a seventh of the time
    pay = pay.format(k=k, lo=lo, hi=lo + 5, r=5 * round(k / 5))
    wants = [_pick(rng, _CV_REMOTE[f["remote_pref"]]), _pick(rng, _CV_RELOCATE[f["relocate"]])]
    pay = pay and f"{_pick(rng, 'looking for|expecting|salary')} {pay}"
    wants = ([pay] if pay else []) + [w for w in wants if rng.random() < 0.7]
    wish = _sentence(", ".join(wants))
    if layout == "prose":
        first = _pick(
            rng,
            f"I am {_an(title)} {title} based in {place} with {yrs}.|{title}, {place}. {yrs}.|"
            f"Experienced {title} in {place} ({yrs}).",
        )
        rest = [f"{_pick(rng, 'Skills include|I know|Good at')} {_join(rng, skills)}."]
        rest += [f"{_pick(rng, 'Previously|Worked as')} {_join(rng, roles)}."]
        rest += [f"{x}." for x in (degree, wish) if x]
        rng.shuffle(rest)
        text = " ".join([_sentence(first), *rest, *extras])
    elif layout in ("sections", "bullets"):
        heads = rng.choice(_CV_HEADS).split("|")
        item = f"\n{rng.choice('-*•')} " if layout == "bullets" else "\n"
        parts = [
            heads[0] + item + (item if layout == "bullets" else ", ").join(skills),
            heads[1] + item + item.join(roles),
        ]
        parts += [heads[2] + item + degree] if degree else []
        rng.shuffle(parts)
        head = " | ".join(x for x in (title, place, yrs, wish) if x)
        text = "\n\n".join([head, *parts, *extras])
    elif layout == "summary":
        bits = [f"{title}, {yrs}, {place}", ", ".join(skills), degree, wish, *extras]
        text = " ".join(_sentence(x.rstrip(".")) + "." for x in bits if x)
    else:
        bits = [f"{title} ({place})", f"Key skills: {', '.join(skills)}"]
        bits += [f"{yrs} in total: {'; '.join(roles)}", degree, wish, *extras]
        text = " ".join(_sentence(x.rstrip(".")) + "." for x in bits if x)
    return text


def _jd(rng, layout: str, extras: list, f: dict) -> str:
    title = _title(rng, f["family"] * tax.NUM_LEVELS + f["seniority"])
    firm, place = _company(rng, f["company"]), _place(rng, f["city"])
    policy = _pick(rng, _JD_REMOTE[f["remote"]])
    req, plus = [_skill(rng, s) for s in f["required"]], [_skill(rng, s) for s in f["nice"]]
    duties = [_sentence(tax.RESPONSIBILITIES[d]) + "." for d in f["duties"]]
    pay = rng.choice(_JD_PAY).format(lo=f["salary_lo"], hi=f["salary_hi"])
    pay += rng.choice(("", "", " per year", " a year", " pa"))
    years = _pick(rng, "{n}+ {u}|at least {n} {u}|{n}+ yrs|minimum {n} {u}' experience")
    years = years.format(n=f["min_years"], u="year" if f["min_years"] == 1 else "years")
    need = f"{years}, {_jd_degree(rng, f['degree_level'], f['degree_field'])}"
    if layout in ("prose", "summary"):
        rest = [
            f"{_pick(rng, 'Required:|You will need|Must have:')} {_join(rng, req)}.",
            f"{_sentence(need)}.",
            f"{_pick(rng, 'Salary|Pay|Paying')} {pay}.",
        ]
        if plus:
            rest.append(
                _sentence(rng.choice(_JD_NICE).format(l=", ".join(plus), j=_join(rng, plus)))
            )
        if layout == "prose":
            rest += [" ".join(duties), *extras]
            first = _pick(
                rng,
                f"{firm} is looking for {_an(title)} {title} in {place} ({policy}).|"
                f"We're hiring {_an(title)} {title} at {firm}, {place}. This role is {policy}.",
            )
        else:
            first = f"{title} at {firm} ({place}, {policy})."
        rng.shuffle(rest)
        return " ".join([first, *rest])
    if layout == "key_skills":
        parts = [f"{firm} - {title} ({place}, {policy})", " ".join(duties)]
        parts += [f"Key skills: {', '.join(req)}"]
        parts += [f"Desirable: {', '.join(plus)}"] if plus else []
        parts += [f"{_sentence(need)}. Salary: {pay}.", *extras]
        return "\n".join(parts)
    bullets = layout == "bullets"
    item = f"\n{rng.choice('-*•')} " if bullets else "\n"
    sections = [
        _pick(rng, "About the role|The role|What you will do:")
        + item
        + (item if bullets else " ").join(duties),
        _pick(rng, "Requirements:|What you need:|Essential:")
        + item
        + (item if bullets else ", ").join(req)
        + item
        + _sentence(need),
    ]
    if plus:  # on the heading's line, or bullets under it (`parse_jd` reads both as nice)
        sep = item if bullets else " "
        sections.append(
            _pick(rng, "Nice to have:|Desirable:") + sep + (sep if bullets else ", ").join(plus)
        )
    rng.shuffle(sections)
    head = f"{title} - {firm}\n{place} | {_sentence(policy)} | {_sentence(pay)}"
    return "\n\n".join([head, *sections, *extras])
