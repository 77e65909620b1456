"""Position alignment across tokenizers, on hand-worked token splits.

Each case lists both tokenizers' pieces as the bytes they add to the text and the pairs a
person finds by hand: student token ``i`` and teacher token ``j`` end at the same byte, and
what comes before is the same text."""

from __future__ import annotations

from kdistill.models.vocab import BOS_MARK, EOS_MARK, _byte_alphabet
from kdistill.teachers.alignment import align_streams

EMOJI = "😀".encode()  # F0 9F 98 80
FAMILY = "👨\u200d👩\u200d👧".encode()  # 3 emoji joined by ZWJ: 18 bytes, 5 code points


def test_leading_spaces_belong_to_the_word_on_both_sides():
    # byte-level "In", "Ġthe", "Ġbeginning" vs SentencePiece "In", "▁the", "▁beginning"
    s = [b"In", b" the", b" beginning"]
    t = [BOS_MARK, b"In", b" the", b" beginning"]
    assert align_streams(s, t) == [(0, 1), (1, 2), (2, 3)]


def test_a_space_kept_apart_aligns_only_where_the_words_end():
    s = [b"In", b" the", b" day"]
    t = [b"In", b" ", b"the", b" ", b"day"]
    assert align_streams(s, t) == [(0, 0), (1, 2), (2, 4)]


def test_a_word_split_one_to_three_and_three_to_one():
    # student " unhappy" is one token, the teacher's three; then the other way round
    s = [b" unhappy", b" d", b"a", b"y"]
    t = [b" un", b"hap", b"py", b" day"]
    assert align_streams(s, t) == [(0, 2), (3, 3)]
    assert align_streams(t, s) == [(2, 0), (3, 3)]


def test_byte_fallback_pieces_of_an_emoji_meet_a_byte_level_split():
    # teacher: four <0xNN> pieces; student: byte-level "Ġð Ł ĺ" + "Ģ" (3 bytes + 1)
    s = [b"Hello", b" " + EMOJI[:3], EMOJI[3:]]
    t = [b"Hello", b" ", EMOJI[:1], EMOJI[1:2], EMOJI[2:3], EMOJI[3:]]
    # inside the emoji the two split at byte 9 (after " \xf0\x9f\x98"): the same bytes so
    # far, so that position corresponds too; the emoji's end matches
    assert align_streams(s, t) == [(0, 0), (1, 4), (2, 5)]


def test_a_multi_code_point_emoji_matches_at_its_end_and_shared_cuts_only():
    zwj = "\u200d".encode()
    first, second, third = FAMILY.split(zwj)
    s = [b" " + first, zwj + second, zwj + third, b"!"]  # per emoji, ZWJ in front
    t = [b" ", first + zwj, second + zwj, third + b"!"]  # per emoji, ZWJ behind
    # cuts: student at 5, 12, 19, 20; teacher at 1, 8, 15, 20: only the end of "!" is shared
    assert align_streams(s, t) == [(3, 3)]


def test_document_ends_match_each_other_and_a_leading_bos_is_skipped():
    s = [b"Amen.", EOS_MARK, b"In", b" the"]
    t = [BOS_MARK, b"Amen", b".", EOS_MARK, b"In the"]
    assert align_streams(s, t) == [(0, 2), (1, 3), (3, 4)]


def test_special_tokens_adding_nothing_never_pair_and_streams_that_differ_stop():
    s = [b"", b"a", b" b", b"", b" c", b" d"]
    t = [b"a", b" b", b" c", b" x"]
    assert align_streams(s, t) == [(1, 0), (2, 1), (4, 2)]


def test_the_byte_alphabet_is_the_byte_level_bpe_one():
    alphabet = _byte_alphabet()
    assert len(alphabet) == 256 and sorted(alphabet.values()) == list(range(256))
    assert alphabet["Ġ"] == 0x20 and alphabet["Ċ"] == 0x0A and alphabet["A"] == 0x41
