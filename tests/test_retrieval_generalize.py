"""Retrieval that generalises: table rows linearised into "Header: value" text, plain-text headings kept as sections,
every chunk carrying its document title, and (slow) retrieval quality on the demo knowledge measured with questions
written in other words than the documents (examples/captain-byte/qa_paraphrases.jsonl, part of the DEV set of
bench/retrieval_heldout.py).

The held-out sets (examples/captain-byte/qa_heldout.jsonl, tests/assets/rag_qa_b.jsonl) are only reported by the bench,
never tuned on here."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "captain-byte"

# Paraphrases that describe things by what they do, or use other words than the documents, and near-domain traps
# (DEV: tuning allowed). A data file, so that bench/retrieval_heldout.py reads the same rows without importing tests/.
PARAPHRASES = DEMO / "qa_paraphrases.jsonl"


# --- chunk text recipe (fast) ---------------------------------------------------------------------------------------

def test_markdown_table_rows_become_header_value_lines():
    from rag.chunking import linearize_tables

    md = ("Plans are named after ships:\n\n"
          "| Plan | vCPU | RAM | Price per month |\n"
          "|------|:----:|-----|----------------:|\n"
          "| Dinghy | 1 | 1 GB | $6 |\n"
          "| Sloop | 2 | 4 GB | $14 |\n"
          "| `a \\| b` |  |  x | |\n"
          "\nAfter the table.")
    assert linearize_tables(md) == (
        "Plans are named after ships:\n\n"
        "Plan: Dinghy; vCPU: 1; RAM: 1 GB; Price per month: $6\n"
        "Plan: Sloop; vCPU: 2; RAM: 4 GB; Price per month: $14\n"
        "Plan: `a | b`; RAM: x\n"
        "\nAfter the table.")
    # not a table (no separator row), and pipes inside a code fence, stay as they are
    keep = "a | b\nc | d\n\n```\n| x | y |\n|---|---|\n| 1 | 2 |\n```"
    assert linearize_tables(keep) == keep


def test_demo_pricing_chunk_reads_as_text(embedder):
    from rag.chunking import Chunker
    from rag.loaders import load_file

    chunks = Chunker(embedder.count_tokens).split(load_file(DEMO / "knowledge/pricing-plans.md", "pricing-plans.md"))
    plans = next(c for c in chunks if c.section == "Byte Harbor Cloud Pricing and Plans > Server plans")
    assert plans.text.startswith("Byte Harbor Cloud Pricing and Plans > Server plans\n")
    assert ("\nPlan: Sloop; vCPU: 2; RAM: 4 GB; NVMe disk: 80 GB; Monthly transfer: 3 TB; Price per month: $14; "
            "Price per hour: $0.021\n") in plans.text
    assert "|" not in plans.text


def test_plain_text_capital_headings_become_sections(embedder):
    from rag.chunking import Chunker
    from rag.loaders import Document

    text = ("ACME SUPPORT POLICY\nLast reviewed: 2025.\n\n1. CHANNELS AND HOURS\n\nChat is open from 9 to 5.\n\n"
            "BH-1001  Invalid token. Create a new one.\n\nESCALATION\nReply with the word ESCALATE.\n")
    chunks = Chunker(embedder.count_tokens).split([Document("support.txt", text)])
    assert [c.section for c in chunks] == [None, "1. CHANNELS AND HOURS", "ESCALATION"]
    assert chunks[0].text == "ACME SUPPORT POLICY\nLast reviewed: 2025."  # the title line is the prefix, once
    assert chunks[1].text.startswith("ACME SUPPORT POLICY > 1. CHANNELS AND HOURS\nChat is open")
    assert "BH-1001" in chunks[1].text and chunks[2].text.endswith("Reply with the word ESCALATE.")


def test_html_table_keeps_its_rows(tmp_path, embedder):
    from rag.chunking import Chunker
    from rag.loaders import load_file

    (tmp_path / "limits.html").write_text(
        "<html><body><h1>API</h1><h2>Rate limits</h2><p>Per token:</p><table>"
        "<tr><th>Request type</th><th>Limit</th></tr>"
        "<tr><td>All requests</td><td>600 per minute</td></tr>"
        "<tr><td>Writes</td><td>120 per <b>minute</b></td></tr></table><p>Bursts are fine.</p></body></html>")
    chunks = Chunker(embedder.count_tokens).split(load_file(tmp_path / "limits.html", "limits.html"))
    assert chunks[-1].text == ("API > Rate limits\nPer token:\nRequest type: All requests; Limit: 600 per minute\n"
                               "Request type: Writes; Limit: 120 per minute\nBursts are fine.")


@pytest.fixture(scope="module")
def embedder():
    from rag.embed import default_embedder

    return default_embedder()


# --- retrieval quality on the demo knowledge (real embedder and Chroma) -------------------------------------------

@pytest.fixture(scope="module")
def demo_kb(tmp_path_factory, embedder):
    from rag.knowledge import KnowledgeBase

    kb = KnowledgeBase.from_folder(DEMO / "knowledge", "demo-" + uuid.uuid4().hex[:6], tmp_path_factory.mktemp("c"),
                                   min_score=0.37, top_k=4, hybrid=True, unknown_name_factor=0.5)
    kb.index()
    return kb


def _dev_rows() -> list[dict]:
    from rag.evaluate import load_qa

    rows = load_qa(DEMO / "qa.jsonl") + load_qa(PARAPHRASES)
    if (DEMO / "train_qa.jsonl").is_file():
        rows += load_qa(DEMO / "train_qa.jsonl")
    return rows


@pytest.mark.slow
def test_demo_dev_questions_in_other_words(demo_kb):
    from rag.evaluate import metrics, score_questions

    m = metrics(score_questions(demo_kb, _dev_rows()), demo_kb.cfg.min_score)
    # measured: hit@3 0.965, hit@1 0.873, traps refused 0.853, in-domain answered 0.845 (traps 0.82 before)
    assert m["hit@3"] >= 0.95 and m["hit@1"] >= 0.85
    assert m["refusal_recall"] >= 0.84 and m["in_domain_answered"] >= 0.83


def test_described_not_named_questions_find_their_document(demo_kb):
    """Questions that name nothing from their document still rank it in the top 3 and pass the gate;
    a name the documents never mention, even camel-cased, gets the question refused, a spelled-out acronym does not."""
    for q, want, answered in [
            ("What does the biggest box with 32 gigs of memory cost per hour?", "pricing-plans.md", True),
            ("What compensation do I get when the managed name resolution service goes down?", "sla-and-credits.md", True),
            ("Which locations support putting a traffic distributor in front of my machines?",
             "regions-and-datacenters.md", True)]:  # its chunk alone scores 0.32: its best sentence 0.38
        assert want in [s.path for s in demo_kb.search(q, k=3)], q
        assert demo_kb.retrieve(q).refused is not answered, q
    for q in ("How do I bake sourdough bread?", "What is Google Cloud's SLA for Compute Engine?",
              "Where can I download the Byte Harbor mobile app for my iPhone?"):
        assert demo_kb.retrieve(q).refused, q
    assert demo_kb.retriever.unknown_names("Who's the CFO, and which APIs have an SLA?") == []
    assert demo_kb.retriever.unknown_names("Who is the CMO of Byte Harbor?") == ["cmo"]
    # an acronym the documents write with a letter before it (vCPU) is known; a name is not matched that way
    assert demo_kb.retriever.unknown_names("Which plan has CPU cores that are all mine?") == []
    assert demo_kb.retriever.unknown_names("Do you sell GPU servers?") == ["gpu"]
    # a word glued to a number the documents write apart ("SOC 2", "ISO/IEC 27001"), a number's plural: known; a
    # single letter and a number ("t3") is no word of theirs
    assert demo_kb.retriever.unknown_names("are you soc2 compliant? Or ISO27001? my client gets 429s") == []
    assert demo_kb.retriever.unknown_names("How much is a g5 box?") == ["g5"]
    # every word is known but the name they make is not ("Windows" and "Server" each occur in the documents)
    assert demo_kb.retriever.unknown_names("How much does a Windows Server license add to my bill?") == [
        "windows server"]
    assert demo_kb.retrieve("How much extra do you charge for a Windows Server license on a Sloop?").refused
    assert demo_kb.retriever.unknown_names("Who is Byte Harbor's COO?") == ["coo"]  # "Compliance Overview\nOverview"
    for named in ("What does Harbor Priority cost?", "How many backups does Treasure Chest keep?",
                  "My server lives in Singapore. Where do its backups go?"):  # a new sentence starts no name
        assert demo_kb.retriever.unknown_names(named) == [], named
    # the customer's own context names nothing the documents must know; the sentence that asks does
    told = "We're a German GmbH with a valid VAT ID. Are you going to add VAT on top of our invoices?"
    assert demo_kb.retriever.unknown_names(told) == []
    assert not demo_kb.retrieve(told).refused  # 0.196 under the name penalty, 0.39 without
    assert demo_kb.retriever.unknown_names("Will you sign a HIPAA agreement with us? We're a clinic.") == ["hipaa"]


def test_asking_part_is_the_sentences_that_ask():
    from rag.retrieve import asking_part

    assert asking_part("In our GitHub pipeline there's no browser. How do I log in?") == "How do I log in?"
    assert asking_part("Will you sign a HIPAA BAA? We're a clinic.") == "Will you sign a HIPAA BAA?"
    assert asking_part("Tell me the price of the Sloop plan.") == "Tell me the price of the Sloop plan."
    assert asking_part("Who is the CFO? And the CTO?") == "Who is the CFO? And the CTO?"


def test_name_phrases_are_runs_of_capitalised_words():
    from rag.retrieve import name_phrases

    assert name_phrases("Who is Byte Harbor's Chief Operating Officer?") == ["byte harbor", "chief operating officer"]
    assert name_phrases("My server lives in Singapore. Where do its backups go?") == []
    assert name_phrases("Is the CEO of Byte Harbor Cloud on the Board?") == ["byte harbor cloud"]
    # a capital letter after the words is part of the name: the Series B is not the Series A ("I" is a word)
    assert name_phrases("Who led Byte Harbor's Series B round?") == ["byte harbor", "series b"]
    assert name_phrases("If Harbor Priority I buy, what do I get?") == ["harbor priority"]


def test_demo_a_round_the_documents_never_name_is_refused(demo_kb_plain):
    """"Who led Byte Harbor's Series B round?" scored the history page 0.61 through its Series A."""
    r = demo_kb_plain.retrieve("Who led Byte Harbor's Series B round, and how much did it raise?")
    assert r.refused and r.confidence == 0.0  # the demo refuses a name its documents lack
    assert not demo_kb_plain.retrieve("Who led Byte Harbor's Series A round?").refused


def test_an_acronym_the_documents_spell_out_is_searched_in_their_words(demo_kb):
    """"CFO" is written nowhere, "Chief Financial Officer" is: the question is searched with both, so it finds the
    leadership table instead of falling under the gate. Only capitalised words on one line spell an acronym out."""
    expand = demo_kb.retriever.expand
    assert expand("Who's the CFO?") == "Who's the CFO? (chief financial officer)"
    assert expand("Who is the CTO?") == "Who is the CTO? (chief technology officer)"  # not "currency of the original"
    assert expand("Who is the COO?") == "Who is the COO?"
    assert expand("Which APIs have an SLA?") == "Which APIs have an SLA?"  # the documents write "SLA" itself
    got = demo_kb.retrieve("Who's the CFO?")
    assert not got.refused and "Priya Lindgren" in got.sources[0].text
    # typed in lower case: a short word the documents never write is tried as an acronym; one they write is a word
    assert expand("who's in charge of the money side, like the cfo") == \
        "who's in charge of the money side, like the cfo (chief financial officer)"
    assert expand("wat does the sla say") == "wat does the sla say"
    got = demo_kb.search("who's in charge of the money side at your company, like the cfo")
    assert any("Priya Lindgren" in s.text for s in got[:3])


def test_a_documented_code_finds_the_chunk_that_holds_it(demo_kb):
    """Every error code of the demo's table, asked about by its code alone, is answered from the chunk that holds it:
    embeddings rank look-alike codes together (BH-3320's chunk fell out of the top 4, and the gate refused); an
    undocumented code is still refused."""
    import re

    codes = sorted(set(re.findall(r"\bBH-\d{4}\b", (DEMO / "knowledge" / "error-codes.txt").read_text())))
    assert len(codes) >= 20
    for code in codes:
        got = demo_kb.retrieve(f"What does error {code} mean?")
        assert not got.refused and code in got.sources[0].text, code
    assert demo_kb.retrieve("The console just showed me error BH-5099. What does that one mean?").refused


def test_a_question_for_a_contact_no_source_writes_is_refused(demo_kb):
    """Asked for a phone number, an e-mail or a street address, the documents answer only when a retrieved source
    writes one: the Lisbon office's page passes the score gate but holds no phone number (Halifax's does)."""
    assert demo_kb.retrieve("What's the phone number for the Lisbon office reception?").refused
    got = demo_kb.retrieve("What's the reception phone number at the Halifax head office?")
    assert not got.refused and any("+1 902 555 0188" in s.text for s in got.sources)
    got = demo_kb.retrieve("What's the street address of your Lisbon office?")
    assert not got.refused and any("Rua da Ribeira Nova 42" in s.text for s in got.sources)
    # "phone" or "address" alone asks for no number: alerts on a phone, a spare public address
    from rag.answerable import missing_contact

    assert not missing_contact("Can I get outage alerts as text messages on my phone?", ["Alerts go out by e-mail."])
    assert not missing_contact("Do I pay for a public address of the server?", ["Floating IPs cost $3."])
    assert missing_contact("What's the email address for billing?", ["Billing questions go to the billing team."])
    # "the name of" someone in a role asks for a person's name: the support page names the role, not the person
    assert missing_contact("what's the name of the technical account manager I'd get?",
                           ["Harbor Priority adds a named technical account manager after six months."])
    assert not missing_contact("What's the name of your finance officer?",
                               ["Name: Priya Lindgren; Role: Chief Financial Officer"])
    assert not missing_contact("What's the name of your cheapest plan?", ["Plan: Dinghy; Price per month: $6"])


def test_a_contact_or_person_no_source_holds_for_what_is_named_is_refused(demo_kb):
    """Through the real retriever and gate: each of these passes the score gate on the right page."""
    for q in ("What's the phone number for the Singapore office reception?",
              "What's the name of your data protection officer?",
              "Who is Byte Harbor's chief marketing officer?"):
        assert demo_kb.retrieve(q).refused, q
    got = demo_kb.retrieve("Who is the chief financial officer?")
    assert not got.refused and any("Priya Lindgren" in s.text for s in got.sources)
    chat = [{"role": "user", "content": "What's the reception phone number for your Halifax office?"},
            {"role": "assistant", "content": "Halifax reception is on +1 902 555 0188."},
            {"role": "user", "content": "and the number for the lisbon office?"}]
    assert demo_kb.retrieve_conversation(chat).refused
    chat[-1]["content"] = "and what are its reception hours?"
    got = demo_kb.retrieve_conversation(chat)
    assert not got.refused and any("09:30 to 16:30" in s.text for s in got.sources)


def test_the_chunk_the_embedder_finds_far_closer_is_not_outvoted_by_bm25(demo_kb):
    """BM25's loose word matches ("server", "sell") put the SLA's worked example first for "whats the cheapest server u
    guys sell" (cosine 0.34) and the plans' table (0.54) sixth: a candidate closer by DENSE_MARGIN goes first."""
    from rag.retrieve import DENSE_MARGIN, _lift_closest
    from rag.store import Hit

    top = demo_kb.search("whats the cheapest server u guys sell")[0]
    assert top.path == "pricing-plans.md" and "Server plans" in (top.section or ""), top
    hits = [Hit("a", "", {}, 0.34), Hit("b", "", {}, 0.30), Hit("c", "", {}, 0.34 + DENSE_MARGIN + 0.01)]
    assert [h.id for h in _lift_closest(hits, 2)] == ["c", "a", "b"]
    hits[2].score = 0.34 + DENSE_MARGIN - 0.01  # close enough: the fused order stands
    assert [h.id for h in _lift_closest(hits, 2)] == ["a", "b", "c"]


def test_the_cheapest_is_found_among_all_the_rows_of_the_price_table(demo_kb):
    """"whats the cheapest server i can get" found the plans' chunk with the Schooner and the Galleon, and the quote
    opened with the Galleon's row ($88): a question for the cheapest or the dearest gets every chunk of a table whose
    rows all have a price (one of them found), and the rows are compared."""
    for q, plan in (("whats the cheapest server i can get and what do i get for it", "Dinghy"),
                    ("which of your server plans is the most expensive?", "Galleon")):
        r = demo_kb.retrieve(q)
        assert not r.refused and any("Plan: Dinghy" in s.text for s in r.sources), q
        assert f"Plan: {plan}" in demo_kb.guard.evidence(r.question, r.sources)[0].text, q


def test_a_question_listing_a_table_gets_all_its_rows(demo_kb):
    """"which regions can i deploy servers in?" found the prose about regions, not the region list; "what plans do
    you have?" scored 0.27, under the gate. Both get their table, whole, and the quote lists every row."""
    q = "which regions can i deploy servers in?"
    r = demo_kb.retrieve(q)
    assert r.listed and not r.refused
    text = " ".join(s.text for s in r.sources)
    assert all(code in text for code in ("hfx1", "yyz1", "lis1", "fra1", "sin1", "syd1"))
    msgs = [{"role": "user", "content": q}]
    quote = demo_kb.guard_session(msgs, r).finish()
    assert all(code in quote for code in ("hfx1", "yyz1", "lis1", "fra1", "sin1", "syd1")), quote
    plans = demo_kb.retrieve("what plans do you have?")
    assert plans.listed and not plans.refused
    # a follow-up after a listing question asks about one row: only the last turn alone may list
    follow = demo_kb.retrieve_conversation([
        {"role": "user", "content": "Which regions do you have?"},
        {"role": "assistant", "content": "Ahoy! Halifax, Toronto, Lisbon, Frankfurt, Singapore and Sydney."},
        {"role": "user", "content": "who's the data center partner for the German one?"}])
    assert not follow.listed
    assert not demo_kb.retrieve("Which regions have GPU servers?").listed  # a name the documents lack


def test_the_row_a_question_names_by_its_value_answers(demo_kb):
    """"the 4-core server plan": the Sloop's row (4 GB of RAM) had come first and its $0.021 was quoted; the
    Schooner's row (vCPU: 4) answers."""
    q = "How much per hour is the 4-core server plan?"
    r = demo_kb.retrieve(q)
    quote = demo_kb.guard_session([{"role": "user", "content": q}], r).finish()
    assert quote.startswith("Plan: Schooner") and "$0.048" in quote and "$0.021" not in quote, quote  # no marker here


def test_a_follow_up_is_answered_by_the_row_its_own_words_name(demo_kb):
    """"and block storage?" after "what uptime do you commit to for load balancers?" is searched with both turns; the
    earlier turn's words found the SLA table, but its load balancers' row (99.95%) was quoted first. The follow-up's
    own words count again (FOCUS_SHARE): the block storage row (99.9%) answers."""
    msgs = [{"role": "user", "content": "what uptime do you commit to for load balancers?"},
            {"role": "assistant", "content": "Ahoy! Load balancers have a monthly uptime commitment of 99.95%."},
            {"role": "user", "content": "and block storage?"}]
    r = demo_kb.retrieve_conversation(msgs)
    assert not r.refused and r.question != "and block storage?"  # searched with the turn before
    quote = demo_kb.guard_session(msgs, r).finish()
    first = quote.split(" [1]")[0]
    assert "Block storage" in first and "99.9%" in first and "99.95%" not in first, quote
    # its acronym as searched: "CFO" is the documents' "Chief Financial Officer", not the CEO's row asked before
    msgs = [{"role": "user", "content": "Who is the CEO of Byte Harbor?"},
            {"role": "assistant", "content": "Ahoy! Marisol Quint is the Chief Executive Officer."},
            {"role": "user", "content": "thanks - and who's the CFO?"}]
    r = demo_kb.retrieve_conversation(msgs)
    first = demo_kb.guard_session(msgs, r).finish().split(" [1]")[0]
    assert "Chief Financial Officer" in first and "Marisol Quint" not in first, first


def test_demo_a_follow_ups_own_extreme_picks_the_row(demo_kb_plain):
    """"what about the most expensive one?" after "which plan is the cheapest?" is searched with both turns; the
    conversation's "cheapest" picked the Dinghy's row again. The follow-up's own extreme decides: the Galleon's."""
    demo_kb = demo_kb_plain
    msgs = [{"role": "user", "content": "which plan is the cheapest?"},
            {"role": "assistant", "content": "Ahoy! The Dinghy, at $6 per month."},
            {"role": "user", "content": "what about the most expensive one?"}]
    r = demo_kb.retrieve_conversation(msgs)
    assert "cheapest" in r.question  # searched with the turn before
    first = demo_kb.guard_session(msgs, r).finish().split(" [")[0]
    assert "Plan: Galleon" in first and "$88" in first and "$6" not in first, first


def test_demo_a_list_item_is_quoted_with_its_lead_in(demo_kb_plain):
    """"new accounts start with these limits:" then "at most 10 servers at a time;" ... "at most 5 floating IPs.": the
    last item was quoted alone ("Ahoy! at most 5 floating IPs."), a fragment that says limits of what?"""
    q = "What limits does a brand-new account start with for servers and floating IPs?"
    r = demo_kb_plain.retrieve(q)
    first = demo_kb_plain.guard_session([{"role": "user", "content": q}], r).finish().split(" [")[0]
    assert "new accounts start with these limits: at most 10 servers at a time;" in first, first
    assert first.endswith("at most 5 floating IPs"), first


def test_demo_each_part_of_a_two_part_question_finds_its_section(demo_kb_plain):
    """The whole question found the power section alone over the gate; its second part, searched alone, finds the
    network's (at most one source more than top_k)."""
    q = "How long can the generators keep a region running in a power cut, and how fast are each host's uplinks?"
    r = demo_kb_plain.retrieve(q)
    assert len(r.sources) <= demo_kb_plain.cfg.top_k + 1
    quote = demo_kb_plain.guard_session([{"role": "user", "content": q}], r).finish()
    assert "48 hours" in quote and "25 Gbps" in quote, quote


def test_demo_what_a_ticket_asks_for_comes_from_its_question_not_its_story(demo_kb_plain):
    """"Since last week it keeps failing" is the customer's story: its "since" had made the quote lead with
    sentences holding a time ("suspended for one hour"); the question asks for a per-minute limit."""
    q = ("Our deploy script sends lots of PUT and DELETE calls. Since last week it keeps failing with 429 errors. "
         "What's the per-minute ceiling for write calls on a single token?")
    r = demo_kb_plain.retrieve(q)
    first = demo_kb_plain.guard_session([{"role": "user", "content": q}], r).finish().split(" [")[0]
    assert "Write requests" in first and "120 requests per minute" in first, first


def test_the_head_office_is_the_headquarters_and_a_po_box_no_street_address(demo_kb):
    """"whats the street address of your head office" quoted the mailing address (PO Box 3142: the address kind
    counted it) and, once that was no street address, Singapore's; "HQ" was a name the documents lack, so "the Halifax
    HQ reception" was refused. The documents' "headquarters" is searched for both."""
    for q, want in (("whats the street address of your head office", "88 Cable Wharf Road"),
                    ("What's the street address of your headquarters?", "88 Cable Wharf Road"),
                    ("What's the phone number of the Halifax HQ reception?", "+1 902 555 0188")):
        r = demo_kb.retrieve(q)
        assert not r.refused, q
        quote = demo_kb.guard_session([{"role": "user", "content": q}], r).finish()
        first = quote.split(" [")[0]
        assert want in first and "PO Box" not in first, (q, quote)
    assert "headquarters" in demo_kb.retriever.expand("where's your HQ?")
    based = demo_kb.retrieve("where are you based?")  # the regions came first: "location" is a region's word too
    assert not based.refused and "88 Cable Wharf Road" in based.sources[0].text
    vuln = demo_kb.retrieve("think i found a vuln in your console, where do i report it")
    assert not vuln.refused and "security@byteharbor.cloud" in vuln.sources[0].text
    from protege.config_file import load_config

    gate = load_config(REPO / "configs" / "captain-byte.yaml").knowledge.min_score
    call = demo_kb.search("can i just call you guys on the phone?")[0]  # 0.23 before "(phone support)" was added
    assert call.score >= gate and "+1 902 555 0142" in call.text, call
    assert not demo_kb.retriever.unknown_names("What's the phone number of the Halifax HQ reception?")
