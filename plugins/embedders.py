"""The built-in text embedders for the drift monitor (the ``llmvigil_embedders`` hook).

* ``hashed`` (the default): signed feature hashing of character n-grams and word
  n-grams into a fixed number of dimensions, L2-normalised. numpy only, no model, no
  download, deterministic across processes and machines (the hash is a fixed
  polynomial over UTF-8 bytes, not Python's salted ``hash``).
* ``sentence-transformers``: a sentence-transformers model, when the user installs
  the package. The model is loaded at the first call from the local cache or a local
  path only (``local_files_only``): llmvigil never downloads weights at run time.
* ``provider``: an OpenAI-compatible ``/v1/embeddings`` endpoint over HTTP (httpx),
  with a timeout; also the example to copy for a third-party embedder plugin.

Each factory takes the ``monitors.drift.embedder_options`` mapping, validates it
(raising :class:`~llmvigil.core.errors.ConfigError` naming the key) and returns
``embed(texts) -> numpy.ndarray`` of shape ``(len(texts), dim)``, float32. Factories
are cheap: models and connections are created at the first call, which the drift
monitor makes from its background thread.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from ..core.errors import ConfigError
from ..core.monitors.windows import Settings, parse_settings
from .hookspecs import hookimpl
from .types import EmbedderInfo

__all__ = [
    "BUILTIN_EMBEDDERS",
    "HashedEmbedder",
    "HashedOptions",
    "ProviderEmbedder",
    "ProviderOptions",
    "SentenceTransformerEmbedder",
    "SentenceTransformerOptions",
    "llmvigil_embedders",
]

Embed = Callable[[Sequence[str]], np.ndarray]

_MASK64 = (1 << 64) - 1
_PRIME = np.uint64(1099511628211)  # FNV-1a's 64-bit prime: odd, so multiplication mixes
_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio (Fibonacci hashing)
_WORD_RE = re.compile(r"\w+")


# ---------------------------------------------------------------------------
# hashed
# ---------------------------------------------------------------------------


class HashedOptions(Settings):
    """``embedder_options`` of the ``hashed`` embedder."""

    dim: int = Field(default=384, ge=8, le=65_536)
    #: Inclusive range of character n-gram lengths (over UTF-8 bytes); [0, 0] disables.
    char_ngrams: tuple[int, int] = (3, 5)
    #: Inclusive range of word n-gram lengths (words are ``\\w+`` runs); [0, 0] disables.
    word_ngrams: tuple[int, int] = (1, 2)
    #: Relative weight of the word part against the character part.
    word_weight: float = Field(default=1.0, ge=0)
    lowercase: bool = False

    @model_validator(mode="after")
    def _ranges(self) -> HashedOptions:
        """Each range is ``[lo, hi]`` with ``1 <= lo <= hi <= 8``, or ``[0, 0]``; one is on."""
        for name in ("char_ngrams", "word_ngrams"):
            lo, hi = getattr(self, name)
            if (lo, hi) != (0, 0) and not 1 <= lo <= hi <= 8:
                raise ValueError(f"{name} must be [lo, hi] with 1 <= lo <= hi <= 8, "
                                 "or [0, 0] to disable")
        if self.char_ngrams == (0, 0) and (self.word_ngrams == (0, 0) or not self.word_weight):
            raise ValueError("char_ngrams and word_ngrams are both disabled")
        return self


def _finalise(h: np.ndarray, salt: int) -> np.ndarray:
    """Mix a uint64 array of raw hashes with ``salt`` (so n-gram lengths never collide)."""
    h = h ^ np.uint64((salt * 0xBF58476D1CE4E5B9) & _MASK64)
    h = h * _MIX
    return h ^ (h >> np.uint64(29))


def _ngram_hashes(units: np.ndarray, doc: np.ndarray, lo: int, hi: int,
                  salt: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every run of ``lo..hi`` consecutive units inside one document, with its doc."""
    hashes: list[np.ndarray] = []
    docs: list[np.ndarray] = []
    units = units.astype(np.uint64)
    for n in range(lo, hi + 1):
        count = units.size - n + 1
        if count <= 0:
            break
        h = np.zeros(count, dtype=np.uint64)
        for j in range(n):
            h = h * _PRIME + units[j:j + count]
        inside = doc[:count] == doc[n - 1:n - 1 + count]
        hashes.append(_finalise(h[inside], salt * 16 + n))
        docs.append(doc[:count][inside])
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(hashes), np.concatenate(docs)


class HashedEmbedder:
    """Signed hashing of character and word n-grams; see :class:`HashedOptions`.

    Each part (characters, words) is L2-normalised, weighted, summed and the result
    L2-normalised again; an empty text embeds as the zero vector.
    """

    def __init__(self, settings: Mapping[str, Any] | HashedOptions | None = None) -> None:
        self.options = parse_settings(HashedOptions, settings, "embedder_options")
        self.dim = self.options.dim

    def _project(self, hashes: np.ndarray, docs: np.ndarray, n_docs: int) -> np.ndarray:
        dim = np.uint64(self.dim)
        bucket = ((hashes >> np.uint64(32)) % dim).astype(np.int64)
        sign = 1.0 - 2.0 * ((hashes >> np.uint64(7)) & np.uint64(1)).astype(np.float64)
        flat = np.bincount(docs * self.dim + bucket, weights=sign,
                           minlength=n_docs * self.dim)
        out = flat.astype(np.float64, copy=False).reshape(n_docs, self.dim)  # int if empty
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out

    def _chars(self, texts: Sequence[str]) -> np.ndarray:
        lo, hi = self.options.char_ngrams
        encoded = [f" {t} ".encode("utf-8", "surrogatepass") for t in texts]
        units = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        doc = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        hashes, docs = _ngram_hashes(units, doc, lo, hi, salt=1)
        return self._project(hashes, docs, len(texts))

    def _words(self, texts: Sequence[str]) -> np.ndarray:
        lo, hi = self.options.word_ngrams
        ids: list[int] = []
        lengths: list[int] = []
        crc = zlib.crc32
        for text in texts:
            words = _WORD_RE.findall(text)
            ids.extend(crc(w.encode("utf-8", "surrogatepass")) for w in words)
            lengths.append(len(words))
        units = np.asarray(ids, dtype=np.uint64)
        doc = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        hashes, docs = _ngram_hashes(units, doc, lo, hi, salt=2)
        return self._project(hashes, docs, len(texts))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``; returns float32 of shape ``(len(texts), dim)``."""
        texts = [t.lower() for t in texts] if self.options.lowercase else list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        o = self.options
        total = np.zeros((len(texts), self.dim), dtype=np.float64)
        if o.char_ngrams != (0, 0):
            total += self._chars(texts)
        if o.word_ngrams != (0, 0) and o.word_weight > 0:
            total += math.sqrt(o.word_weight) * self._words(texts)
        norms = np.linalg.norm(total, axis=1, keepdims=True)
        np.divide(total, norms, out=total, where=norms > 0)
        return total.astype(np.float32)


# ---------------------------------------------------------------------------
# sentence-transformers
# ---------------------------------------------------------------------------


class SentenceTransformerOptions(Settings):
    """``embedder_options`` of the ``sentence-transformers`` embedder."""

    #: A model name in the local Hugging Face cache, or a local directory.
    model: str = Field(default="sentence-transformers/all-MiniLM-L6-v2", min_length=1)
    device: str = "cpu"
    batch_size: int = Field(default=64, ge=1)
    normalize: bool = True


class SentenceTransformerEmbedder:
    """A sentence-transformers model, loaded at the first call from local files only.

    Raises:
        ConfigError: the ``sentence-transformers`` package is not installed.
    """

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.options = parse_settings(SentenceTransformerOptions, settings,
                                      "embedder_options")
        if importlib.util.find_spec("sentence_transformers") is None:
            raise ConfigError("embedder 'sentence-transformers' needs the "
                              "sentence-transformers package: pip install sentence-transformers")
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                o = self.options
                try:
                    self._model = SentenceTransformer(o.model, device=o.device,
                                                      local_files_only=True)
                except Exception as exc:
                    raise RuntimeError(
                        f"sentence-transformers model {o.model!r} is not available locally "
                        f"({exc}); download it once outside llmvigil or give a local path"
                    ) from exc
            return self._model

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``; returns float32 of shape ``(len(texts), dim)``."""
        model = self._load()
        out = model.encode(list(texts), batch_size=self.options.batch_size,
                           normalize_embeddings=self.options.normalize,
                           convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)


# ---------------------------------------------------------------------------
# provider (OpenAI-compatible embeddings API)
# ---------------------------------------------------------------------------


class ProviderOptions(Settings):
    """``embedder_options`` of the ``provider`` embedder."""

    #: The full endpoint URL (``.../v1/embeddings``).
    url: str = "https://api.openai.com/v1/embeddings"
    model: str = Field(default="text-embedding-3-small", min_length=1)
    #: Environment variable holding the API key (sent as a Bearer token); the key
    #: itself never appears in the config, a record or a log line.
    api_key_env: str | None = "OPENAI_API_KEY"
    #: Requested output size, for models that support it (``dimensions``).
    dimensions: int | None = Field(default=None, ge=1)
    timeout_s: float = Field(default=10.0, gt=0)
    batch_size: int = Field(default=256, ge=1, le=4096)
    headers: dict[str, str] = {}

    @model_validator(mode="after")
    def _http(self) -> ProviderOptions:
        """Only http(s) URLs."""
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return self


class ProviderEmbedder:
    """Embeds through an OpenAI-compatible ``POST {url}`` with ``{"model", "input"}``.

    Raises:
        ConfigError: httpx is not installed.
    """

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.options = parse_settings(ProviderOptions, settings, "embedder_options")
        if importlib.util.find_spec("httpx") is None:
            raise ConfigError("embedder 'provider' needs the httpx package: pip install httpx")
        self._client: Any = None
        self._lock = threading.Lock()

    def _http(self) -> Any:
        with self._lock:
            if self._client is None:
                import httpx

                o = self.options
                headers = {"User-Agent": "llmvigil", **o.headers}
                key = os.environ.get(o.api_key_env) if o.api_key_env else None
                if key:
                    headers["Authorization"] = f"Bearer {key}"
                self._client = httpx.Client(timeout=o.timeout_s, headers=headers)
            return self._client

    def _batch(self, texts: list[str]) -> list[list[float]]:
        o = self.options
        body: dict[str, Any] = {"model": o.model, "input": texts}
        if o.dimensions is not None:
            body["dimensions"] = o.dimensions
        response = self._http().post(o.url, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"embeddings endpoint answered HTTP {response.status_code}")
        data = response.json().get("data")
        if not isinstance(data, list) or len(data) != len(texts):
            raise RuntimeError("embeddings endpoint returned a malformed 'data' list")
        rows: list[list[float]] = [[] for _ in texts]
        for position, item in enumerate(data):
            index = item.get("index", position)
            if not isinstance(index, int) or not 0 <= index < len(texts):
                raise RuntimeError(f"embeddings endpoint returned index {index!r}")
            rows[index] = item["embedding"]
        return rows

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` in batches of ``batch_size``; float32 ``(len(texts), dim)``."""
        texts = list(texts)
        rows: list[list[float]] = []
        step = self.options.batch_size
        for start in range(0, len(texts), step):
            rows.extend(self._batch(texts[start:start + step]))
        if not rows:
            return np.zeros((0, self.options.dimensions or 1), dtype=np.float32)
        try:
            return np.asarray(rows, dtype=np.float32)
        except ValueError:
            raise RuntimeError("embeddings endpoint returned vectors of differing sizes") \
                from None

    def close(self) -> None:
        """Close the HTTP connection pool."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


#: The embedders this module offers.
BUILTIN_EMBEDDERS: tuple[EmbedderInfo, ...] = (
    EmbedderInfo("hashed", HashedEmbedder,
                 "hashed character and word n-grams (numpy only, no model; the default)"),
    EmbedderInfo("sentence-transformers", SentenceTransformerEmbedder,
                 "a locally available sentence-transformers model (pip install "
                 "sentence-transformers)"),
    EmbedderInfo("provider", ProviderEmbedder,
                 "an OpenAI-compatible /v1/embeddings endpoint over HTTP (needs httpx)"),
)


@hookimpl
def llmvigil_embedders() -> list[EmbedderInfo]:
    """The built-in embedders."""
    return list(BUILTIN_EMBEDDERS)
