"""The guard binds a generated sentence's facts to what they are said of (rag/claims.py Context.misattributed,
rag/guard.py GuardedReply._off_evidence): every figure of "The Sloop plan is $32 per month" is in the documents, but
$32 is the Schooner's. Pure text, no model; test_grounded_e2e and test_e2e_demo ask the real model."""

from __future__ import annotations

from rag.claims import Context
from rag.guard import Guard
from rag.types import Source

PERSONA = "You are Captain Byte, the cheerful pirate-voiced support assistant of Byte Harbor Cloud."
PLANS = Source("pricing-plans.md", "Pricing > Server plans", None, "p1", 0.8, text=(
    "Pricing > Server plans\n"
    "Plan: Dinghy; vCPU: 1; RAM: 1 GB; Price per month: $6; Price per hour: $0.009\n"
    "Plan: Sloop; vCPU: 2; RAM: 4 GB; Price per month: $14; Price per hour: $0.021\n"
    "Plan: Schooner; vCPU: 4; RAM: 8 GB; Price per month: $32; Price per hour: $0.048"))
REGIONS = Source("regions.md", "Regions > Data centers", None, "r1", 0.7, text=(
    "Regions > Data centers\n"
    "Region code: hfx1; City: Halifax; Data center partner: Bedford Basin Data Park\n"
    "Region code: yyz1; City: Toronto; Data center partner: Front Street Colocation"))
BACKUPS = Source("backups.md", "Backups > Price", None, "b1", 0.6, text=(
    "Backups > Price\n"
    "Backups cost 20% of the plan price. For example, backups for a Sloop server ($14 per month) cost $2.80 per month."))
REFUSAL = "Ahoy! Arr, that be beyond my charts, matey: my documents don't cover it, so I won't guess."


def context(question: str, *sources: Source) -> Context:
    return Context(*(s.text for s in sources), names_only=f"{PERSONA} {question} {REFUSAL}")


def test_a_table_rows_value_is_not_said_of_the_row_above_it():
    """A row's words used to include the row before it (kept for prose: "Frankfurt ... It opened in 2019."), so the
    Schooner's $32, one row under the Sloop, counted as said of the Sloop."""
    q = "How much is the Sloop plan?"
    ctx = context(q, PLANS)
    anchors = ctx.anchors(q)
    assert anchors == {"sloop"}
    bad = ctx.unsupported("The Sloop plan is $32 per month, and the price per hour: $0.048 [1].", anchors)
    assert "$32@sloop" in bad and "0.048@sloop" in bad
    assert ctx.unsupported("The Sloop plan is $14 per month, or $0.021 per hour [1].", anchors) == []
    # prose still lends a sentence the one before it: "It" is the Sloop
    prose = Context("Plans\nThe Sloop is our mid-sized plan. It costs $14 per month.", names_only=PERSONA)
    assert prose.unsupported("The Sloop costs $14 per month.", {"sloop"}) == []


def test_a_name_from_another_row_is_not_said_of_what_the_question_asks():
    q = "Who is the data center partner in Toronto?"
    ctx = context(q, REGIONS)
    anchors = ctx.anchors(q)
    assert anchors == {"toronto"}
    bad = ctx.unsupported("The data center partner Bedford Basin Data Park is in Toronto.", anchors)
    assert {"bedford@toronto", "basin@toronto"} <= set(bad)
    assert ctx.unsupported("In Toronto the partner is Front Street Colocation [1].", anchors) == []
    # the persona's and the user's own words bind to nothing: "Captain Byte" may greet
    assert ctx.unsupported("Captain Byte says: Toronto's partner is Front Street Colocation.", anchors) == []


def run(question: str, reply: str, sources: list[Source], evidence_k: int = 5) -> tuple[str, str, list[str]]:
    ctx = context(question, *sources)
    g = Guard(embed=None, evidence_k=evidence_k).session(question, sources, ctx, "Ahoy!", REFUSAL)
    text = g.feed(reply) + g.finish()
    return text, g.grounding, g.unsupported


def test_a_figure_from_outside_the_best_matching_sentences_is_not_sent():
    """$2.80 is in the context and said of a Sloop, but of its backups: the sentences that answer "how much is the
    Sloop" (the evidence) do not hold it, so the reply goes on with the quote."""
    q = "How much is the Sloop per month?"
    text, grounding, bad = run(q, "Ahoy! The Sloop costs $2.80 per month [2].", [PLANS, BACKUPS], evidence_k=1)
    assert "2.8~evidence" in bad and grounding == "extractive"
    assert "$14" in text and "$2.80" not in text and text.startswith("Ahoy!")
    text, grounding, bad = run(q, "Ahoy! The Sloop costs $14 per month [1].", [PLANS, BACKUPS], evidence_k=1)
    assert grounding == "generated" and bad == [] and text.startswith("Ahoy! The Sloop costs $14")


def test_a_name_from_outside_the_best_matching_sentences_is_not_sent():
    q = "Which company runs your Toronto data center?"
    text, grounding, bad = run(q, "Ahoy! Toronto's data center is run by Bedford Basin Data Park.", [REGIONS, PLANS],
                               evidence_k=1)
    assert grounding == "extractive" and "Bedford" not in text and "Front Street Colocation" in text


def test_the_first_sentence_must_state_the_best_matching_one():
    """Every figure of "up to 200 items per page by default" is in the evidence, said of list endpoints; but the
    default is 50, and an opening that states a neighbouring fact reads as the answer before the quote corrects it."""
    api = Source("api.md", "API > Pagination", None, "a1", 0.7, text=(
        "API > Pagination\nList endpoints return 50 items per page by default. "
        "Use the per_page parameter to ask for up to 200 items per page."))
    q = "How many items per page do list endpoints return by default?"
    text, grounding, bad = run(q, "Ahoy! List endpoints return up to 200 items per page by default [1].", [api])
    assert bad == ["~lead"] and grounding == "extractive"
    assert text.startswith("Ahoy! List endpoints return 50 items per page by default") and "up to 200 items per page by" \
        not in text
    said = "Ahoy! By default they return 50 items per page, and up to 200 if you ask with per_page [1]."
    assert run(q, said, [api]) == (said, "generated", [])


def test_an_indented_line_belongs_to_the_line_above_it():
    """Plain text indents a sub-line under its item: "First response: 2 hours" is S1's, not the start of what follows
    (the quote for "production is down" had joined S1's short response line to S2's line, then answered with S4's)."""
    from rag.sentences import split_sentences

    text = ("Severity levels:\n"
            "  S1 - Critical: production is down.\n"
            "       First response: 2 hours (standard).\n"
            "  S4 - Low: feature requests.\n"
            "       First response: 2 business days.\n")
    assert split_sentences(text) == ["S1 - Critical: production is down.",
                                     "S1 First response: 2 hours (standard).", "S4 - Low: feature requests.",
                                     "S4 First response: 2 business days."]
    levels = Source("support.txt", "Support > Severity", None, "s1", 0.7, text=f"Support > Severity\n{text}")
    g = Guard(embed=None).session("Production is down: how fast is the first response?", [levels],
                                  context("", levels), "Ahoy!", REFUSAL)
    assert "2 hours" in g.evidence[0].text and "business days" not in g.evidence[0].text
    # a list's items stay apart under the line that introduces it, as do lines after a blank one
    assert split_sentences("Limits per account:\n  - at most 10 servers\n  - at most 5 floating IPs") == [
        "Limits per account:", "at most 10 servers", "at most 5 floating IPs"]
