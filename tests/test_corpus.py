"""Tests of jaxrnn.corpus: readers, tokenisers, vocabularies, splits, the default corpus."""

import json
import pathlib

import numpy as np
import pytest

from jaxrnn import corpus as jc


# --------------------------------------------------------------------------- reading


def test_read_text_strips_utf8_bom_and_keeps_unicode(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("\ufeffcafé ☕\n".encode("utf-8"))
    assert jc.read_text(p) == "café ☕\n"


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", r"is empty \(0 bytes\)"),
        (b"\xef\xbb\xbf", "only a byte-order mark"),
        (b"abc\x00def", r"looks binary \(NUL byte at offset 3\)"),
        ("hello".encode("utf-16"), "UTF-16 encoded"),
        ("hello".encode("utf-32"), "UTF-32 encoded"),
        ("café".encode("latin-1"), r"not valid UTF-8 \(byte 0xe9 at offset 3"),
    ],
)
def test_read_text_bad_files_name_the_file(tmp_path, content, match):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=match) as e:
        jc.read_text(p)
    assert "bad.txt" in str(e.value)


def test_read_text_missing_and_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        jc.read_text(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="is a directory"):
        jc.read_text(tmp_path)


# --------------------------------------------------------------------------- tokens, vocabularies


def test_tokenize_levels():
    assert jc.tokenize("ab\nc", "char") == ["a", "b", "\n", "c"]
    assert jc.tokenize("Don't stop,  me!\n\n  now\n", "word") == [
        "Don't", "stop", ",", "me", "!", "<eos>", "now", "<eos>"]
    with pytest.raises(ValueError, match="level must be one of"):
        jc.tokenize("x", "byte")


def test_char_vocabulary_round_trip_and_order():
    text = "the quick brown fox\njumps over the lazy dog\n"
    v = jc.build_vocabulary(text, "char")
    assert list(v.tokens) == sorted(set(text))
    ids = v.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text),)
    # the vectorised path agrees with a plain dictionary lookup
    assert ids.tolist() == [v.tokens.index(c) for c in text]
    assert v.decode(ids) == text
    with pytest.raises(ValueError, match=r"missing from the vocabulary.*'Z'"):
        v.encode("aZ")


def test_word_vocabulary_counts_specials_and_cap():
    toks = "b a b c b a <eos> d".split()
    v = jc.build_vocabulary(toks, "word", unk="<unk>", always=("<eos>",))
    # specials first, then by decreasing count, ties alphabetical
    assert v.tokens == ("<eos>", "<unk>", "b", "a", "c", "d")
    capped = jc.build_vocabulary(toks, "word", unk="<unk>", always=("<eos>",), max_size=4)
    assert capped.tokens == ("<eos>", "<unk>", "b", "a")
    assert capped.encode(["c", "a", "zzz"]).tolist() == [1, 3, 1]
    assert capped.decode([2, 3, 0, 3]) == "b a\na"
    with pytest.raises(ValueError, match="max_size must be an int > 2"):
        jc.build_vocabulary(toks, "word", unk="<unk>", always=("<eos>",), max_size=2)
    with pytest.raises(ValueError, match="needs an unk token"):
        jc.build_vocabulary(toks, "word", max_size=3)
    with pytest.raises(ValueError, match="cannot build a vocabulary from no tokens"):
        jc.build_vocabulary([], "word")


def test_vocabulary_json_round_trip_and_mismatch():
    v = jc.build_vocabulary("hello world", "char")
    d = json.loads(json.dumps(v.to_dict()))
    assert jc.Vocabulary.from_dict(d) == v
    jc.check_same_vocabulary(v, jc.Vocabulary.from_dict(d))
    other = jc.build_vocabulary("hello there", "char")
    with pytest.raises(ValueError, match=r"vocabulary mismatch.*1 new token\(s\) e.g. \['t'\]"):
        jc.check_same_vocabulary(v, other)
    with pytest.raises(ValueError, match="checkpoint is char-level"):
        jc.check_same_vocabulary(v, jc.build_vocabulary(["a"], "word"))
    with pytest.raises(ValueError, match="tokens must be distinct"):
        jc.Vocabulary(("a", "a"), "char")


# --------------------------------------------------------------------------- corpora


def test_split_tokens_covers_everything_once():
    parts = jc.split_tokens(list(range(1003)))
    assert [len(p) for p in parts] == [802, 100, 101]
    assert sum(parts, []) == list(range(1003))
    with pytest.raises(ValueError, match="too small to split"):
        jc.split_tokens("abcdefghi")


def test_load_text_char_split_is_80_10_10(tmp_path):
    text = "".join(chr(97 + (i * 7) % 26) for i in range(997)) + "\n"
    p = tmp_path / "c.txt"
    p.write_text(text, encoding="utf-8")
    c = jc.load_corpus(p, level="char")
    assert (len(c.train), len(c.valid), len(c.test)) == (798, 100, 100)
    assert c.vocab.decode(np.concatenate([c.train, c.valid, c.test])) == text
    assert c.vocab.size == 27 and "998 characters" in c.description


def test_load_text_word_level_unknown_words_become_unk(tmp_path):
    train_part = "the cat sat\n" * 8
    p = tmp_path / "w.txt"
    p.write_text(train_part + "the dog sat\nthe emu ran\n", encoding="utf-8")
    c = jc.load_corpus(p, level="word")
    # 40 tokens: 32 for training (the cat sat <eos> x 8), 4 for validation, 4 for test
    assert (len(c.train), len(c.valid), len(c.test)) == (32, 4, 4)
    assert set(c.vocab.tokens) == {"<eos>", "<unk>", "the", "cat", "sat"}
    assert c.vocab.decode(c.valid) == "the <unk> sat\n"
    assert c.vocab.decode(c.test) == "the <unk> <unk>\n"
    capped = jc.load_corpus(p, level="word", max_vocab=4)
    assert capped.vocab.size == 4


def test_load_text_whitespace_only_word_corpus(tmp_path):
    p = tmp_path / "ws.txt"
    p.write_text("   \n\n \t\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no words"):
        jc.load_corpus(p, level="word")


def _write_ptb(d: pathlib.Path, train: str, valid: str, test: str) -> None:
    d.mkdir(exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (d / f"ptb.{name}.txt").write_text(text, encoding="utf-8")


def test_ptb_reader_appends_eos_keeps_unk(tmp_path):
    d = tmp_path / "ptb"
    _write_ptb(d, " a b <unk> c\n b a N\n", " a <unk>\n", " c zebra\n")
    c = jc.load_corpus(d, format="ptb", level="word")
    v = c.vocab
    assert v.tokens[:2] == ("<eos>", "<unk>")
    assert set(v.tokens) == {"<eos>", "<unk>", "a", "b", "c", "N"}
    dec = lambda ids: [v.tokens[i] for i in ids]
    assert dec(c.train) == ["a", "b", "<unk>", "c", "<eos>", "b", "a", "N", "<eos>"]
    assert dec(c.valid) == ["a", "<unk>", "<eos>"]
    assert dec(c.test) == ["c", "<unk>", "<eos>"]  # zebra is not in the training vocabulary
    # a path to one of the files works too
    c2 = jc.load_corpus(d / "ptb.valid.txt", format="ptb", level="word")
    assert np.array_equal(c2.train, c.train) and c2.vocab == v


def test_ptb_reader_errors(tmp_path):
    d = tmp_path / "ptb"
    _write_ptb(d, "a b\n", "a\n", "b\n")
    (d / "ptb.test.txt").unlink()
    with pytest.raises(ValueError, match="lacks ptb.test.txt"):
        jc.load_corpus(d, format="ptb", level="word")
    (d / "ptb.test.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"ptb.test.txt' is empty"):
        jc.load_corpus(d, format="ptb", level="word")
    with pytest.raises(ValueError, match="must be a directory holding"):
        jc.load_corpus(tmp_path / "missing", format="ptb")
    with pytest.raises(ValueError, match="format must be one of"):
        jc.load_corpus(d, format="csv")


def test_default_corpus_is_sorted_stdlib_source_without_tests():
    root, files = jc.default_corpus_files(max_chars=60_000)
    assert files == sorted(files) and files
    assert all(f.endswith(".py") for f in files)
    assert not any(set(f.split("/")[:-1]) & {"test", "tests", "site-packages"} for f in files)
    assert sum((root / f).stat().st_size for f in files) <= 60_000 or len(files) == 1
    # the cap only truncates the list: a larger cap extends it
    _, more = jc.default_corpus_files(max_chars=120_000)
    assert more[: len(files)] == files and len(more) > len(files)
    c1, c2 = jc.load_default(max_chars=60_000), jc.load_default(max_chars=60_000)
    assert np.array_equal(c1.train, c2.train) and c1.vocab == c2.vocab
    assert c1.vocab.level == "char"
    text = c1.vocab.decode(np.concatenate([c1.train, c1.valid, c1.test]))
    assert text == "".join(jc.read_text(root / f) for f in files)
    assert files[0] in c1.description and files[-1] in c1.description and "Python" in c1.description
    with pytest.raises(ValueError, match="default corpus"):
        jc.load_corpus(None, level="word")
