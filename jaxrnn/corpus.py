"""Corpora for language models: readers, tokenisers, vocabularies and splits.

Everything here runs on the host (plain Python and NumPy) and hands integer arrays to
the JAX side. Three kinds of corpus are read:

* **plain text** (``format="text"``), at character or word level, split by position:
  the first 80% of the tokens for training, the next 10% for validation, the last 10%
  for testing;
* **Penn-Treebank format** (``format="ptb"``): three files ``ptb.train.txt``,
  ``ptb.valid.txt`` and ``ptb.test.txt``, one sentence per line, words separated by
  spaces; ``<eos>`` is appended to every line and ``<unk>`` is kept as a word;
* **the default corpus** (``path=None``): the Python source of the running
  interpreter's standard library, read in a fixed order up to a size cap, at character
  level. It needs no download and exists wherever Python does.

Files are read as strict UTF-8 (a UTF-8 byte-order mark is dropped). An empty file, a
binary file (one holding a NUL byte), a UTF-16/UTF-32 file or bytes that are not UTF-8
raise ``ValueError`` naming the file.

Example::

    >>> import jaxrnn as jr
    >>> vocab = jr.corpus.build_vocabulary(list("hello"), level="char")
    >>> vocab.tokens
    ('e', 'h', 'l', 'o')
    >>> ids = vocab.encode("hole")
    >>> ids.tolist(), vocab.decode(ids)
    ([1, 3, 2, 0], 'hole')
"""

from __future__ import annotations

import collections
import os
import pathlib
import re
import sys
import sysconfig
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Sequence

import numpy as np

__all__ = [
    "EOS", "UNK", "LEVELS", "FORMATS", "DEFAULT_CORPUS_CHARS",
    "Vocabulary", "Corpus",
    "read_text", "tokenize", "build_vocabulary", "split_tokens",
    "load_text", "load_ptb", "load_default", "load_corpus", "default_corpus_files",
    "check_same_vocabulary",
]

EOS = "<eos>"
UNK = "<unk>"
LEVELS = ("char", "word")
FORMATS = ("text", "ptb")
#: Size cap of the default corpus, in characters.
DEFAULT_CORPUS_CHARS = 2_000_000
#: Directories of the standard library that the default corpus leaves out.
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
_PTB_SPLITS = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}
# Words (with inner apostrophes, e.g. "don't") and single punctuation marks.
_WORD_RE = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


# --------------------------------------------------------------------------- reading


def read_text(path: str | os.PathLike) -> str:
    """Read a file as strict UTF-8 text.

    Args:
      path: the file.

    Returns:
      Its text, with a leading UTF-8 byte-order mark removed.

    Raises:
      ValueError: the path is not a file, the file is empty, holds a NUL byte (binary),
        starts with a UTF-16 / UTF-32 byte-order mark, or is not valid UTF-8. The message
        names the file and, where it applies, the offending byte offset.
    """
    p = pathlib.Path(path)
    if not p.exists():
        raise ValueError(f"corpus file {str(p)!r} does not exist")
    if p.is_dir():
        raise ValueError(f"corpus path {str(p)!r} is a directory; expected a text file")
    data = p.read_bytes()
    if not data:
        raise ValueError(f"corpus file {str(p)!r} is empty (0 bytes)")
    for bom, enc in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                     (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
        if data.startswith(bom):
            raise ValueError(
                f"corpus file {str(p)!r} is {enc} encoded (it starts with a {enc} byte-order mark); "
                "jaxrnn reads UTF-8 text only: convert it, e.g. with `iconv -t UTF-8`"
            )
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ValueError(
            f"corpus file {str(p)!r} looks binary (NUL byte at offset {nul}); expected UTF-8 text"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = data[e.start : e.start + 1].hex()
        raise ValueError(
            f"corpus file {str(p)!r} is not valid UTF-8 (byte 0x{bad} at offset {e.start}: {e.reason}); "
            "jaxrnn reads UTF-8 text only: re-encode the file as UTF-8"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text:
        raise ValueError(f"corpus file {str(p)!r} is empty (it holds only a byte-order mark)")
    return text


def tokenize(text: str, level: str) -> list[str]:
    """Split text into tokens.

    * ``"char"``: every character is a token (newlines included).
    * ``"word"``: each line becomes its words and punctuation marks (regular expression
      ``\\w+(?:'\\w+)*|[^\\w\\s]``, so ``"don't."`` gives ``["don't", "."]``) followed
      by ``<eos>``; blank lines give nothing.

    Example::

      >>> tokenize("To be, or not\\n\\nto be.", "word")
      ['To', 'be', ',', 'or', 'not', '<eos>', 'to', 'be', '.', '<eos>']
    """
    _check_level(level)
    if level == "char":
        return list(text)
    out: list[str] = []
    for line in text.splitlines():
        words = _WORD_RE.findall(line)
        if words:
            out.extend(words)
            out.append(EOS)
    return out


def _check_level(level) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


# --------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class Vocabulary:
    """A bijection between tokens and ids ``0 .. size - 1``.

    Attributes:
      tokens: the token of each id.
      level: ``"char"`` or ``"word"``; says how :meth:`decode` joins tokens.
      unk: the token that unknown tokens map to (``"<unk>"``), or ``None`` if an unknown
        token is an error.
    """

    tokens: tuple[str, ...]
    level: str
    unk: str | None = None
    _index: dict = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        _check_level(self.level)
        tokens = tuple(self.tokens)
        if not tokens:
            raise ValueError("tokens must hold at least one token, got an empty vocabulary")
        if any(not isinstance(t, str) for t in tokens):
            raise TypeError("tokens must be strings")
        index = {t: i for i, t in enumerate(tokens)}
        if len(index) != len(tokens):
            dup = [t for t, n in collections.Counter(tokens).items() if n > 1][:3]
            raise ValueError(f"tokens must be distinct, got duplicates {dup}")
        if self.unk is not None and self.unk not in index:
            raise ValueError(f"unk token {self.unk!r} is not among the tokens")
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "_index", index)

    @property
    def size(self) -> int:
        """The number of tokens ``V``."""
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token) -> bool:
        return token in self._index

    def id(self, token: str) -> int:
        """The id of ``token`` (of ``unk`` when unknown and ``unk`` is set)."""
        i = self._index.get(token)
        if i is None:
            if self.unk is None:
                raise ValueError(f"token {token!r} is not in the vocabulary")
            return self._index[self.unk]
        return i

    def encode(self, text_or_tokens: str | Sequence[str], *, where: str = "the input") -> np.ndarray:
        """Token ids (``int32``) of a string (tokenised at this vocabulary's level) or of a
        token list. Unknown tokens map to ``unk``; without ``unk`` they raise
        ``ValueError`` naming up to five of them and ``where`` they came from."""
        if isinstance(text_or_tokens, str) and self.level == "char":
            return self._encode_chars(text_or_tokens, where)
        tokens = tokenize(text_or_tokens, self.level) if isinstance(text_or_tokens, str) else text_or_tokens
        idx = self._index
        if self.unk is None:
            try:
                return np.fromiter((idx[t] for t in tokens), np.int32, len(tokens))
            except KeyError:
                missing = sorted({t for t in tokens if t not in idx})
                raise ValueError(
                    f"{where} holds {len(missing)} token(s) missing from the vocabulary of "
                    f"{self.size} {self.level} tokens, e.g. {missing[:5]}"
                ) from None
        u = idx[self.unk]
        return np.fromiter((idx.get(t, u) for t in tokens), np.int32, len(tokens))

    def _encode_chars(self, text: str, where: str) -> np.ndarray:
        # Vectorised: code points -> ids through a sorted table of the vocabulary's code points.
        if any(len(t) != 1 for t in self.tokens if t != self.unk):
            return self.encode(list(text), where=where)
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        chars = [t for t in self.tokens if len(t) == 1]
        table = np.array([ord(t) for t in chars], np.uint32)
        order = np.argsort(table)
        ids = np.array([self._index[c] for c in chars], np.int32)[order]
        table = table[order]
        pos = np.clip(np.searchsorted(table, codes), 0, len(table) - 1)
        found = table[pos] == codes
        if not found.all():
            if self.unk is None:
                missing = sorted({chr(c) for c in codes[~found]})
                raise ValueError(
                    f"{where} holds {len(missing)} character(s) missing from the vocabulary of "
                    f"{self.size} characters, e.g. {missing[:5]}"
                )
            return np.where(found, ids[pos], self._index[self.unk]).astype(np.int32)
        return ids[pos]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids: characters are concatenated; words are joined by
        spaces, with ``<eos>`` turned into a line break."""
        toks = [self.tokens[int(i)] for i in np.asarray(ids).reshape(-1)]
        if self.level == "char":
            return "".join(toks)
        lines, line = [], []
        for t in toks:
            if t == EOS:
                lines.append(" ".join(line))
                line = []
            else:
                line.append(t)
        return "\n".join(lines + [" ".join(line)])

    def to_dict(self) -> dict:
        """A JSON-serialisable description (saved with checkpoints)."""
        return {"level": self.level, "unk": self.unk, "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or not {"level", "tokens"} <= set(d):
            raise ValueError(f"a saved vocabulary must be a dict with keys 'level', 'tokens' (and 'unk'), got {d!r:.80}")
        return cls(tuple(d["tokens"]), d["level"], d.get("unk"))


def build_vocabulary(
    tokens: Sequence[str], level: str, *, max_size: int | None = None, unk: str | None = None,
    always: Sequence[str] = (),
) -> Vocabulary:
    """Vocabulary of a token sequence.

    Character vocabularies are the distinct characters in code-point order. Word
    vocabularies list ``always`` first, then ``unk``, then the other words by decreasing
    count (ties in alphabetical order); with ``max_size`` only the first ``max_size``
    entries are kept and the dropped words map to ``unk``.

    Args:
      tokens: the tokens (usually the training split).
      level: ``"char"`` or ``"word"``.
      max_size: optional cap on the number of entries (word level; needs ``unk``).
      unk: the unknown token (always in the vocabulary), or ``None``: unknown tokens are
        then an error in :meth:`Vocabulary.encode`.
      always: tokens to keep whatever their count (e.g. ``<eos>``).

    Returns:
      A :class:`Vocabulary`.
    """
    _check_level(level)
    if not len(tokens):
        raise ValueError("tokens must not be empty: cannot build a vocabulary from no tokens")
    if level == "char":
        if max_size is not None:
            raise ValueError("max_size applies to word-level vocabularies only")
        return Vocabulary(tuple(sorted(set(tokens))), level, None)
    counts = collections.Counter(tokens)
    fixed = list(dict.fromkeys(list(always) + ([unk] if unk is not None else [])))
    if max_size is not None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size <= len(fixed):
            raise ValueError(f"max_size must be an int > {len(fixed)} (the special tokens {fixed}), got {max_size!r}")
        if unk is None:
            raise ValueError("max_size needs an unk token to map the dropped words to")
    rest = sorted((t for t in counts if t not in fixed), key=lambda t: (-counts[t], t))
    if max_size is not None:
        rest = rest[: max_size - len(fixed)]
    return Vocabulary(tuple(fixed + rest), level, unk)


def check_same_vocabulary(saved: Vocabulary, current: Vocabulary, what: str = "the corpus") -> None:
    """Raise ``ValueError`` describing the difference if two vocabularies differ.

    Used on resume and evaluation: a checkpoint's embedding rows mean the tokens of the
    vocabulary it was trained with.
    """
    if saved == current:
        return
    if saved.level != current.level:
        raise ValueError(f"vocabulary mismatch: the checkpoint is {saved.level}-level but {what} was read at {current.level} level")
    a, b = set(saved.tokens), set(current.tokens)
    extra, missing = sorted(b - a)[:5], sorted(a - b)[:5]
    detail = f"{len(b - a)} new token(s) e.g. {extra}, {len(a - b)} missing e.g. {missing}"
    if not (a ^ b):
        detail = "same tokens in a different order"
    raise ValueError(
        f"vocabulary mismatch: the checkpoint was trained with {saved.size} {saved.level} tokens but "
        f"{what} gives {current.size} ({detail}); use the corpus the run was trained on"
    )


# --------------------------------------------------------------------------- corpora


class Corpus(NamedTuple):
    """A tokenised corpus.

    Attributes:
      train, valid, test: ``int32`` token ids of each split.
      vocab: the :class:`Vocabulary`.
      description: one line saying what was read (shown by the command line).
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocab: Vocabulary
    description: str

    def split(self, name: str) -> np.ndarray:
        """The ids of split ``"train"``, ``"valid"`` or ``"test"``."""
        if name not in ("train", "valid", "test"):
            raise ValueError(f"split must be 'train', 'valid' or 'test', got {name!r}")
        return getattr(self, name)


def split_tokens(tokens: Sequence, fractions: tuple[float, float] = (0.8, 0.1)) -> tuple:
    """Split a sequence by position: the first ``fractions[0]`` for training, the next
    ``fractions[1]`` for validation, the rest for testing.

    Boundaries are ``floor(n * 0.8)`` and ``floor(n * 0.9)``, so the three parts cover
    every token once. Raises ``ValueError`` when a part would be shorter than 2 tokens
    (a language model needs an input and a target).
    """
    n = len(tokens)
    a = int(n * fractions[0])
    b = int(n * (fractions[0] + fractions[1]))
    parts = (tokens[:a], tokens[a:b], tokens[b:])
    for name, part in zip(("train", "valid", "test"), parts):
        if len(part) < 2:
            raise ValueError(
                f"the corpus is too small to split: {n} tokens give a {name} split of {len(part)} "
                "(need at least 2 tokens in each of train 80%, valid 10%, test 10%)"
            )
    return parts


def load_text(path: str | os.PathLike, level: str = "char", *, max_vocab: int | None = None) -> Corpus:
    """Read a plain-text file and split it 80/10/10 by position.

    Character level: the vocabulary is every character in the file (so no split has an
    unknown character). Word level: see :func:`tokenize`; the vocabulary comes from the
    training split (``<eos>`` and ``<unk>`` always included, capped at ``max_vocab``
    entries), and words missing from it become ``<unk>``.
    """
    _check_level(level)
    text = read_text(path)
    if level == "char":
        train, valid, test = split_tokens(text)
        vocab = build_vocabulary(text, "char")
        desc = f"{os.fspath(path)}: {len(text):,} characters, {vocab.size} distinct"
        return Corpus(vocab.encode(train), vocab.encode(valid), vocab.encode(test), vocab, desc)
    tokens = tokenize(text, "word")
    if not tokens:
        raise ValueError(f"corpus file {os.fspath(path)!r} holds no words (only whitespace)")
    train, valid, test = split_tokens(tokens)
    vocab = build_vocabulary(train, "word", max_size=max_vocab, unk=UNK, always=(EOS,))
    desc = f"{os.fspath(path)}: {len(tokens):,} words, vocabulary {vocab.size}"
    return Corpus(vocab.encode(train), vocab.encode(valid), vocab.encode(test), vocab, desc)


def _ptb_paths(path: str | os.PathLike) -> dict[str, pathlib.Path]:
    p = pathlib.Path(path)
    if p.is_file() and p.name in _PTB_SPLITS.values():
        p = p.parent
    if not p.is_dir():
        raise ValueError(
            f"Penn-Treebank corpus path {str(p)!r} must be a directory holding "
            f"{', '.join(_PTB_SPLITS.values())} (or one of those files)"
        )
    paths = {k: p / v for k, v in _PTB_SPLITS.items()}
    missing = [v.name for v in paths.values() if not v.is_file()]
    if missing:
        raise ValueError(f"Penn-Treebank corpus directory {str(p)!r} lacks {', '.join(missing)}")
    return paths


def load_ptb(path: str | os.PathLike, level: str = "word") -> Corpus:
    """Read a Penn-Treebank-format corpus.

    ``path`` is a directory with ``ptb.train.txt``, ``ptb.valid.txt`` and
    ``ptb.test.txt`` (or one of those files). Each line is one sentence of
    space-separated words; ``<eos>`` is appended to every line; ``<unk>`` is an ordinary
    word. The vocabulary holds ``<eos>``, ``<unk>`` and every word of the training
    file; a validation or test word missing from it becomes ``<unk>``. At ``level="char"`` the same files are read as
    characters.
    """
    _check_level(level)
    paths = _ptb_paths(path)
    texts = {k: read_text(v) for k, v in paths.items()}
    if level == "char":
        vocab = build_vocabulary("".join(texts.values()), "char")
        ids = {k: vocab.encode(t, where=str(paths[k])) for k, t in texts.items()}
    else:
        toks = {k: [w for line in t.splitlines() for w in line.split() + [EOS]] for k, t in texts.items()}
        vocab = build_vocabulary(toks["train"], "word", unk=UNK, always=(EOS,))
        ids = {k: vocab.encode(v, where=str(paths[k])) for k, v in toks.items()}
    for k, v in ids.items():
        if len(v) < 2:
            raise ValueError(f"{str(paths[k])!r} holds {len(v)} token(s); need at least 2")
    desc = (f"{paths['train'].parent}: Penn-Treebank format, {level} level, train/valid/test "
            f"{len(ids['train']):,}/{len(ids['valid']):,}/{len(ids['test']):,} tokens, vocabulary {vocab.size}")
    return Corpus(ids["train"], ids["valid"], ids["test"], vocab, desc)


def default_corpus_files(max_chars: int = DEFAULT_CORPUS_CHARS) -> tuple[pathlib.Path, list[str]]:
    """The standard-library root and the files of the default corpus.

    Files: every ``*.py`` under ``sysconfig.get_paths()["stdlib"]`` in sorted order of
    relative path (POSIX separators), leaving out directories named ``test``, ``tests``,
    ``idle_test``, ``site-packages``, ``dist-packages``, ``__pycache__`` and files named
    ``test_*.py``. The list stops before the file that would take the total file size past
    ``max_chars`` bytes (at least one file is kept).
    """
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise ValueError(f"the Python standard library directory {str(root)!r} does not exist; pass --corpus")
    rel = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        base = pathlib.Path(dirpath).relative_to(root)
        for name in filenames:
            if name.endswith(".py") and not name.startswith("test_") and os.path.isfile(os.path.join(dirpath, name)):
                rel.append((base / name).as_posix())
    rel.sort()
    if not rel:
        raise ValueError(f"no *.py files found under the standard library {str(root)!r}; pass --corpus")
    chosen, total = [], 0
    for r in rel:
        size = (root / r).stat().st_size
        if chosen and total + size > max_chars:
            break
        chosen.append(r)
        total += size
    return root, chosen


def load_default(max_chars: int = DEFAULT_CORPUS_CHARS) -> Corpus:
    """The default corpus: standard-library Python source at character level.

    Reads :func:`default_corpus_files` (strict UTF-8; a file that is not, or is empty,
    is skipped), concatenates them, splits 80/10/10 by position. Deterministic for a
    given Python installation. ``description`` names the Python version, the number of
    files and characters, and the first and last file.
    """
    root, files = default_corpus_files(max_chars)
    parts, used = [], []
    for r in files:
        try:
            t = read_text(root / r)
        except ValueError:
            continue
        parts.append(t)
        used.append(r)
    if not used:
        raise ValueError(f"none of the default-corpus files under {str(root)!r} could be read; pass --corpus")
    text = "".join(parts)
    train, valid, test = split_tokens(text)
    vocab = build_vocabulary(text, "char")
    ver = ".".join(map(str, sys.version_info[:3]))
    desc = (f"default corpus: Python {ver} standard library {root}: {len(used)} files "
            f"({used[0]} .. {used[-1]}), {len(text):,} characters, {vocab.size} distinct")
    return Corpus(vocab.encode(train), vocab.encode(valid), vocab.encode(test), vocab, desc)


def load_corpus(
    path: str | os.PathLike | None = None, level: str = "char", format: str = "text", *,
    max_vocab: int | None = None,
) -> Corpus:
    """Read a corpus: the default one (``path=None``), plain text, or PTB format.

    Args:
      path: a text file (``format="text"``), a PTB directory or file (``format="ptb"``),
        or ``None`` for the default corpus (character level only).
      level: ``"char"`` or ``"word"``.
      format: ``"text"`` or ``"ptb"``.
      max_vocab: word-level plain text only: cap on the vocabulary size.

    Returns:
      A :class:`Corpus`.
    """
    _check_level(level)
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if path is None:
        if format != "text" or level != "char":
            raise ValueError("the default corpus (no --corpus) is plain text at character level; "
                             f"got format={format!r}, level={level!r}")
        return load_default()
    if format == "ptb":
        if max_vocab is not None:
            raise ValueError("max_vocab does not apply to Penn-Treebank files (their vocabulary is fixed)")
        return load_ptb(path, level)
    if max_vocab is not None and level != "word":
        raise ValueError("max_vocab applies to word-level corpora only")
    return load_text(path, level, max_vocab=max_vocab)
