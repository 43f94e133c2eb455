"""A question that asks to list what a table enumerates gets every row (rag/tables.py, the evidence's `member` rows,
the guard's quote); a question about one row, or about the rows a sentence names, does not."""

from __future__ import annotations

from rag.claims import Context
from rag.guard import Guard
from rag.tables import TableIndex, asks_to_list
from rag.types import Source

ROWS_A = ("Regions > Region list\nRegion code: hfx1; City: Halifax; Opened: 2014\n"
          "Region code: yyz1; City: Toronto; Opened: 2017\nRegion code: lis1; City: Lisbon; Opened: 2019")
ROWS_B = "Regions > Region list\nRegion code: lis1; City: Lisbon; Opened: 2019\nRegion code: syd1; City: Sydney; Opened: 2024"
PROSE = ("Regions\nByte Harbor runs four regions on three continents. Load balancers are available in hfx1 and lis1; "
         "the other regions get them next year.")


def test_a_table_cut_across_chunks_is_one_table_in_the_documents_order():
    index = TableIndex([("c2", ROWS_B, {"path": "regions.md", "ordinal": 2}),
                        ("c1", ROWS_A, {"path": "regions.md", "ordinal": 1}),
                        ("c3", PROSE, {"path": "regions.md", "ordinal": 0})])
    [table] = index.tables
    assert table.noun == "region" and table.chunk_ids == ["c1", "c2"]
    assert [r.split(";")[0] for r in table.rows] == ["Region code: hfx1", "Region code: yyz1", "Region code: lis1",
                                                     "Region code: syd1"]  # the overlapping Lisbon row once
    assert index.asked("Which regions can I deploy servers in?") == [table]
    assert index.asked("Which region opened in 2019?") == []


def test_asking_to_list_is_naming_the_plural():
    for q in ("what plans do you have?", "Which plans can I choose from?", "list all plans", "What are all the plans?"):
        assert asks_to_list(q, "plan"), q
    for q in ("Which plan has dedicated cores?", "How much is the Sloop plan?", "Which of your plans has the most RAM?",
              "What's the cheapest of your plans?", "Which plans includes backups?"):
        assert not asks_to_list(q, "plan"), q
    assert asks_to_list("What services does the SLA cover?", "service")
    assert asks_to_list("what cities are you in?", "city")


def _reply(question: str, sources: list[Source], reply: str = "Ahoy!") -> str:
    ctx = Context(*(s.text for s in sources), names_only=question)
    g = Guard(embed=None).session(question, sources, ctx, "Ahoy!", list_rows=True)
    return g.feed(reply) + g.finish()


def test_every_row_is_quoted_when_the_question_lists_the_table():
    sources = [Source("regions.md", "Regions > Region list", None, "c1", 0.5, text=ROWS_A),
               Source("regions.md", "Regions > Region list", None, "c2", 0.5, text=ROWS_B)]
    text = _reply("Which regions can I deploy servers in?", sources)
    assert all(code in text for code in ("hfx1", "yyz1", "lis1", "syd1")) and text.count("lis1") == 1
    assert text.startswith("Ahoy! Region code: hfx1")
    # the rows a sentence names together with what is asked: that sentence answers, not the whole table
    sources.append(Source("regions.md", "Regions", None, "c3", 0.6, text=PROSE))
    text = _reply("Which regions have load balancers?", sources)
    assert "Load balancers are available in hfx1 and lis1" in text and "syd1" not in text


def test_a_value_the_question_names_is_matched_in_its_unit():
    from rag.tables import holds_quantity, question_quantities, row_quantities

    sloop = "Plan: Sloop; vCPU: 2; RAM: 4 GB; Price per month: $14; Price per hour: $0.021"
    schooner = "Plan: Schooner; vCPU: 4; RAM: 8 GB; Price per month: $32; Price per hour: $0.048"
    assert row_quantities(sloop) == {("2", "cpu"), ("4", "gb"), ("14", "$"), ("0.021", "$")}
    asked = question_quantities("I only need the 4-core box for a load test. What's it cost by the hour?")
    assert asked == {("4", "cpu")} and holds_quantity(schooner, asked) and not holds_quantity(sloop, asked)
    assert holds_quantity(sloop, question_quantities("I've got the $14 server."))
    assert holds_quantity(schooner, question_quantities("the one with 8 gigs of memory"))
    index = TableIndex([("c1", "Plans\n" + sloop + "\n" + schooner, {"path": "pricing.md", "ordinal": 1})])
    assert index.valued("What does the 4-core box cost?") == index.tables
    assert index.valued("What does the 16-core box cost?") == [] and index.valued("What does the box cost?") == []


def test_the_row_holding_the_named_value_answers():
    rows = Source("pricing.md", "Plans", None, "c1", 0.5, text=(
        "Plans\nPlan: Sloop; vCPU: 2; RAM: 4 GB; Price per hour: $0.021\n"
        "Plan: Schooner; vCPU: 4; RAM: 8 GB; Price per hour: $0.048"))
    ev = Guard(embed=None).evidence("What does the 4-core box cost per hour?", [rows])
    assert ev[0].text.startswith("Plan: Schooner")  # not the Sloop, with its 4 GB of RAM
    ev = Guard(embed=None).evidence("What does the 2-core box cost per hour?", [rows])
    assert ev[0].text.startswith("Plan: Sloop")
