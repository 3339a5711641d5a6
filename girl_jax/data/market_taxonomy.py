"""The fixed vocabulary of the synthetic job market: families, skills, titles, degrees, places.

Everything here is plain lower-case English so that a small byte-level BPE learns it. Every
phrase (skill, title, city, company, degree field) is unique across the taxonomy, and no
responsibility sentence contains a skill, so a JD can be parsed back by lexicon matching.
Ids are positions: skill id `s` is `SKILLS[s]`, title id is `family * 4 + seniority`.
"""

import numpy as np

SENIORITIES = ("junior", "mid", "senior", "lead")
EDUCATION_LEVELS = ("no degree", "bachelor", "master", "phd")
REMOTE_POLICIES = ("on site", "hybrid", "remote")

# name; titles (junior, mid, senior, lead); skills (>= 25, most popular first); degree fields;
# mid-level salary in thousands; share of jobs; how often its jobs ask for no degree, bachelor,
# master, phd; responsibilities (short, naming no skill).
_FAMILIES = (
    (
        "software",
        "junior software developer; software developer; senior software developer; "
        "lead software engineer",
        "python, java, javascript, typescript, golang, rust, postgres, git, docker, kubernetes, "
        "linux, rest apis, unit testing, code review, microservices, react, node, aws, "
        "ci pipelines, debugging, system design, graphql, redis, agile, refactoring, "
        "web security, cloud services, kotlin",
        "computer science; software engineering",
        55,
        1.6,
        "0.15 0.65 0.17 0.03",
        "build and ship new product features; keep our services fast and reliable; "
        "work closely with product owners; mentor other developers on the team; "
        "fix problems reported by customers; improve our internal tooling",
    ),
    (
        "data",
        "junior data analyst; data analyst; senior data analyst; lead data scientist",
        "sql, excel, statistical analysis, tableau, power bi, pandas, numpy, machine learning, "
        "regression, forecasting, data cleaning, data visualisation, ab testing, spark, etl, "
        "dashboards, hypothesis testing, time series, deep learning, scikit learn, "
        "data modelling, survey analysis, looker, bigquery, airflow, clustering, matlab",
        "statistics; mathematics; data science",
        52,
        1.2,
        "0.05 0.55 0.3 0.1",
        "turn raw numbers into clear insight; answer questions from business teams; "
        "report weekly results to managers; design experiments with product teams; "
        "keep our reports accurate and on time; help leaders make better decisions",
    ),
    (
        "nursing",
        "graduate nurse; staff nurse; senior nurse; nurse manager",
        "patient care, wound care, medication administration, triage, infection control, "
        "iv therapy, care planning, vital signs, phlebotomy, patient records, emergency care, "
        "palliative care, paediatric care, mental health support, first aid, catheter care, "
        "health assessment, discharge planning, clinical audit, ward rounds, patient safety, "
        "sterile technique, diabetes care, elderly care, cpr, clinical handover",
        "nursing; health science",
        34,
        1.0,
        "0 0.85 0.15 0",
        "look after patients on a busy ward; work with doctors and families; "
        "support new members of the ward; keep high standards on every shift; "
        "help patients recover and go home; cover day and night shifts",
    ),
    (
        "finance",
        "junior accountant; accountant; senior accountant; finance manager",
        "bookkeeping, accounts payable, accounts receivable, payroll, tax returns, vat, "
        "budgeting, financial reporting, reconciliation, auditing, ifrs, cash flow, "
        "financial forecasting, sage, quickbooks, xero, month end close, cost accounting, "
        "invoicing, general ledger, variance analysis, credit control, fixed assets, "
        "management accounts, financial modelling, internal controls, treasury",
        "accounting; economics; finance",
        45,
        1.0,
        "0.1 0.7 0.2 0",
        "close the books each month; prepare figures for the board; "
        "work with auditors and tax advisers; keep spending under control; "
        "support managers with their plans; improve how money moves through the firm",
    ),
    (
        "marketing",
        "marketing assistant; marketing executive; senior marketing executive; marketing manager",
        "seo, copywriting, social media, email marketing, content strategy, google ads, "
        "brand management, market research, campaign planning, google analytics, ppc, "
        "influencer outreach, event planning, press releases, crm, hubspot, mailchimp, "
        "product launches, customer segmentation, conversion tracking, video editing, "
        "public relations, affiliate marketing, landing pages, newsletter writing, "
        "community management, paid social",
        "marketing; communications; business",
        38,
        0.9,
        "0.25 0.65 0.1 0",
        "grow awareness of our brand; run campaigns from idea to launch; "
        "work with sales on new leads; measure what works and what does not; "
        "manage a small agency budget; tell the story of our products",
    ),
    (
        "sales",
        "sales trainee; sales executive; senior sales executive; sales manager",
        "cold calling, lead generation, negotiation, account management, pipeline management, "
        "salesforce, closing deals, prospecting, b2b sales, retail sales, upselling, "
        "sales forecasting, client relationships, contract renewal, territory planning, "
        "product demos, tender writing, customer onboarding, quota attainment, key accounts, "
        "telesales, trade shows, proposal writing, objection handling, partner channels, "
        "price quoting, order processing",
        "business studies; management",
        36,
        1.0,
        "0.55 0.45 0 0",
        "win new customers in your region; hit monthly and yearly targets; "
        "visit clients across the country; grow revenue from existing clients; "
        "work with marketing on new offers; report progress to the sales team",
    ),
    (
        "construction",
        "assistant site engineer; site engineer; senior site engineer; construction manager",
        "autocad, site surveys, concrete, steelwork, health and safety, setting out, drainage, "
        "groundworks, quantity surveying, structural design, building regulations, revit, bim, "
        "project scheduling, cost estimation, risk assessment, site inspection, "
        "contract management, earthworks, road design, method statements, snagging, "
        "subcontractor management, planning permission, temporary works, brickwork, scaffolding",
        "civil engineering; construction management",
        42,
        0.8,
        "0.3 0.6 0.1 0",
        "deliver projects on time and on budget; run daily checks on site; "
        "work with architects and clients; lead a crew of site workers; "
        "keep the build programme on track; report progress to the client",
    ),
    (
        "teaching",
        "teaching assistant; teacher; senior teacher; head of department",
        "lesson planning, classroom management, curriculum design, marking, "
        "special needs support, safeguarding, phonics, behaviour management, parent meetings, "
        "exam preparation, differentiated teaching, pastoral care, tutoring, literacy, numeracy, "
        "science teaching, maths teaching, english teaching, early years, student assessment, "
        "school trips, online teaching, lesson observation, progress tracking, reading support, "
        "music teaching, sports coaching",
        "education; english; mathematics",
        33,
        0.9,
        "0 0.8 0.2 0",
        "help every pupil reach their goals; teach classes across the school; "
        "work with parents and staff; support colleagues in the department; "
        "make lessons lively and clear; take part in school life",
    ),
    (
        "logistics",
        "warehouse assistant; logistics coordinator; senior logistics coordinator; "
        "logistics manager",
        "inventory control, forklift driving, stock taking, picking and packing, shipping, "
        "freight, customs clearance, route planning, fleet management, demand planning, "
        "procurement, supplier management, warehouse systems, sap, lean, six sigma, "
        "order fulfilment, goods inward, dispatch, cold chain, import export, "
        "vendor negotiation, distribution, manual handling, load planning, returns processing, "
        "delivery scheduling",
        "supply chain management; logistics",
        32,
        0.9,
        "0.7 0.3 0 0",
        "move goods from suppliers to customers; keep the warehouse running smoothly; "
        "work with drivers and carriers; cut waste and delays; plan the week ahead for the team; "
        "keep customers informed",
    ),
    (
        "hospitality",
        "commis chef; chef de partie; sous chef; head chef",
        "food preparation, knife skills, menu planning, food hygiene, pastry, baking, grilling, "
        "sauces, stock rotation, kitchen management, allergen control, portion control, "
        "butchery, fish preparation, plating, catering, banquets, vegetarian cooking, "
        "bread making, food costing, ordering supplies, kitchen cleaning, haccp, sous vide, "
        "seasonal menus, breakfast service, cake decorating",
        "culinary arts; hospitality management",
        28,
        0.8,
        "0.85 0.15 0 0",
        "cook great food for busy services; run a section of the kitchen; "
        "train new kitchen staff; work with local farms and growers; "
        "keep the kitchen calm and tidy; help shape new dishes",
    ),
    (
        "design",
        "junior product designer; product designer; senior product designer; lead product designer",
        "figma, sketch, user research, wireframing, prototyping, usability testing, "
        "visual design, typography, illustrator, photoshop, indesign, design systems, "
        "interaction design, accessibility, user journeys, information architecture, "
        "motion design, colour theory, branding, icon design, persona creation, card sorting, "
        "mobile design, responsive design, style guides, print design, storyboarding",
        "graphic design; fine art; visual communication",
        42,
        0.7,
        "0.3 0.6 0.1 0",
        "shape how people use our apps; work with engineers and product owners; "
        "turn ideas into simple screens; talk to users about their needs; "
        "raise the quality of our craft; present work to leaders",
    ),
    (
        "people",
        "hr assistant; hr advisor; senior hr advisor; hr manager",
        "recruitment, onboarding, employee relations, benefits administration, "
        "performance reviews, employment law, training delivery, hr policies, "
        "disciplinary cases, grievance handling, workforce planning, interviewing, hr systems, "
        "absence management, talent management, succession planning, diversity and inclusion, "
        "wellbeing programmes, compensation review, exit interviews, staff surveys, "
        "learning and development, contract drafting, right to work checks, org design, "
        "change management, hr reporting",
        "human resources; psychology",
        36,
        0.7,
        "0.3 0.6 0.1 0",
        "support managers with people matters; help staff feel valued at work; "
        "hire the right people for each team; keep our policies fair and current; "
        "guide the firm through change; advise leaders on difficult cases",
    ),
)

# Families a seeker may also belong to, and where they sometimes apply.
_ADJACENT = {
    "software": ("data", "design"),
    "data": ("software", "finance", "marketing"),
    "nursing": ("teaching", "people"),
    "finance": ("data", "people"),
    "marketing": ("sales", "design", "data"),
    "sales": ("marketing", "logistics"),
    "construction": ("logistics",),
    "teaching": ("people", "nursing"),
    "logistics": ("construction", "sales", "hospitality"),
    "hospitality": ("logistics", "sales"),
    "design": ("software", "marketing"),
    "people": ("finance", "teaching"),
}

# name, share of people and jobs, salary factor
_CITY_TABLE = (
    "london 8 1.2, manchester 4 1.0, leeds 3 0.95, bristol 3 1.0, glasgow 3 0.95, "
    "edinburgh 2.5 1.0, cardiff 2 0.92, belfast 1.5 0.9, dublin 3 1.1, liverpool 2 0.93, "
    "newcastle 1.5 0.92, sheffield 1.5 0.92, nottingham 1.5 0.92, leicester 1 0.92, "
    "brighton 1 1.0, oxford 1 1.05, cambridge 1 1.05, york 1 0.92"
)
_cities = [c.split() for c in _CITY_TABLE.split(", ")]
CITIES = tuple(c[0] for c in _cities)
CITY_WEIGHTS = np.array([float(c[1]) for c in _cities])
CITY_SALARY = np.array([float(c[2]) for c in _cities])

_COMPANY_FIRST = (
    "bluefin northgate redwood silverline brightpath oakridge greenleaf stonebridge harbourview "
    "maplewood ironbark sunrise clearwater highfield fairway kingfisher lighthouse moorland "
    "riverside westbrook bramble cobalt driftwood ember foxglove granite hazel juniper larkspur "
    "meadow nettle orchard pebble quarry rowan saffron thistle upland willow yarrow"
).split()
_COMPANY_SUFFIX = ("labs", "group", "partners", "works", "holdings", "trust", "company", "and co")
COMPANIES = tuple(
    f"{first} {_COMPANY_SUFFIX[(7 * i + 3) % len(_COMPANY_SUFFIX)]}"
    for i, first in enumerate(_COMPANY_FIRST)
)

FAMILIES = tuple(f[0] for f in _FAMILIES)
NUM_FAMILIES = len(FAMILIES)
NUM_LEVELS = len(SENIORITIES)
TITLES = tuple(t for f in _FAMILIES for t in f[1].split("; "))  # title id = family * 4 + seniority
FAMILY_SKILLS = tuple(tuple(s.strip() for s in f[2].split(",")) for f in _FAMILIES)
SKILLS = tuple(s for skills in FAMILY_SKILLS for s in skills)
SKILL_FAMILY = np.array([fi for fi, skills in enumerate(FAMILY_SKILLS) for _ in skills])
_starts = np.cumsum([0] + [len(s) for s in FAMILY_SKILLS])
FAMILY_SKILL_START, FAMILY_SKILL_COUNT = _starts[:-1], np.diff(_starts)
# Degree fields, deduplicated across families (a field may serve several families).
DEGREE_FIELDS = tuple(dict.fromkeys(x for f in _FAMILIES for x in f[3].split("; ")))
FAMILY_FIELDS = tuple(tuple(DEGREE_FIELDS.index(x) for x in f[3].split("; ")) for f in _FAMILIES)
RESPONSIBILITIES = tuple(r for f in _FAMILIES for r in f[7].split("; "))
RESP_PER_FAMILY = 6
ADJACENT = tuple(tuple(FAMILIES.index(a) for a in _ADJACENT[name]) for name in FAMILIES)
# salary band (thousands) by family x seniority, before the city factor
SALARY_BAND = np.array([[f[4] * m for m in (0.7, 1.0, 1.35, 1.75)] for f in _FAMILIES])
FAMILY_WEIGHTS = np.array([f[5] for f in _FAMILIES])
FAMILY_DEGREE_NEED = np.array([[float(x) for x in f[6].split()] for f in _FAMILIES])
MIN_YEARS_RANGE = ((1, 2), (2, 4), (5, 8), (8, 12))  # inclusive, by seniority


# Samplers over the taxonomy (vectorised over rows; `rng` is a numpy Generator).


def sample_top_k(rng, logw_NxS: np.ndarray, k: int) -> np.ndarray:
    """k distinct columns per row, sampled without replacement in proportion to exp(logw)."""
    keys_NxS = logw_NxS + rng.gumbel(size=logw_NxS.shape).astype(np.float32)
    top_NxK = np.argpartition(-keys_NxS, k - 1, axis=1)[:, :k]
    order_NxK = np.argsort(-np.take_along_axis(keys_NxS, top_NxK, axis=1), axis=1)
    return np.take_along_axis(top_NxK, order_NxK, axis=1)


def sample_categorical(rng, probs_NxK: np.ndarray) -> np.ndarray:
    """One draw per row from row-wise probabilities."""
    cdf_NxK = np.cumsum(probs_NxK / probs_NxK.sum(-1, keepdims=True), axis=-1)
    return np.minimum(
        (rng.random(len(cdf_NxK))[:, None] > cdf_NxK).sum(-1), probs_NxK.shape[-1] - 1
    )


def skill_popularity() -> np.ndarray:
    """Log-weight of each skill within its family: the first-listed skills are the common ones."""
    rank_S = np.arange(len(SKILLS)) - FAMILY_SKILL_START[SKILL_FAMILY]
    return (-0.7 * np.log(rank_S + 4.0)).astype(np.float32)


def sample_adjacent(rng, family_N: np.ndarray) -> np.ndarray:
    """One adjacent family per entry, uniformly among that family's neighbours."""
    adj = [list(a) + [a[0]] * (3 - len(a)) for a in ADJACENT]
    count_F = np.array([len(a) for a in ADJACENT])
    idx_N = (rng.random(len(family_N)) * count_F[family_N]).astype(int)
    return np.array(adj)[family_N, idx_N]


def sample_field(rng, family_N: np.ndarray, off_field_p: float) -> np.ndarray:
    """A typical degree field of each family; any field with probability `off_field_p`."""
    fields_FxK = np.array([list(f) + [f[0]] * (3 - len(f)) for f in FAMILY_FIELDS])
    count_F = np.array([len(f) for f in FAMILY_FIELDS])
    field_N = fields_FxK[family_N, (rng.random(len(family_N)) * count_F[family_N]).astype(int)]
    off_N = rng.random(len(family_N)) < off_field_p
    return np.where(off_N, rng.integers(0, len(DEGREE_FIELDS), len(family_N)), field_N)


def _check() -> None:
    """Fails at import if an edit broke the uniqueness the parser relies on."""
    phrases = list(SKILLS) + list(TITLES) + list(CITIES) + list(COMPANIES)
    dupes = {p for p in phrases if phrases.count(p) > 1}
    if dupes:
        raise ValueError(f"market taxonomy: duplicate phrases {sorted(dupes)}")
    if any(len(s) < 25 for s in FAMILY_SKILLS) or NUM_FAMILIES < 10 or len(CITIES) < 15:
        raise ValueError("market taxonomy: need >= 10 families, >= 25 skills each, >= 15 cities")
    for r in RESPONSIBILITIES:
        hits = [p for p in phrases if f" {p} " in f" {r} "]
        if hits:
            raise ValueError(f"market taxonomy: responsibility {r!r} names {hits}")
    for field in DEGREE_FIELDS:
        if field in SKILLS or field in TITLES:
            raise ValueError(f"market taxonomy: degree field {field!r} is also a skill or title")
    if len(RESPONSIBILITIES) != RESP_PER_FAMILY * NUM_FAMILIES:
        raise ValueError(f"market taxonomy: every family needs {RESP_PER_FAMILY} responsibilities")
    if not np.allclose(FAMILY_DEGREE_NEED.sum(1), 1.0):
        raise ValueError("market taxonomy: degree needs of a family must sum to 1")


_check()
