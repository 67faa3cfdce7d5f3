"""An instrumented example app: a small document-analysis service on the local store.

It needs no account and no network: a fake model streams tokens with realistic
timing, a few users call three features, some calls fail, users leave feedback and
run multi-turn sessions. Everything lands in the local SQLite store, and the app
ends by printing ``vigil report``.

    python examples/app.py --requests 200 --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import llmvigil

FEATURES = {"extract_dates": 0.5, "summarise": 0.3, "classify": 0.2}
MODELS = {"extract_dates": "claude-sonnet-4-6", "summarise": "claude-haiku-4-5",
          "classify": "claude-haiku-4-5"}


class FakeModel:
    """Streams words with a time to first token and gaps drawn like a real API's."""

    def __init__(self, rng: random.Random, speed: float) -> None:
        self.rng = rng
        self.speed = speed

    async def stream(self, prompt: str, words: int) -> AsyncIterator[str]:
        await asyncio.sleep(self.rng.lognormvariate(-2.3, 0.4) * self.speed)  # ~0.1 s TTFT
        for i in range(words):
            await asyncio.sleep(self.rng.expovariate(1 / 0.012) * self.speed)
            yield f"word{i} "


@llmvigil.trace(kind="llm", name="model.generate")
async def generate(model: FakeModel, model_name: str, prompt: str,
                   words: int) -> AsyncIterator[str]:
    span = llmvigil.current_span()
    if span is not None:
        span.set(model=model_name, provider="fake", operation="chat")
        span.set_usage(input_tokens=len(prompt.split()) * 4, output_tokens=words,
                       cache_read_tokens=200 if "cached" in prompt else 0)
    async for token in model.stream(prompt, words):
        yield token


@llmvigil.trace(kind="chain")
async def handle_request(model: FakeModel, rng: random.Random, feature: str, turn: int) -> str:
    with llmvigil.span("retrieve", kind="retriever") as r:
        await asyncio.sleep(rng.uniform(0.001, 0.005))
        r.set(metadata={"documents": 3})
    if rng.random() < 0.03:
        raise TimeoutError("upstream model timed out")
    prompt = f"{feature} document {turn} cached" if turn else f"{feature} document"
    text = "".join([t async for t in generate(model, MODELS[feature], prompt,
                                              rng.randint(10, 40))])
    return text


async def run(requests: int, seed: int, speed: float, concurrency: int) -> None:
    rng = random.Random(seed)
    model = FakeModel(rng, speed)
    users = [f"user-{i:03d}" for i in range(25)]
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            user = rng.choice(users)
            session = f"session-{user}-{i // 5}"
            feature = rng.choices(list(FEATURES), weights=list(FEATURES.values()))[0]
            if i % 5 == 0:
                llmvigil.session_event(session, "start", user_id=user, feature=feature)
            try:
                with llmvigil.span("request", kind="chain", feature=feature, user_id=user,
                                   session_id=session) as req:
                    await handle_request(model, rng, feature, i % 5)
            except TimeoutError:
                llmvigil.session_event(session, "abandon", user_id=user, feature=feature)
                return
            if rng.random() < 0.3:
                kind = "thumbs_up" if rng.random() < 0.8 else "thumbs_down"
                llmvigil.feedback(req, kind, user_id=user, feature=feature)
            if i % 5 == 4:
                llmvigil.session_event(session, "task_complete", user_id=user, feature=feature)

    await asyncio.gather(*(one(i) for i in range(requests)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests to simulate")
    parser.add_argument("--seed", type=int, default=7, help="random seed")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="time scale of the fake model (0.1 = ten times faster)")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--config", default=None, help="vigil.yaml (default: local store)")
    args = parser.parse_args(argv)
    if args.requests <= 0:
        parser.error("--requests must be a positive number")
    llmvigil.init(args.config)
    t0 = time.perf_counter()
    asyncio.run(run(args.requests, args.seed, args.speed, args.concurrency))
    llmvigil.shutdown()
    print(f"simulated {args.requests} requests in {time.perf_counter() - t0:.1f}s; "
          "report from the local store:\n", flush=True)
    report = [sys.executable, "-m", "llmvigil.core.cli", "report"]
    if args.config:
        report += ["--config", args.config]
    return subprocess.call(report)


if __name__ == "__main__":
    sys.exit(main())
