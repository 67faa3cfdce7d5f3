"""The built-in embedders: hashed n-grams against a plain-Python reference, the
sentence-transformers loader (when installed), and the provider embedder against a
local OpenAI-compatible HTTP server."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from llmvigil.core.errors import ConfigError
from llmvigil.plugins.embedders import (
    BUILTIN_EMBEDDERS,
    HashedEmbedder,
    ProviderEmbedder,
    SentenceTransformerEmbedder,
    llmvigil_embedders,
)
from llmvigil.plugins.types import EmbedderInfo

M64 = (1 << 64) - 1
PRIME = 1099511628211
MIX = 0x9E3779B97F4A7C15


# -- hashed: a plain-Python reference of the documented hashing ---------------------------


def _mix(h: int, salt: int) -> int:
    h ^= (salt * 0xBF58476D1CE4E5B9) & M64
    h = (h * MIX) & M64
    return h ^ (h >> 29)


def _poly(units: list[int]) -> int:
    h = 0
    for u in units:
        h = (h * PRIME + u) & M64
    return h


def _add(vec: list[float], h: int) -> None:
    vec[(h >> 32) % len(vec)] += 1.0 - 2.0 * ((h >> 7) & 1)


def _unit(vec: list[float]) -> np.ndarray:
    arr = np.array(vec)
    norm = np.linalg.norm(arr)
    return arr / norm if norm else arr


def reference(text: str, dim: int = 384, chars: tuple[int, int] = (3, 5),
              words: tuple[int, int] = (1, 2), word_weight: float = 1.0) -> np.ndarray:
    """One text's embedding computed n-gram by n-gram with Python integers."""
    data = list(f" {text} ".encode())
    char_vec = [0.0] * dim
    for n in range(chars[0], chars[1] + 1):
        for i in range(len(data) - n + 1):
            _add(char_vec, _mix(_poly(data[i:i + n]), 16 + n))
    ids = [zlib.crc32(w.encode()) for w in re.findall(r"\w+", text)]
    word_vec = [0.0] * dim
    for n in range(words[0], words[1] + 1):
        for i in range(len(ids) - n + 1):
            _add(word_vec, _mix(_poly(ids[i:i + n]), 32 + n))
    return _unit(list(_unit(char_vec) + np.sqrt(word_weight) * _unit(word_vec)))


TEXTS = [
    "Invoice INV-4821 from Müller GmbH is dated 14/03/2024.",
    "The total amount is 1.234,56 EUR.",
    "",
    "a",
    "Ünïcödé — ✓ 日本語 text with emoji 🎉 and tabs\tand\nnewlines",
    "same words same words same words",
]


def test_hashed_matches_the_reference_text_by_text() -> None:
    emb = HashedEmbedder()
    got = emb(TEXTS)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    for text, row in zip(TEXTS, got, strict=True):
        np.testing.assert_allclose(row, reference(text), atol=1e-6, err_msg=repr(text))


def test_hashed_options_reach_the_computation() -> None:
    emb = HashedEmbedder({"dim": 64, "char_ngrams": [2, 2], "word_ngrams": [1, 3],
                          "word_weight": 4.0})
    got = emb(TEXTS[:2])
    for text, row in zip(TEXTS[:2], got, strict=True):
        np.testing.assert_allclose(row, reference(text, 64, (2, 2), (1, 3), 4.0), atol=1e-6)
    chars_only = HashedEmbedder({"word_ngrams": [0, 0]})(["ab"])[0]
    # " ab " has two trigrams and one 4-gram: three signed unit counts, normalised
    assert np.count_nonzero(chars_only) == 3
    np.testing.assert_allclose(np.abs(chars_only[chars_only != 0]), [3 ** -0.5] * 3, atol=1e-6)
    lower = HashedEmbedder({"lowercase": True})
    np.testing.assert_array_equal(lower(["ABC Def"]), lower(["abc def"]))


def test_hashed_rows_are_unit_or_zero_and_independent_of_the_batch() -> None:
    emb = HashedEmbedder()
    batch = emb(TEXTS)
    norms = np.linalg.norm(batch, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 3, 4, 5]], 1.0, atol=1e-6)
    assert norms[2] == 0.0, "an empty text embeds as the zero vector"
    for i, text in enumerate(TEXTS):
        np.testing.assert_array_equal(emb([text])[0], batch[i])
    assert emb([]).shape == (0, 384)


def test_hashed_similarity_follows_shared_ngrams() -> None:
    emb = HashedEmbedder()
    a, b, c = emb(["The invoice is dated 14/03/2024 and due 13/04/2024.",
                   "The invoice is dated 15/03/2024 and due 13/04/2024.",
                   "Bonjour, je voudrais réserver une table pour deux."])
    assert float(a @ b) > 0.8 > 0.2 > float(a @ c)


def test_hashed_is_the_same_in_another_process() -> None:
    """The hash is fixed, not Python's per-process salted hash()."""
    code = ("import json; from llmvigil.plugins.embedders import HashedEmbedder; "
            f"print(json.dumps(HashedEmbedder()({TEXTS!r}).tolist()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "12345", "PATH": ""})
    np.testing.assert_array_equal(np.array(json.loads(out.stdout), dtype=np.float32),
                                  HashedEmbedder()(TEXTS))


@pytest.mark.parametrize("options, key", [
    ({"dim": 4}, "dim"),
    ({"char_ngrams": [4, 2]}, "char_ngrams"),
    ({"char_ngrams": [0, 0], "word_ngrams": [0, 0]}, "both disabled"),
    ({"colour": "red"}, "unknown key"),
])
def test_hashed_rejects_bad_options_naming_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        HashedEmbedder(options)


def test_hook_offers_the_three_builtins() -> None:
    infos = llmvigil_embedders()
    assert [i.name for i in infos] == ["hashed", "sentence-transformers", "provider"]
    assert all(isinstance(i, EmbedderInfo) for i in infos)
    assert tuple(infos) == BUILTIN_EMBEDDERS


# -- sentence-transformers ----------------------------------------------------------------

HAVE_ST = importlib.util.find_spec("sentence_transformers") is not None


@pytest.mark.skipif(HAVE_ST, reason="sentence-transformers is installed")
def test_sentence_transformers_missing_gives_the_install_command() -> None:
    with pytest.raises(ConfigError, match="pip install sentence-transformers"):
        SentenceTransformerEmbedder({})


@pytest.mark.skipif(not HAVE_ST, reason="sentence-transformers is not installed")
def test_sentence_transformers_embeds_with_a_cached_model() -> None:
    emb = SentenceTransformerEmbedder({})
    try:
        got = emb(["a date: 14/03/2024", "a date: 15/03/2024", "something else entirely"])
    except RuntimeError as exc:  # not in the local cache: never downloaded by tests
        pytest.skip(str(exc))
    assert got.shape[0] == 3 and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    assert float(got[0] @ got[1]) > float(got[0] @ got[2])


# -- provider: a local OpenAI-compatible endpoint -----------------------------------------


class _Endpoint(BaseHTTPRequestHandler):
    calls: list[dict[str, Any]] = []
    mode = "ok"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({"path": self.path, "body": body,
                                 "auth": self.headers.get("Authorization")})
        if self.mode == "slow":
            time.sleep(1.0)  # the client has given up by now: answer nothing
            return
        if self.mode == "error":
            self.send_response(503)
            self.end_headers()
            return
        dim = body.get("dimensions", 3)
        items = [{"object": "embedding", "index": i,
                  "embedding": [float(len(t)), float(i), *([1.0] * (dim - 2))]}
                 for i, t in enumerate(body["input"])]
        items.reverse()  # the index, not the order, says which text a vector belongs to
        data = json.dumps({"object": "list", "data": items, "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def endpoint() -> Iterator[str]:
    _Endpoint.calls = []
    _Endpoint.mode = "ok"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/embeddings"
    server.shutdown()
    server.server_close()


def test_provider_batches_orders_and_authenticates(endpoint: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_EMBED_KEY", "sk-test-123")
    emb = ProviderEmbedder({"url": endpoint, "model": "emb-small", "batch_size": 2,
                            "api_key_env": "TEST_EMBED_KEY", "dimensions": 4})
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    got = emb(texts)
    emb.close()
    assert got.dtype == np.float32 and got.shape == (5, 4)
    assert got[:, 0].tolist() == [1, 2, 3, 4, 5], "vectors follow the texts, not the reply order"
    assert got[:, 1].tolist() == [0, 1, 0, 1, 0]
    assert [c["body"]["input"] for c in _Endpoint.calls] == [["a", "bb"], ["ccc", "dddd"],
                                                              ["eeeee"]]
    assert {c["path"] for c in _Endpoint.calls} == {"/v1/embeddings"}
    assert {c["body"]["model"] for c in _Endpoint.calls} == {"emb-small"}
    assert {c["body"]["dimensions"] for c in _Endpoint.calls} == {4}
    assert {c["auth"] for c in _Endpoint.calls} == {"Bearer sk-test-123"}


def test_provider_errors_and_timeouts_raise_quickly(endpoint: str) -> None:
    emb = ProviderEmbedder({"url": endpoint, "api_key_env": None, "timeout_s": 0.2})
    _Endpoint.mode = "error"
    with pytest.raises(RuntimeError, match="HTTP 503"):
        emb(["x"])
    assert _Endpoint.calls[-1]["auth"] is None, "no key configured: no Authorization header"
    _Endpoint.mode = "slow"
    started = time.monotonic()
    with pytest.raises(Exception, match=r"(?i)timed? ?out"):
        emb(["x"])
    assert time.monotonic() - started < 0.9
    emb.close()


def test_provider_rejects_a_non_http_url() -> None:
    with pytest.raises(ConfigError, match="url"):
        ProviderEmbedder({"url": "file:///etc/passwd"})
