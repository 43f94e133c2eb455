"""rag/lexicon.py: a term typed in lower case that is no English word and that the documents never use names
something they do not cover ("is there a managed kubernetes service?"); ordinary words, their inflections, compounds,
chat shorthand and typos of the documents' words do not."""

from __future__ import annotations

from rag.lexicon import known_pieces, ordinary, unknown_terms

VOCAB = sorted("backup cheap compliance customer password plan price region server soc verify".split())


def test_names_typed_in_lower_case_are_no_words():
    for w in ("kubernetes", "tokyo", "mumbai", "aws", "nginx"):
        assert not ordinary(w), w


def test_words_inflections_compounds_and_shorthand_are_words():
    for w in ("flaky", "hammering", "cheapest", "strongest", "bigger", "aren", "isn", "headcount", "walkthrough",
              "datacenter", "signup", "ppl", "atm", "gonna"):
        assert ordinary(w), w


def test_unknown_terms_reads_lower_case_words_outside_the_documents():
    assert unknown_terms("is there a managed kubernetes service?", VOCAB, set()) == ["kubernetes"]
    assert unknown_terms("do you have a region in tokyo?", VOCAB, set()) == ["tokyo"]
    # a word of the documents, an English word, a typo of a word of the documents, a capitalised name (the other check)
    assert unknown_terms("whats the cheapest server, my pasword is flaky", VOCAB, set()) == []
    assert unknown_terms("Do you run Kubernetes?", VOCAB, set()) == []


def test_a_word_glued_to_a_number_is_known_in_pieces():
    assert known_pieces("soc2", VOCAB) and known_pieces("429s", VOCAB)
    assert not known_pieces("t3", VOCAB) and not known_pieces("gpu4", VOCAB)
