"""rag/places.py and the gate's place check (rag/knowledge.py): a question about the documents only through a place
they name is refused; one about what they say of the place is answered. Unit tests on the gazetteer, then the real
demo index and embedder (no scope examples: the place check works alone)."""

from __future__ import annotations


import pytest

from rag.places import gazetteer, named_places, without_places

OFFICES = ["Office Locations\nHalifax, Nova Scotia (headquarters): 88 Cable Wharf Road. Lisbon, Portugal: Rua da "
           "Ribeira Nova 42. The data center partner runs the region."]


def test_the_gazetteer_holds_the_time_zones_cities_and_the_countries():
    assert {"halifax", "lisbon", "toronto", "singapore", "new york", "portugal", "germany"} <= gazetteer()
    assert "byte" not in gazetteer() and "cloud" not in gazetteer()
    # not the legacy zones' words for time: "08:00 to 20:00 Atlantic Time"
    assert not {"atlantic", "pacific", "central", "north"} & gazetteer()
    # states and provinces (ISO 3166-2's first level), not municipalities named by a word or a direction alone
    assert {"nova scotia", "ontario", "california", "bayern"} <= gazetteer()
    assert not {"most", "bedford", "western", "capital"} & gazetteer()


def test_a_place_counts_when_a_source_writes_it_as_a_name():
    assert named_places("whats the best time of year to visit lisbon", OFFICES) == ["lisbon"]
    assert named_places("Is the Portugal office in Lisbon?", OFFICES) == ["portugal", "lisbon"]
    # "center" is a time zone's city (America/North_Dakota/Center); the source writes it as a word, not a name
    assert "center" in gazetteer() and named_places("Which data center partner runs it?", OFFICES) == []
    assert named_places("What is the weather in Sydney?", OFFICES) == []  # no source names Sydney
    assert without_places("best time to visit Lisbon in spring?", ["lisbon"]) == "best time to visit in spring?"


@pytest.fixture
def demo_kb(demo_kb_plain):
    return demo_kb_plain


# none of these is a question of the measured QA files
ABOUT_THE_PLACE = ["how cold does it get in halifax in january", "is singapore safe for tourists walking around "
                   "at night", "where can i get good poutine near the halifax waterfront",
                   # the province too: without "halifax" alone, the office's address still scored 0.63
                   "how many people live in halifax, nova scotia these days",
                   "what's the best hiking in nova scotia in the fall?"]
ABOUT_THE_OFFICE = ["When is the Lisbon office open for visitors?", "Which company runs your Singapore data center?",
                    "How many people work at the Halifax headquarters?", "Is your head office in Nova Scotia?"]


def test_demo_a_question_about_a_place_the_documents_name_is_refused(demo_kb):
    for q in ABOUT_THE_PLACE:
        r = demo_kb.retrieve(q)
        assert r.refused and not r.sources, (q, r.why)
        assert r.why == "about a place the documents name, not about what they say of it", (q, r.why)
        assert r.confidence >= demo_kb.cfg.min_score  # the gate alone let it through
    for q in ABOUT_THE_OFFICE:
        r = demo_kb.retrieve(q)
        assert not r.refused and r.why == "", (q, r.why)


def test_demo_off_topic_false_leaves_places_to_the_score_gate(demo_kb):
    demo_kb.cfg.off_topic = False
    try:
        assert not demo_kb.retrieve(ABOUT_THE_PLACE[0]).refused
    finally:
        demo_kb.cfg.off_topic = True


def test_demo_a_follow_up_naming_only_a_place_is_answered_from_the_conversation(demo_kb):
    chat = [{"role": "user", "content": "What are the reception hours at your Halifax office?"},
            {"role": "assistant", "content": "Monday to Friday, 08:30 to 17:30 Atlantic Time."},
            {"role": "user", "content": "what about in lisbon?"}]
    r = demo_kb.retrieve_conversation(chat)
    assert not r.refused and any("10:00 to 17:00" in s.text for s in r.sources), r
