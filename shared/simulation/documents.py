"""Documents of the simulator: reading them out of free LLM text, clipping, filling, formatting.

An LLM asked for k documents rarely writes exactly k well-formed ones. :func:`parse_documents`
accepts the layouts small models actually produce (``Doc 1 (Title: X) text``, ``Document 2:``,
``1.`` / ``2)`` / ``[3]`` lists, bullets, ``Title:`` lines, blank-line paragraphs, or one run-on
paragraph) and never returns an empty or malformed document; :func:`fill_documents` tops a short
list up to k and says how many it had to add.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from shared.metrics import normalize_answer
from shared.schemas import Hit


@dataclass
class Doc:
    title: str
    text: str
    id: str = ""  # corpus passages keep their id; generated documents get one from the engine
    score: float = 0.0  # retriever score (corpus) or rank score (llm)


MIN_WORDS = 3  # shorter fragments are not documents

# Start of a document: "Doc 3", "Document 3", "**Doc 3**", "[3]", "3." or "3)" at a line start.
_MARKER = re.compile(
    r"(?:(?<=\n)|^)[ \t]*(?:[-*\u2022][ \t]*)?(?:\*\*)?(?:doc(?:ument)?[ \t]*#?[ \t]*\d+|\[\d+\]|\d+[.)](?=[ \t]))"
    r"|(?<!\w)(?:\*\*)?doc(?:ument)?[ \t]*#?[ \t]*\d+(?=[ \t]*[(:.\-])",
    re.IGNORECASE,
)
_TITLE_PAREN = re.compile(r"^\s*(?:\*\*)?[:.)\-]?\s*\(\s*title\s*:\s*(?P<t>[^)\n]{1,200})\)\s*[:.\-]?\s*", re.I)
_TITLE_LINE = re.compile(r"^\s*(?:\*\*)?[:.)\-]?\s*title\s*:\s*(?P<t>[^\n]{1,200}?)\s*(?:\n|$)", re.I)
_TITLE_BOLD = re.compile(r"^\s*[:.)\-]?\s*\*\*(?P<t>[^*\n]{1,200})\*\*[ \t]*(?:[:.\-][ \t]*|\n\s*)")
_LEAD_PUNCT = re.compile(r"^\s*(?:\*\*)?\s*[:.)\-\u2013]+\s*")
_ECHO = re.compile(r"^\s*(?:query|useful output|noisy output|output)\s*:.*$", re.I | re.M)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _clean(text: str) -> str:
    text = _ECHO.sub(" ", text)
    text = text.replace("**", " ").replace("__", " ")
    return " ".join(text.split())


def clip_words(text: str, max_words: int) -> str:
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words])


def _split_chunks(text: str, words: int) -> list[str]:
    markers = list(_MARKER.finditer(text))
    if markers:
        bounds = [m.start() for m in markers] + [len(text)]
        chunks = [text[m.end():bounds[i + 1]] for i, m in enumerate(markers)]
        head = text[:bounds[0]].strip()
        if len(head.split()) >= max(MIN_WORDS, words // 2) and not head.endswith(":"):
            chunks.insert(0, head)  # a first document written without its marker (not a preamble)
        return chunks
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paragraphs) > 1:
        return paragraphs
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) > 1:
        return lines
    return sentence_chunks(text, words)


def sentence_chunks(text: str, words: int) -> list[str]:
    """One run-on text cut into pieces of about ``words`` words, on sentence ends where possible."""
    chunks: list[str] = []
    current: list[str] = []
    for sentence in _SENTENCE_END.split(text.strip()):
        current.append(sentence)
        if len(" ".join(current).split()) >= words:
            chunks.append(" ".join(current))
            current = []
    if current:
        chunks.append(" ".join(current))
    return chunks


def _title_and_text(chunk: str) -> tuple[str, str]:
    for pattern in (_TITLE_PAREN, _TITLE_LINE, _TITLE_BOLD):
        m = pattern.match(chunk)
        if m:
            return _clean(m.group("t")).strip(" \"'"), _clean(chunk[m.end():])
    return "", _clean(_LEAD_PUNCT.sub("", chunk, count=1))


def fallback_title(text: str, max_words: int = 6) -> str:
    """A title for an untitled document: its first few words, up to the first sentence end."""
    first = _SENTENCE_END.split(text, maxsplit=1)[0]
    return " ".join(first.split()[:max_words]).rstrip(".,;:!?")


def parse_documents(text: str, words: int, max_words: int | None = None) -> list[Doc]:
    """Every document found in ``text``, in order: titled, cleaned, clipped, without duplicates."""
    max_words = max_words or 2 * words
    docs: list[Doc] = []
    seen: set[str] = set()
    for chunk in _split_chunks(text.replace("\r\n", "\n"), words):
        title, body = _title_and_text(chunk)
        body = clip_words(body, max_words)
        n_words = len(body.split())
        if n_words < MIN_WORDS or (body.endswith(":") and n_words < max(2 * MIN_WORDS, words // 2)):
            continue  # a fragment, or a lead-in line such as "The document is:"
        key = normalize_answer(body)
        if key in seen:
            continue
        seen.add(key)
        docs.append(Doc(title=title or fallback_title(body), text=body))
    return docs


def fill_documents(docs: Sequence[Doc], k: int, query: str, words: int) -> tuple[list[Doc], int]:
    """``docs`` topped up to exactly ``k``; returns the list and how many documents were added.

    First the longest documents are split at sentence ends (each half keeps its title and is
    still a real piece of generated text); if that is not enough, a plainly labelled "no further
    results" document fills each remaining slot.
    """
    out = list(docs[:k])
    added = 0
    while len(out) < k:
        longest = max(range(len(out)), key=lambda i: len(out[i].text.split()), default=None)
        if longest is None or len(out[longest].text.split()) < 2 * max(words // 2, MIN_WORDS):
            break
        doc = out[longest]
        pieces = sentence_chunks(doc.text, max(len(doc.text.split()) // 2, MIN_WORDS))
        if len(pieces) < 2:
            half = len(doc.text.split()) // 2
            pieces = [" ".join(doc.text.split()[:half]), " ".join(doc.text.split()[half:])]
        first, rest = pieces[0], " ".join(pieces[1:])
        out[longest] = Doc(doc.title, first, doc.id, doc.score)
        out.insert(longest + 1, Doc(doc.title, rest, doc.id, doc.score))
        added += 1
    while len(out) < k:
        out.append(Doc(title=query, text=f'No further results were found for "{query}".'))
        added += 1
    return out, added


def format_target(docs: Sequence[Doc]) -> str:
    """The layout the prompt asks for (and fine-tuning teaches): ``Doc i (Title: X) text`` per line."""
    return "\n".join(f"Doc {i} (Title: {d.title}) {d.text}" for i, d in enumerate(docs, start=1))


def window_around(text: str, max_words: int, answers: Sequence[str] = ()) -> str:
    """At most ``max_words`` words of ``text``: a window holding the first answer found, else the start."""
    words = text.split()
    if len(words) <= max_words:
        return text
    norm_words = [normalize_answer(w) for w in words]
    for answer in answers:
        target = normalize_answer(answer).split()
        if not target:
            continue
        for i in range(len(words) - len(target) + 1):
            if norm_words[i:i + len(target)] == target:
                start = max(0, min(i - (max_words - len(target)) // 2, len(words) - max_words))
                return " ".join(words[start:start + max_words])
    return " ".join(words[:max_words])


def hit_to_doc(hit: Hit) -> Doc:
    title, _, text = hit.document.contents.partition("\n")
    return Doc(title=title.strip().strip('"'), text=" ".join(text.split()), id=hit.document.id, score=hit.score)
