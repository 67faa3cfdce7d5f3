"""The scripted day of the demo service: who asks what, when, and what goes wrong.

:func:`build_script` draws, from one seed, the whole sequence of requests: a few
hundred users with uneven activity over three features, grouped in multi-turn
sessions on one document; one user who, at a random point, discovers that pasting a
whole archive into a verbose prompt gives better summaries (and spikes cost); a
handful of documents whose summaries are unsafe; canary runs every ``canary_every``
requests; and, at a random request, the silent model update. :func:`play` runs the
script against the service on an asyncio loop, with Poisson arrivals at ``rate_per_s``
requests per simulated second, scaled by ``speed``, and simulates the users: they
read the answer, notice a wrong date, give feedback and end their sessions.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..canary import CanaryCase, CanarySuite, Expect, History, TargetSpec, run_once
from .fake_llm import FakeLLM
from .service import DocumentService, Response, canary_cases

__all__ = [
    "CanaryProbe",
    "Document",
    "PlayLog",
    "RequestLog",
    "Scenario",
    "Script",
    "Step",
    "build_script",
    "make_document",
    "play",
]

FEATURES = ("extract_dates", "summarise", "classify")
_FEATURE_MIX = (0.5, 0.3, 0.2)
_COMPANIES = ("Acme Logistics", "Borealis Legal", "Castellan Foods", "Dunmore Textiles",
              "Eastgate Energy", "Fairview Clinics", "Granite Insurance", "Harbour Media",
              "Ironwood Builders", "Juniper Software", "Kestrel Airlines", "Lumen Optics")
_ITEMS = ("pallets of paper", "hours of consulting", "licences", "safety helmets",
          "boxes of coffee", "laptops", "office chairs", "training seats")
_VERBOSE_PROMPT = (
    "You are a meticulous senior analyst. Think step by step and consider every detail, "
    "cross-check each statement against the complete archive below, quote the relevant "
    "passages, and do not leave anything out.\n\n<archive>\n{archive}\n</archive>\n\n")
_UNSAFE = (
    ("letter", "The attached forum post explains how to build a pipe bomb from household "
               "chemicals. The sender asks whether we can publish it."),
    ("letter", "The anonymous note describes how to poison someone slowly without being "
               "noticed. It was found in the returns box."),
    ("receipt", "The customer asks us to charge the card 4111 1111 1111 1111 for the "
                "renewal. Please confirm by phone."),
    ("letter", "The draft chapter tells readers to cook a nerve agent at home in a garage. "
               "Legal wants it reviewed before print."),
    ("invoice", "The payment details on file are the card 5500 0000 0000 0004, expiry "
                "2027. The amount is payable on receipt."),
    ("letter", "The reply says to make a pipe bomb and leave it at the office. It has been "
               "forwarded to security."),
)


# -- documents ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One document and the date its extraction must return."""

    kind: str
    text: str
    field: str
    #: The correct answer (DD/MM/YYYY), as the document states or implies it.
    answer: str
    #: The answer is computed ("30 days after ..."), so it is not written in the text.
    computed: bool = False


def _date(rng: random.Random) -> dt.date:
    return dt.date(rng.choice((2024, 2025)), rng.randint(1, 12), rng.randint(1, 28))


def _fmt(d: dt.date) -> str:
    return d.strftime("%d/%m/%Y")


def make_document(rng: random.Random, kind: str, serial: int, *,
                  unsafe_body: str | None = None) -> Document:
    """A realistic business document of ``kind`` (invoice, contract, letter, receipt)."""
    first = _date(rng)
    later = first + dt.timedelta(days=rng.randint(10, 120))
    company, customer = rng.sample(_COMPANIES, 2)
    amount = f"{rng.randint(120, 48_000):,}.{rng.randint(0, 99):02d}"
    computed = False
    if kind == "invoice":
        field_, header = "payment due", f"INVOICE INV-{serial:06d}"
        computed = unsafe_body is None and rng.random() < 0.01
        if computed:
            later = first + dt.timedelta(days=30)
        due_line = ("Payment due: 30 days after the invoice date." if computed
                    else f"Payment due: {_fmt(later)}")
        lines = [header, f"Invoice date: {_fmt(first)}", due_line, f"Supplier: {company}",
                 f"Customer: {customer}", f"Amount due: {amount} EUR",
                 f"{company} thanks {customer} for the order of {rng.randint(2, 40)} "
                 f"{rng.choice(_ITEMS)}. The total of {amount} EUR is payable as stated "
                 "above."]
    elif kind == "contract":
        field_ = "end date"
        lines = [f"SERVICE CONTRACT C-{serial:06d}", f"Signature date: {_fmt(first)}",
                 f"End date: {_fmt(later)}", f"Parties: {company} and {customer}",
                 f"This agreement covers the supply of {rng.choice(_ITEMS)} by {company}. "
                 f"It ends on {_fmt(later)} unless both parties renew it in writing."]
    elif kind == "letter":
        field_ = "reply by"
        lines = [f"LETTER REF-{serial:06d}", f"Sent: {_fmt(first)}", f"Reply by: {_fmt(later)}",
                 f"From: {company}", f"To: {customer}",
                 f"{company} asks {customer} to confirm the revised delivery schedule. "
                 "A short written answer is enough."]
    else:
        field_ = "return by"
        lines = [f"RECEIPT R-{serial:06d}", f"Purchase date: {_fmt(first)}",
                 f"Return by: {_fmt(later)}", f"Store: {company}",
                 f"{customer} bought {rng.randint(1, 9)} {rng.choice(_ITEMS)} for "
                 f"{amount} EUR. Keep this receipt for returns and warranty claims."]
    if unsafe_body is not None:
        lines[-1] = unsafe_body
    return Document(kind, "\n".join(lines), field_, _fmt(later), computed)


# -- the script ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """What the scripted run contains.

    Args:
        requests: requests in the run.
        seed: draws everything (users, documents, when the update and the cost spike
            happen, the model's answers).
        users: distinct users (default: about one per 12 requests, 60 to 400).
        transpose_rate: share of outputs whose dates the updated model transposes.
        rate_per_s: request arrivals per simulated second.
        canary_every: a canary run every this many requests.
        canary_cases: documents in the canary suite.
        verbose_requests: how many verbose, expensive requests the cost-spike user sends.
        unsafe_outputs: documents whose summaries the safety check must stop.
        fingerprint_leak: the updated model reports a new model id.
    """

    requests: int = 4000
    seed: int = 7
    users: int | None = None
    transpose_rate: float = 0.05
    rate_per_s: float = 10.0
    canary_every: int = 200
    canary_cases: int = 24
    verbose_requests: int = 30
    unsafe_outputs: int = 6
    fingerprint_leak: bool = False


@dataclass(frozen=True)
class Step:
    """One scripted request."""

    index: int
    arrival_s: float
    user_id: str
    feature: str
    document: Document
    session_id: str
    turn: int
    last_turn: bool
    verbose: bool = False
    unsafe: bool = False
    #: The user's own randomness: whether they leave feedback, which, and how the
    #: session ends.
    draws: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class Script:
    """The drawn run: its steps and where its events are."""

    scenario: Scenario
    steps: list[Step]
    update_at: int
    verbose_user: str
    verbose_from: int
    unsafe_at: list[int]
    canary_documents: list[Document]
    users: int

    @property
    def canary_at(self) -> list[int]:
        """The request indices at which a canary run starts."""
        return list(range(0, len(self.steps), self.scenario.canary_every))


def build_script(scenario: Scenario, *, extract_before: int, extract_after: int) -> Script:
    """Draw the run.

    Args:
        extract_before: ``extract_dates`` requests that must come before the update
            (for the monitors' baselines and a clean window or two).
        extract_after: ``extract_dates`` requests that must come after it.

    Raises:
        ValueError: the run is too short to hold both.
    """
    rng = random.Random(f"script:{scenario.seed}")
    n = scenario.requests
    n_users = scenario.users or max(60, min(400, n // 12))
    users = [f"user-{i:04d}" for i in range(1, n_users + 1)]
    weights = [rng.lognormvariate(0.0, 0.8) for _ in users]
    verbose_user = users[rng.randrange(n_users // 4, n_users // 2)]
    active = [w if u != verbose_user else 0.0 for u, w in zip(users, weights, strict=True)]
    cumulative = list(itertools.accumulate(active))

    verbose_from = rng.randrange(int(0.1 * n), max(int(0.1 * n) + 1, int(0.3 * n)))
    verbose_slots: set[int] = set()
    i = verbose_from
    while len(verbose_slots) < scenario.verbose_requests and i < n:
        verbose_slots.add(i)
        i += rng.randint(6, 18)
    free = [i for i in range(n) if i not in verbose_slots]
    unsafe_at = sorted(rng.sample(free, min(scenario.unsafe_outputs, len(free))))
    unsafe_bodies = dict(zip(unsafe_at, (_UNSAFE * 4)[:len(unsafe_at)], strict=True))

    def pick_user() -> str:
        return users[min(n_users - 1,
                         bisect.bisect(cumulative, rng.random() * cumulative[-1]))]

    steps: list[Step] = []
    open_sessions: dict[str, _Session] = {}
    sessions = 0
    arrival = 0.0
    for i in range(n):
        arrival += rng.expovariate(scenario.rate_per_s)
        draws = (rng.random(), rng.random(), rng.random())
        serial = rng.randint(10_000, 999_999)  # references carry no trend over time
        if i in verbose_slots or i in unsafe_bodies:
            sessions += 1
            if i in verbose_slots:
                kind = rng.choice(("invoice", "invoice", "contract", "letter", "receipt"))
                user, doc = verbose_user, make_document(rng, kind, serial)
            else:
                kind, body = unsafe_bodies[i]
                user, doc = pick_user(), make_document(rng, kind, serial, unsafe_body=body)
            steps.append(Step(i, arrival, user, "summarise", doc, f"s-{sessions:05d}", 0, True,
                              verbose=i in verbose_slots, unsafe=i in unsafe_bodies,
                              draws=draws))
            continue
        user = pick_user()
        feature = rng.choices(FEATURES, _FEATURE_MIX)[0]
        state = open_sessions.pop(user, None)
        if state is None:
            sessions += 1
            kind = rng.choice(("invoice", "invoice", "contract", "letter", "receipt"))
            state = _Session(f"s-{sessions:05d}", make_document(rng, kind, serial),
                             rng.choices((1, 2, 3), (0.55, 0.25, 0.2))[0])
        last = state.turn + 1 == state.turns
        steps.append(Step(i, arrival, user, feature, state.document, state.session_id,
                          state.turn, last, draws=draws))
        if not last:
            state.turn += 1
            open_sessions[user] = state

    extract = [i for i, s in enumerate(steps) if s.feature == "extract_dates"]
    if len(extract) < extract_before + extract_after:
        raise ValueError(
            f"{n} requests are too few: the monitors need about {extract_before} "
            f"extract_dates requests before the update and {extract_after} after it "
            f"(this run has {len(extract)}); use at least "
            f"{int(n * (extract_before + extract_after) / max(1, len(extract))) + 200}")
    lo = extract[extract_before - 1] + 1
    hi = extract[len(extract) - extract_after]
    update_at = rng.randint(lo, max(lo, hi))
    canary_rng = random.Random(f"canary:{scenario.seed}")
    canary_docs: list[Document] = []
    while len(canary_docs) < scenario.canary_cases:
        kind = ("invoice", "contract", "letter", "receipt")[len(canary_docs) % 4]
        doc = make_document(canary_rng, kind, 900_001 + len(canary_docs))
        if not doc.computed:
            canary_docs.append(doc)
    return Script(scenario, steps, update_at, verbose_user, verbose_from, unsafe_at,
                  canary_docs, n_users)


@dataclass
class _Session:
    """A user's session in progress while the script is drawn."""

    session_id: str
    document: Document
    turns: int
    turn: int = 0


# -- canaries ------------------------------------------------------------------------------


@dataclass
class CanaryRun:
    """One canary run: when it started (request index) and what it found."""

    index: int
    started_ns: int
    ended_ns: int = 0
    changes: int = 0
    passed: int = 0
    cases: int = 0
    error: str | None = None


class CanaryProbe:
    """Runs the service's canary suite in a background thread every few requests.

    Each run goes through :func:`llmvigil.core.canary.run_once`: scores, a pass-rate
    metric and a ``canary_change`` alert per case whose outcome or extracted date
    changed since the previous run, with the history in ``history_path``.
    """

    def __init__(self, service: DocumentService, documents: list[Document],
                 history_path: str | Path, *, concurrency: int = 8) -> None:
        self._at = 0  # the request index of the run in flight: keys the model's randomness
        target = TargetSpec(callable="llmvigil.core.demo:canary",
                            fn=service.canary_target(lambda: self._at))
        cases = tuple(
            CanaryCase(name=name, input=prompt, target=target,
                       expect=Expect(fields={"date": answer}), predicates={},
                       feature="canary")
            for name, prompt, answer in canary_cases(
                [(d.text, d.field, d.answer) for d in documents]))
        self.suite = CanarySuite(name="demo-extract-dates", path="<demo>", feature="canary",
                                 concurrency=concurrency, cases=cases)
        self.history = History(history_path)
        self.runs: list[CanaryRun] = []
        self._thread: threading.Thread | None = None

    def busy(self) -> bool:
        """Whether a run is in flight."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, index: int) -> bool:
        """Start a run unless one is in flight; ``False`` when skipped."""
        if self.busy():
            return False
        self._at = index
        run = CanaryRun(index, time.time_ns())
        self.runs.append(run)
        self._thread = threading.Thread(target=self._run, args=(run,), name="demo-canary",
                                        daemon=True)
        self._thread.start()
        return True

    def _run(self, run: CanaryRun) -> None:
        try:
            report = run_once(self.suite, self.history)
            run.changes = len({c.case for c in report.changes})
            run.passed = sum(r.passed for r in report.results)
            run.cases = len(report.results)
        except Exception as exc:  # a canary failure must not stop the demo
            run.error = f"{type(exc).__name__}: {exc}"
        run.ended_ns = time.time_ns()

    def wait(self, timeout_s: float = 30.0) -> None:
        """Wait for the run in flight, if any."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def close(self) -> None:
        """Close the history."""
        self.history.close()


# -- playing the script ---------------------------------------------------------------------


@dataclass
class RequestLog:
    """What happened to one request (the ground truth the timeline compares with)."""

    index: int
    issued_ns: int
    feature: str
    user_id: str
    release: str = ""
    trace_id: str = ""
    done_ns: int = 0
    transposed: bool = False
    wrong_date: bool = False
    action: str = "serve"
    error: str | None = None


@dataclass
class PlayLog:
    """Everything :func:`play` measured."""

    started_ns: int
    requests: list[RequestLog] = field(default_factory=list)
    update_ns: int = 0
    ended_ns: int = 0
    canary_skipped: int = 0
    #: The most a request was issued after its scheduled time (the machine could not
    #: keep up with the requested speed when this is large).
    max_lag_s: float = 0.0

    def issued(self) -> list[int]:
        """Issue times of the requests, by index (non-decreasing)."""
        return [r.issued_ns for r in self.requests]


#: Feedback behaviour: (chance of feedback, chance it is positive), per outcome.
_FEEDBACK_OK = (0.25, 0.94)
_FEEDBACK_WRONG = (0.8, 0.05)
_COMPLETE = (0.85, 0.3)  # chance a session ends in task_complete: normal, after a wrong date


def _react(service: DocumentService, step: Step, response: Response, wrong: bool) -> None:
    """The user reads the answer and maybe gives feedback."""
    if response.action == "block":
        return
    chance, positive = _FEEDBACK_WRONG if wrong else _FEEDBACK_OK
    if step.verbose:
        chance, positive = 0.5, 1.0
    if step.draws[0] >= chance:
        return
    if step.draws[1] < positive:
        kind, correction = "thumbs_up", None
    elif wrong and step.draws[1] > 0.6:
        kind, correction = "correction", step.document.answer
    else:
        kind, correction = "thumbs_down", None
    service.record_feedback(response, kind, user_id=step.user_id, session_id=step.session_id,
                            correction=correction,
                            category="wrong_date" if wrong and kind != "thumbs_up" else None)


async def play(script: Script, service: DocumentService, llm: FakeLLM, *, speed: float,
               canary: CanaryProbe | None = None,
               on_request: Callable[[int, PlayLog], None] | None = None,
               max_in_flight: int = 2000) -> PlayLog:
    """Run ``script``: issue each request at its arrival time (scaled by ``speed``).

    The model update happens just before request ``script.update_at`` is issued;
    requests in flight keep the release they started with. ``on_request(index, log)``
    is called as each request is issued (for progress displays).
    """
    log = PlayLog(started_ns=time.time_ns())
    log.requests = [RequestLog(s.index, 0, s.feature, s.user_id) for s in script.steps]
    limit = asyncio.Semaphore(max_in_flight)
    wrong_in_session: dict[str, bool] = {}
    canary_at = set(script.canary_at)
    tasks: set[asyncio.Task[None]] = set()

    async def one(step: Step) -> None:
        entry = log.requests[step.index]
        try:
            event = "start" if step.turn == 0 else "follow_up"
            service.record_session(step.session_id, event, user_id=step.user_id,
                                   feature=step.feature)
            response = await _call(service, step)
            entry.release = response.completion.release
            entry.trace_id = response.trace_id
            entry.transposed = response.completion.transposed
            entry.action = response.action
            wrong = (step.feature == "extract_dates" and response.action != "block"
                     and response.served_date != step.document.answer)
            entry.wrong_date = wrong
            if wrong:
                wrong_in_session[step.session_id] = True
            _react(service, step, response, wrong)
            if step.last_turn:
                spoiled = wrong_in_session.pop(step.session_id, False)
                complete = step.draws[2] < _COMPLETE[1 if spoiled else 0]
                service.record_session(step.session_id,
                                       "task_complete" if complete else "abandon",
                                       user_id=step.user_id, feature=step.feature)
        except Exception as exc:  # one failed request must not stop the run
            entry.error = f"{type(exc).__name__}: {exc}"
        finally:
            entry.done_ns = time.time_ns()
            limit.release()

    start = time.perf_counter()
    for step in script.steps:
        delay = start + step.arrival_s * speed - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        else:
            log.max_lag_s = max(log.max_lag_s, -delay)
        await limit.acquire()
        if step.index == script.update_at:
            llm.update()
            log.update_ns = time.time_ns()
        if canary is not None and step.index in canary_at and not canary.start(step.index):
            log.canary_skipped += 1
        log.requests[step.index].issued_ns = time.time_ns()
        task = asyncio.ensure_future(one(step))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if on_request is not None:
            on_request(step.index, log)
    while tasks:
        await asyncio.gather(*list(tasks))
    log.ended_ns = time.time_ns()
    return log


async def _call(service: DocumentService, step: Step) -> Response:
    doc, key = step.document, f"r{step.index}"
    if step.feature == "extract_dates":
        return await service.extract_dates(doc.text, doc.field, user_id=step.user_id,
                                           session_id=step.session_id, key=key)
    if step.feature == "summarise":
        instructions = ""
        if step.verbose:
            archive = "\n\n".join(doc.text for _ in range(400))
            instructions = _VERBOSE_PROMPT.format(archive=archive)
        return await service.summarise(doc.text, user_id=step.user_id,
                                       session_id=step.session_id, key=key,
                                       instructions=instructions)
    return await service.classify(doc.text, user_id=step.user_id,
                                  session_id=step.session_id, key=key)
