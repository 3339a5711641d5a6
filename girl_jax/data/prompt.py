"""The one place where the CV -> JD prompt lives.

The template is `<|cv|>{cv}<|jd|>`: marker tokens with no spaces around them, so encoding the
pieces one by one (what `girl_jax.data.batches` does, to truncate the CV and keep both markers)
gives the same ids as encoding the whole string. The JD follows `<|jd|>` directly. Marker
strings inside user text are removed, so a CV cannot forge the start of the response.
"""

from girl_jax.data.tokenizer import CV_MARKER, JD_MARKER

PROMPT_TEMPLATE = f"{CV_MARKER}{{cv}}{JD_MARKER}"
PROMPT_PREFIX, PROMPT_SUFFIX = PROMPT_TEMPLATE.split("{cv}")


def clean_text(text: str) -> str:
    """`text` without template markers and without surrounding whitespace."""
    return text.replace(CV_MARKER, "").replace(JD_MARKER, "").strip()


def format_prompt(cv: str) -> str:
    """The generator's prompt for one CV."""
    return PROMPT_PREFIX + clean_text(cv) + PROMPT_SUFFIX


def format_pair(cv: str, jd: str) -> str:
    """Prompt + JD: what the reward model scores (the batching code appends eos)."""
    return format_prompt(cv) + clean_text(jd)
