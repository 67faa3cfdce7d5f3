"""The simulated production service: document analysis on a (fake) LLM, instrumented.

:class:`DocumentService` is what an application team would write: three features
(``extract_dates``, ``summarise``, ``classify``), each an ``@llmvigil.trace``'d
function whose LLM call is an ``llmvigil.span(kind="llm")`` with the model, the
provider-reported model id, token usage and the streamed chunks (TTFT and time
between tokens); every response goes through ``llmvigil.safety.check`` before it is
served; user feedback and session milestones are recorded with ``llmvigil.feedback``
and ``llmvigil.session_event``.

It also defines the service's canary suite: documents with known answers, run
against the model the way ``vigil canary run`` would.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import llmvigil

from .fake_llm import Completion, FakeLLM


def _safety_layer() -> Callable[..., Any] | None:
    """``llmvigil.safety.check`` when the safety layer is installed (the demo runs
    without it)."""
    try:
        from llmvigil.core.safety import check
    except ImportError:  # pragma: no cover - present in this repository
        return None
    return check


_safety_check = _safety_layer()

__all__ = [
    "FEATURE_MODELS",
    "HAIKU",
    "REFUSAL",
    "SONNET",
    "DocumentService",
    "Response",
    "canary_cases",
    "extract_prompt",
]

HAIKU = "claude-haiku-4-5"
SONNET = "claude-sonnet-4-6"
#: The model each feature calls.
FEATURE_MODELS = {"extract_dates": HAIKU, "summarise": SONNET, "classify": HAIKU}
REFUSAL = "Sorry, I can't help with that."

_EXTRACT = ('Extract the date labelled "{field}" from the document below.\n'
            'Answer with JSON only: {{"document": "<reference>", "field": "{field}", '
            '"date": "DD/MM/YYYY"}}.\n\n'
            "<document>\n{document}\n</document>")
_SUMMARISE = ("Summarise the document below in two sentences.\n\n"
              "<document>\n{document}\n</document>")
_CLASSIFY = ("Classify the document below as one of: invoice, contract, letter, receipt.\n"
             "Answer with the label only.\n\n<document>\n{document}\n</document>")


def extract_prompt(document: str, field: str) -> str:
    """The prompt of the ``extract_dates`` feature."""
    return _EXTRACT.format(field=field, document=document)


@dataclass
class Response:
    """What the service served for one request, with the ids feedback refers to."""

    feature: str
    output: Any
    trace_id: str
    action: str
    completion: Completion

    @property
    def served_date(self) -> str | None:
        """The date an ``extract_dates`` response gave (``None`` when it gave none)."""
        if isinstance(self.output, dict):
            value = self.output.get("date")
            return value if isinstance(value, str) else None
        return None


class DocumentService:
    """The demo's document-analysis service.

    Args:
        llm: the model it calls.
        check_safety: run ``llmvigil.safety.check`` on every response.
    """

    def __init__(self, llm: FakeLLM, *, check_safety: bool = True) -> None:
        self.llm = llm
        self.check_safety = check_safety and _safety_check is not None

    # -- the model call ----------------------------------------------------------------

    async def call_model(self, prompt: str, *, model: str, key: str) -> Completion:
        """One streamed LLM call, recorded as an ``llm`` span."""
        with llmvigil.span("anthropic.messages", kind="llm", model=model,
                           provider="anthropic", operation="chat") as llm_span:
            llm_span.set_input([{"role": "user", "content": prompt}])
            done: Completion | None = None
            async for item in self.llm.stream(model, prompt, key=key):
                if isinstance(item, Completion):
                    done = item
                else:
                    llm_span.tick()
            assert done is not None
            llm_span.set(response_model=done.response_model, stop_reason="end_turn")
            llm_span.set_usage(input_tokens=done.input_tokens,
                               output_tokens=done.output_tokens)
            llm_span.set_output(done.text)
        return done

    def _serve(self, feature: str, prompt: str, done: Completion, output: Any) -> Response:
        root = llmvigil.current_span()
        action = "serve"
        if self.check_safety and _safety_check is not None:
            action = _safety_check(prompt, done.text).action
        if action == "block":
            output = REFUSAL
        if root is not None:
            root.set_output(output)
        trace_id = root.trace_id if root is not None else ""
        return Response(feature, output, trace_id, action, done)

    @staticmethod
    def _attribute(document: str, user_id: str, session_id: str | None,
                   **extra: Any) -> None:
        root = llmvigil.current_span()
        if root is not None:
            root.set(user_id=user_id, session_id=session_id)
            root.set_input({"document": document, **extra})

    # -- features ----------------------------------------------------------------------

    @llmvigil.trace(name="extract_dates", kind="chain", feature="extract_dates",
                    capture_input=False)
    async def extract_dates(self, document: str, field: str, *, user_id: str,
                            session_id: str | None, key: str) -> Response:
        """Extract one date (``field``, e.g. "payment due") from ``document`` as JSON."""
        self._attribute(document, user_id, session_id, field=field)
        prompt = extract_prompt(document, field)
        done = await self.call_model(prompt, model=FEATURE_MODELS["extract_dates"], key=key)
        try:
            output: Any = json.loads(done.text)
        except ValueError:
            output = done.text
        return self._serve("extract_dates", prompt, done, output)

    @llmvigil.trace(name="summarise", kind="chain", feature="summarise",
                    capture_input=False)
    async def summarise(self, document: str, *, user_id: str, session_id: str | None,
                        key: str, instructions: str = "") -> Response:
        """Summarise ``document`` in two sentences (``instructions`` go first)."""
        self._attribute(document, user_id, session_id,
                        **({"instructions": instructions} if instructions else {}))
        prompt = instructions + _SUMMARISE.format(document=document)
        done = await self.call_model(prompt, model=FEATURE_MODELS["summarise"], key=key)
        return self._serve("summarise", prompt, done, done.text)

    @llmvigil.trace(name="classify", kind="chain", feature="classify",
                    capture_input=False)
    async def classify(self, document: str, *, user_id: str, session_id: str | None,
                       key: str) -> Response:
        """The document's kind: invoice, contract, letter or receipt."""
        self._attribute(document, user_id, session_id)
        prompt = _CLASSIFY.format(document=document)
        done = await self.call_model(prompt, model=FEATURE_MODELS["classify"], key=key)
        return self._serve("classify", prompt, done, done.text.strip())

    # -- what users do -----------------------------------------------------------------

    @staticmethod
    def record_feedback(response: Response, kind: str, *, user_id: str,
                        session_id: str | None, correction: str | None = None,
                        category: str | None = None) -> None:
        """A user's thumbs up/down or correction on a response."""
        llmvigil.feedback(response.trace_id, kind, feature=response.feature, user_id=user_id,
                          session_id=session_id, correction=correction, category=category)

    @staticmethod
    def record_session(session_id: str, event: str, *, user_id: str,
                       feature: str | None = None) -> None:
        """A session milestone: start, follow_up, task_complete or abandon."""
        llmvigil.session_event(session_id, event, user_id=user_id, feature=feature)

    # -- canaries ----------------------------------------------------------------------

    def canary_target(self, run: Callable[[], int]) -> Callable[[str], Any]:
        """The async callable a canary case runs: the extraction model on a prompt.

        ``run`` returns the current canary run's key (the request index it started
        at), which with the prompt keys the model's randomness.
        """
        async def call(prompt: str) -> str:
            key = f"canary:{run()}:{hash_text(prompt)}"
            done = await self.call_model(prompt, model=FEATURE_MODELS["extract_dates"],
                                         key=key)
            return done.text

        return call


def hash_text(text: str) -> str:
    """A short stable digest of ``text``."""
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def canary_cases(documents: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """``(name, prompt, expected date)`` for each ``(document, field, answer)``."""
    return [(f"extract_{i:02d}", extract_prompt(doc, field), answer)
            for i, (doc, field, answer) in enumerate(documents, 1)]
