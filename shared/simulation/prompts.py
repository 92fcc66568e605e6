"""Named, parameterised prompt templates of the simulated search engine (ZeroSearch's, plus an output format).

ZeroSearch asks an LLM to play "the Google search engine" and write documents for a query,
*useful* or *noisy* on demand; for useful documents the gold answer of the question being
trained on is put into the prompt. The number of documents and the words per document are
parameters here, not literals. The output format line asks for one document per line as
``Doc <n> (Title: <title>) <text>`` (Search-R1's observation format), which
:func:`shared.simulation.documents.parse_documents` reads back and the fine-tuning targets use.

    messages = render("zerosearch", "useful", query="capital of France", k=3, words=30,
                      question="What is the capital of France?", gold=["Paris"])
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.schemas import Quality

Messages = list[dict[str, str]]

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def number_word(n: int) -> str:
    """``5 -> "five"`` up to ten, digits beyond (as a person writing the prompt would)."""
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


@dataclass(frozen=True)
class DocPromptTemplate:
    """One prompt: ``body`` with ``{count} {documents} {context} {words} {format} {query}`` slots."""

    name: str
    quality: Quality
    body: str
    context_with_answer: str  # used when the question and a gold answer are known
    context_question: str  # used when only the question is known
    output_format: str  # how documents are to be laid out (parsed back by documents.parse_documents)
    uses_gold: bool  # whether the gold answer is injected (useful only: noisy must not leak it)

    def render(self, query: str, k: int, words: int, question: str | None = None,
               gold: list[str] | None = None) -> Messages:
        if question and gold and self.uses_gold:
            context = self.context_with_answer.format(question=question, gold=gold[0]) + " "
        elif question:
            context = self.context_question.format(question=question) + " "
        else:
            context = ""
        text = self.body.format(
            count=number_word(k), documents="document" if k == 1 else "documents", context=context,
            words=words, format=self.output_format.format(k=k), query=query,
        )
        return [{"role": "user", "content": text}]


_FORMAT = ("Write the {k} documents one per line, each as: Doc <number> (Title: <title>) <text>. "
           "Write nothing else.")

TEMPLATES: dict[tuple[str, Quality], DocPromptTemplate] = {
    ("zerosearch", "useful"): DocPromptTemplate(
        name="zerosearch", quality="useful",
        body=("You are the Google search engine. Given a query, you need to generate {count} useful {documents} "
              "for the query. {context}Each document should contain about {words} words, and these documents "
              "should contain useful information. {format}\n\nQuery: {query}\nUseful Output:"),
        context_with_answer="The user is trying to answer the question: '{question}' whose answer is {gold}.",
        context_question="The user is trying to answer the question: '{question}'.",
        output_format=_FORMAT, uses_gold=True,
    ),
    ("zerosearch", "noisy"): DocPromptTemplate(
        name="zerosearch", quality="noisy",
        body=("You are the Google search engine. Given a query, you need to generate {count} noisy {documents} "
              "for the query. {context}Each document should contain about {words} words, and these documents "
              "should contain noisy information. {format}\n\nQuery: {query}\nNoisy Output:"),
        context_with_answer="The user is trying to answer the question: '{question}'.",
        context_question="The user is trying to answer the question: '{question}'.",
        output_format=_FORMAT, uses_gold=False,
    ),
}


def get_template(name: str, quality: Quality) -> DocPromptTemplate:
    try:
        return TEMPLATES[(name, quality)]
    except KeyError:
        valid = sorted({n for n, _ in TEMPLATES})
        raise ValueError(f"unknown simulator template '{name}' for quality '{quality}'; valid: "
                         f"{', '.join(valid)} (qualities useful, noisy)") from None


def render(name: str, quality: Quality, query: str, k: int, words: int, question: str | None = None,
           gold: list[str] | None = None) -> Messages:
    return get_template(name, quality).render(query, k, words, question, gold)
