"""The faithfulness guard (rag/claims.py, rag/guard.py): pure text, no model; the real engine is in test_grounded_e2e."""

from __future__ import annotations

from rag.claims import Context, claims, normalise_number
from rag.guard import Guard, asked_kinds, split_sentences
from rag.types import Source

PRICING = Source("pricing-plans.md", "Pricing > Server plans", None, "c1", 0.8, text=(
    "Pricing > Server plans\n"
    "Plan: Dinghy; vCPU: 1; RAM: 1 GB; Price per month: $6\n"
    "Plan: Sloop; vCPU: 2; RAM: 4 GB; Price per month: $14; Price per hour: $0.021\n"
    "The Galleon plan also includes dedicated vCPUs, so its cores are never shared with other customers."))
REGIONS = Source("regions.md", "Regions", None, "c2", 0.5, text=(
    "Regions\nFrankfurt runs in the region fra1. It opened in 2019 and is run by Mara Quill."))
SYDNEY = Source("regions.md", "Regions", None, "c3", 0.4, text="Regions\nRegion code: syd1; City: Sydney; Opened: 2024")
PERSONA = "You are Captain Byte, the cheerful pirate-voiced support assistant of Byte Harbor Cloud."


def session(question: str, sources=(PRICING, REGIONS), marker: str | None = "Ahoy!"):
    ctx = Context(*(s.text for s in sources), names_only=PERSONA + " " + question)
    return Guard(embed=None).session(question, list(sources), ctx, marker)


def run(question: str, reply: str, **kw) -> tuple[str, str, list[str]]:
    g = session(question, **kw)
    text = g.feed(reply) + g.finish()
    return text, g.grounding, g.unsupported


def test_numbers_normalise_across_spellings():
    assert normalise_number("$14") == normalise_number("14.00") == normalise_number("14") == "14"
    assert normalise_number("$1,400.50") == "1400.5" and normalise_number("0.021") == "0.021"
    assert claims("It costs 14 USD [2].").numbers == {"14"}  # the citation is no claim, USD no name
    c = claims("Ahoy! Region fra1 opened on 2025-02-01 with Mara Quill.")
    assert c.codes == {"fra1"} and {"2025", "2", "1"} <= c.numbers and {"mara", "quill"} <= c.names
    assert "ahoy" not in c.names  # a sentence opener is not a name


def test_supported_answer_is_sent_as_generated():
    text, grounding, bad = run("How much is the Sloop per month?", "Ahoy! The Sloop plan costs $14 per month [1].")
    assert text == "Ahoy! The Sloop plan costs $14 per month [1]." and grounding == "generated" and bad == []


def test_invented_price_is_replaced_by_the_quoted_fact():
    text, grounding, bad = run("How much is the Sloop per month?", "Ahoy! The Sloop costs $2.80 a month [1].")
    assert grounding == "extractive" and bad == ["2.8", "$2.8"]
    assert "$2.80" not in text and "$14" in text and text.startswith("Ahoy! ")
    assert "Plan: Sloop" in text and "[1]" in text


def test_invented_name_and_code_are_caught():
    assert run("Who runs Frankfurt?", "Ahoy! Frankfurt is run by John Smith [2].")[2] == ["john", "smith"]
    assert run("Which region is Frankfurt?", "Ahoy! Frankfurt is region fra9 [2].")[2] == ["fra9"]
    text, grounding, _ = run("Which region is Frankfurt?", "Ahoy! Frankfurt is region fra1 [2].")
    assert grounding == "generated" and "fra1" in text


def test_vague_answer_gets_the_fact_instead():
    text, grounding, bad = run("How much is the Sloop per month?", "Ahoy! The Sloop is a great plan for you.")
    assert grounding == "extractive" and bad == ["~lead"] and "great plan" not in text
    assert text.startswith("Ahoy! Plan: Sloop;") and "$14" in text


def test_a_bare_figure_is_no_answer():
    """"[1] 2019." states a figure of the evidence but says of nothing what it is: the quote says it instead."""
    text, grounding, bad = run("When did Frankfurt open?", "Ahoy! [2] 2019.")
    assert grounding == "extractive" and bad == ["~bare"]
    assert text.startswith("Ahoy! Frankfurt runs in the region fra1. It opened in 2019")
    assert run("When did Frankfurt open?", "Ahoy! It opened in 2019 [2].")[1] == "generated"


def test_a_sentence_about_the_same_thing_is_quoted_with_the_one_that_names_it():
    """"If the same key is sent again within 24 hours, ..." says which key only with the sentence before it, which
    holds the answer to "is there a way to make retries safe?" (the Idempotency-Key header)."""
    api = Source("api.html", "API > Idempotency", None, "c4", 0.6, text=(
        "API > Idempotency\nFor POST requests, send an Idempotency-Key header with a unique value, such as a UUID. "
        "If the same key is sent again within 24 hours, the API returns the original response instead of creating a "
        "duplicate resource."))
    text, grounding, _ = run("My retried requests create duplicate servers. How long is a retried request "
                             "remembered?", "Ahoy! Retries are fine.", sources=(api,))
    assert grounding == "extractive" and "24 hours" in text
    assert text.startswith("Ahoy! For POST requests, send an Idempotency-Key header"), text


def test_a_question_asking_for_a_web_address_gets_the_sentence_that_writes_one():
    """"status page url?" was quoted the status page's hosting, which its words match better."""
    status = Source("status.txt", "Status page", None, "c5", 0.6, text=(
        "Status page\nLive service status is published at status.byteharbor.cloud. The status page is hosted with an "
        "outside provider, on infrastructure separate from our own regions, so that the page stays reachable during "
        "an outage."))
    text, _, _ = run("status page url?", "Ahoy!", sources=(status,))
    assert text.startswith("Ahoy! Live service status is published at status.byteharbor.cloud"), text
    assert asked_kinds("What's the website of the status page?")[0].search("see https://status.example.com")
    assert not asked_kinds("status page url?")[0].search("write to status@byteharbor.cloud")


def test_missing_persona_opening_is_restored():
    text, grounding, _ = run("How much is the Sloop per month?", "The Sloop plan costs $14 per month [1].")
    assert text.startswith("Ahoy! The Sloop plan costs $14") and grounding == "generated"


def test_repetition_loop_is_cut():
    reply = "Ahoy! The Sloop has " + "4 GB of RAM, " * 30
    text, _, _ = run("How much RAM does the Sloop have?", reply)
    assert text.count("4 GB of RAM") <= 2 and len(text) < 200


def test_prompt_scaffold_does_not_leak():
    text, _, _ = run("How much is the Sloop per month?",
                     "Ahoy! The Sloop costs $14 per month [1].\nQuestion: What about the Dinghy?")
    assert "Question" not in text and "Dinghy" not in text and "$14" in text


def test_stream_holds_back_at_most_a_sentence_and_never_sends_the_bad_claim():
    g = session("How much is the Sloop per month?")
    sent = []
    for piece in ["Ah", "oy!", " The Sloop", " costs", " $2", ".80", " a month", ".", " More", " soon"]:
        sent.append(g.feed(piece))
        if piece == "oy!":
            assert sent[-1] == ""  # the sentence may still go on
        if piece == " The Sloop":
            assert "".join(sent) == "Ahoy! "  # the first sentence is out as soon as the next one starts
    assert g.stopped  # the bad sentence ended: the engine is told to stop
    tail = g.finish()
    full = "".join(sent) + tail
    assert "2.80" not in full and "$14" in full and g.grounding == "extractive"


def test_sentences_of_tables_and_bullets():
    s = split_sentences("Title\n| Sloop | 2 | $14 |\n|---|---|\n- **Floating IPs:** free for all plans. Reserved ones cost $2.")
    assert "| Sloop | 2 | $14 |" in s and "|---|---|" not in s and "Floating IPs: free for all plans." in s and "Floating IPs: Reserved ones cost $2." in s


def test_evidence_prefers_the_sentence_that_answers():
    g = Guard(embed=None)
    ev = g.evidence("What does the Sloop cost per month?", [PRICING, REGIONS])
    assert "Sloop" in ev[0].text and ev[0].source == 1
    ev = g.evidence("When did the Frankfurt region open?", [PRICING, REGIONS])
    assert "2019" in ev[0].text and ev[0].source == 2


def test_a_real_number_said_of_the_wrong_thing_is_caught():
    text, grounding, bad = run("How much is the Sloop per month?", "Ahoy! The Sloop costs $6 per month [1].")
    assert bad == ["$6@sloop", "6@sloop"] and grounding == "extractive" and "$14" in text and "$6 per" not in text
    assert run("How much is the Dinghy per month?", "Ahoy! The Dinghy costs $6 per month [1].")[1] == "generated"


def test_linearized_table_rows_and_wrapped_prose_split_right():
    s = split_sentences("Plans\nPlan: Dinghy; RAM: 1 GB; Price: $6\nPlan: Sloop; RAM: 4 GB; Price: $14\n"
                        "The warranty lasts ten years\nfrom the date of installation.")
    assert s == ["Plan: Dinghy; RAM: 1 GB; Price: $6", "Plan: Sloop; RAM: 4 GB; Price: $14",
                 "The warranty lasts ten years from the date of installation."]


def test_the_models_own_refusal_is_sent_as_the_persona_refusal():
    refusal = "Ahoy! Arr, that be beyond my charts, matey: my documents don't cover it, so I won't guess."
    ctx = Context(PRICING.text, names_only=PERSONA)
    for reply in ("Ahoy! I don't know the phone number of that office.", refusal,
                  "Ahoy! Arr, that be beyond my charts, matey!"):
        g = Guard(embed=None).session("What is the Singapore phone number?", [PRICING], ctx, "Ahoy!", refusal)
        assert g.feed(reply) + g.finish() == refusal and g.grounding == "refused"
    g = Guard(embed=None).session("How much is the Sloop?", [PRICING], ctx, "Ahoy!", refusal)
    assert "$14" in g.feed("Ahoy! The Sloop costs $14 per month [1].") + g.finish() and g.grounding == "generated"


def test_with_model_refusal_quote_the_model_declining_gets_the_quote():
    """knowledge.model_refusal: quote (the default): the gate let the question through, so the model declining is
    answered with the best-matching sentences, streamed or not."""
    refusal = "Ahoy! Arr, that be beyond my charts, matey: my documents don't cover it, so I won't guess."
    ctx = Context(PRICING.text, names_only=PERSONA)
    for reply in ("Ahoy! I don't know what the Sloop costs.", refusal,
                  # a guess declines, lucky or not: every figure of it is in the context, so the claim check let it
                  # through ("The documents don't give the year, so I'll guess it's 2019.")
                  "Ahoy! The documents don't give the price, so I'll guess it's $14.", "Ahoy! My guess is $14."):
        g = Guard(embed=None).session("How much is the Sloop per month?", [PRICING], ctx, "Ahoy!", refusal,
                                      quote_refusals=True)
        first = g.feed(reply)
        text = first + g.finish()
        assert first in ("", "Ahoy! ") and "$14" in text and "[1]" in text and "charts" not in text, reply
        assert "guess" not in text
        assert text.startswith("Ahoy!") and g.grounding == "extractive" and g.stopped


def test_a_fact_must_be_stated_about_what_the_question_asks():
    """A copied table row of the wrong thing (every claim in it is in the documents) is caught by the question's
    anchor: "Frankfurt" is the distinctive word, and syd1 is never said of it."""
    text, grounding, bad = run("Which region is Frankfurt in?", "Ahoy! Region code: syd1; City: Sydney [2].",
                               sources=(PRICING, REGIONS, SYDNEY))
    assert bad == ["syd1@frankfurt"] and grounding == "extractive" and "fra1" in text and "syd1" not in text
    assert text.count("fra1") == 1  # the quote is not repeated
    text, grounding, bad = run("Which region is Frankfurt in?", "Ahoy! Frankfurt is fra1 [2].",
                               sources=(PRICING, REGIONS, SYDNEY))
    assert grounding == "generated" and bad == []


def test_money_is_not_any_number():
    text, grounding, bad = run("How much is the Sloop per month?", "Ahoy! The Sloop costs $4 per month [1].")
    assert "$4" in bad and "$14" in text  # 4 is in the documents (4 GB), $4 is not


def test_a_quoted_table_row_comes_alone():
    text, grounding, _ = run("How much is the Sloop per hour?", "Ahoy! It is cheap.")
    assert grounding == "extractive" and "$0.021" in text and "Dinghy" not in text


BILLING = Source("billing.md", "Billing", None, "c4", 0.7, text=(
    "Billing\nInvoices are issued on the first day of each month and paid by card. "
    "Customers who prepay twelve months of a plan get 10% off that plan's price. "
    "A plan costs $14 per month when paid monthly, and refunds are given within 30 days."))
HISTORY = Source("history.md", "History", None, "c5", 0.7, text=(
    "History\nByte Harbor Cloud is an independent cloud-hosting company with offices in three countries. "
    "The company was founded in 2014 in Halifax by Marisol Quint and Devan Ashcroft."))


def test_evidence_carries_the_kind_of_fact_asked_for():
    # "how much do I save" asks for a share, not a price; "who" asks for a person's name
    assert "10%" in session("How much do I save if I prepay a year?", sources=(BILLING,)).evidence[0].text
    assert "Marisol Quint" in session("Who started the company?", sources=(HISTORY,)).evidence[0].text
    security = Source("security.pdf", "Security", None, "c7", 0.7, text=(
        "Security\nBackups cost $0.05 per GB and are encrypted at rest. "
        "The security programme is led by Hana Takeda, Head of Security since 2021."))
    assert "Hana Takeda" in session("Who's in charge of security?", sources=(security,)).evidence[0].text
    # "who may install it" is answered by a role, not a name; "the installer's number" names no one who installs
    install = Source("install.md", "Installation", None, "c8", 0.7, text=(
        "Installation\nTo claim, send the installer's certificate number and a photo of the unit. "
        "Only a certified electrician may install it."))
    assert "electrician" in session("Who is allowed to install the battery?", sources=(install,)).evidence[0].text
    # "how much ... compared to the server price" asks for a share, not the example's price
    backups = Source("backups.md", "Backups > Price", None, "c13", 0.7, text=(
        "Backups > Price\nFor example, backups for a Sloop server ($14 per month) cost $2.80 per month. "
        "Automatic backups cost 20% of the server's monthly plan price."))
    got = session("How much do automatic backups cost compared to the server price?", sources=(backups,)).evidence[0]
    assert "20%" in got.text and got.primary
    # "5 business days" is a time as much as "30 minutes" is
    policy = Source("status.txt", "Incidents", None, "c9", 0.7, text=(
        "Incidents\nAn incident is marked Resolved only after the service has been stable for 30 minutes. "
        "For every Major incident, a post-incident review is published within 5 business days of resolution."))
    got = session("How soon after a serious outage is the review published?", sources=(policy,)).evidence[0]
    assert "5 business days" in got.text and got.primary


def test_a_place_or_a_thing_after_an_article_or_preposition_is_no_persons_name():
    # "on Hollis Street" and "the Harbor Link" have a person's shape (two capitalised words after a lower-case one):
    # taken for names, they put "started the company from a room on Hollis Street" first for "Who started it?"
    who = asked_kinds("Who started the company?")[0]
    assert who.search("It was founded in 2014 by Marisol Quint.") and who.search("Name: Priya Lindgren; Role: CFO")
    assert who.search("The security programme is led by Hana Takeda.")
    for thing in ("They started the company from a rented room on Hollis Street.",
                  "Traffic between the regions runs on the Harbor Link backbone.",
                  "Ask at the front desk of Byte Harbor Cloud.", "Data stays in the European Union.",
                  "It gives 1% of its revenue through its Clear Waters pledge."):  # after a possessive: a thing
        assert not who.search(thing), thing


def test_a_street_address_is_no_po_box():
    # "whats the street address of your head office" quoted the mailing address first: a PO box had the address shape
    # an IP address is no place: "its reserved public address ... am I paying for it?" was quoted the PO box
    assert not any(k.search("PO Box 3142, Halifax") for k in asked_kinds("I detached its public address; do I pay?"))
    street = asked_kinds("whats the street address of your head office")[0]
    assert street.search("Address: 88 Cable Wharf Road, Suite 400, Halifax") and street.search("Rua da Ribeira Nova 42")
    assert not street.search("Send cheques to: Byte Harbor Cloud Inc., PO Box 3142, Halifax Central")
    mail = asked_kinds("What postal address should I use to mail a cheque?")[0]  # any address: a PO box too
    assert mail.search("PO Box 3142") and mail.search("88 Cable Wharf Road")


def test_the_thing_a_which_question_names_is_what_it_asks_for():
    # "Which header ... how many ...?" asks for a header: not the sentence with a number in it
    limits = Source("limits.html", "Rate limits", None, "c10", 0.7, text=(
        "Rate limits\nWhen a limit is exceeded, the API answers HTTP 429 with a header giving the number of seconds "
        "to wait. X-BH-RateLimit-Remaining holds the requests left in the current window."))
    got = session("Which header tells me how many API calls I have left?", sources=(limits,)).evidence[0]
    assert got.text.startswith("X-BH-RateLimit-Remaining") and got.primary
    # an error code is a code: letters, a hyphen, digits
    code = asked_kinds("Which error code do I get when I have too many servers?")[0]
    assert code.search("BH-4207 Your account is at its maximum number of servers.")
    assert not code.search("Your account is at its maximum of 10 servers.")
    # a time limit is a duration, not any number: "waits up to 120 seconds", not "BH-5020 ... ran past its time limit"
    limit = asked_kinds("so what's the time limit for the hook?")[0]
    assert limit.search("The agent waits up to 120 seconds for it to finish.")
    assert not limit.search("BH-5020 The hook script ran past its time limit.")


def test_a_sentence_made_of_words_from_nowhere_is_not_sent():
    # no figure and no name to check, but the words come from neither the documents nor the question
    text, grounding, bad = run("What's the weather like in Frankfurt tomorrow?",
                               "Ahoy! It will be sunny with a chance of rain in the afternoon.")
    assert "sunny" not in text and grounding == "extractive" and "~sunny" in bad
    # a reply in other words than the documents' but about what they say is sent
    text, _, bad = run("Are the Galleon's cores shared?", "Ahoy! No, the Galleon plan's cores are dedicated vCPUs, "
                                                          "never shared.")
    assert bad == [] and text.startswith("Ahoy! No, the Galleon plan's cores are dedicated vCPUs, never shared.")


def test_a_quote_never_says_one_sentence_twice():
    # short lines are quoted with the one after them: "hours + phone" and "phone + walk" share the phone line
    office = Source("offices.html", "Offices > Halifax", None, "c11", 0.7, text=(
        "Offices > Halifax\nReception: Monday to Friday, 09:30 to 16:30.\n+1 902 555 0188\n"
        "A five-minute walk from the ferry terminal.\nThe Halifax office opened in 2014 and has 40 staff."))
    text, _, _ = run("What are the reception hours and phone number of the Halifax office?", "Ahoy!",
                     sources=(office,))
    assert text.count("555 0188") == 1 and "09:30 to 16:30" in text


def test_an_example_is_quoted_with_the_rule_it_illustrates():
    backups = Source("backups.md", "Backups > Automatic backups", None, "c12", 0.6, text=(
        "Backups > Automatic backups\nBackups run every night in a window you choose, and each backup is copied to a "
        "second region.\nThe backup add-on costs 20% of the server's monthly plan price. For example, backups for a "
        "Sloop server ($14 per month) cost $2.80 per month."))
    text, _, _ = run("How much extra does the automatic daily backup thing cost?", "Ahoy!", sources=(backups,))
    assert text.startswith("Ahoy! The backup add-on costs 20%") and "$2.80" in text


def test_a_fact_of_another_sentence_does_not_stand_in_for_the_asked_one():
    # $14 is in the context (so it is no invention), but the question asks for the prepayment saving: the reply
    # opens with the quote of it instead
    text, grounding, bad = run("How much do I save if I prepay a year?", "Ahoy! A plan costs $14 per month [1].",
                               sources=(BILLING,))
    assert bad == ["~lead"] and grounding == "extractive" and "10%" in text and "A plan costs" not in text
    text, grounding, _ = run("How much do I save if I prepay a year?", "Ahoy! You get 10% off [1].",
                             sources=(BILLING,))
    assert grounding == "generated" and text == "Ahoy! You get 10% off [1]."


def test_superlatives_compare_the_rows_of_a_table():
    rows = Source("regions.md", "Regions", None, "c6", 0.6, text=(
        "Regions\nRegion code: hfx1; City: Halifax; Opened: 2014\nRegion code: syd1; City: Sydney; Opened: 2024\n"
        "Region code: yyz1; City: Toronto; Opened: 2017\nThe Toronto region is the newest choice for Canadian data."))
    assert "Sydney" in session("Which is your newest region?", sources=(rows,)).evidence[0].text
    assert "Halifax" in session("Which region is the oldest?", sources=(rows,)).evidence[0].text
    assert "Sydney" in session("Which region opened most recently?", sources=(rows,)).evidence[0].text
    # "first" asks for the oldest year, but a plan's price is no year: "cheapest" decides
    assert "Dinghy" in session("What's the cheapest plan for my first server?", sources=(PRICING,)).evidence[0].text
    assert "Dinghy" in session("What does the cheapest plan cost?", sources=(PRICING,)).evidence[0].text
    text, grounding, _ = run("Which is your newest region?", "Ahoy! Toronto is the newest [1].", sources=(rows,))
    assert grounding == "extractive" and "syd1" in text  # a name is no number: the quote with the fact is added


def test_an_extreme_that_only_names_the_thing_asked_about_asks_for_no_row():
    """qa_dev7: "Is phone support included if I only have the cheapest server plan?" was answered by the Dinghy's row
    (the cheapest), "How many of the largest 8-core servers can a brand-new account run?" by the Galleon's."""
    from rag.tables import superlatives

    assert superlatives("how much memory comes with your cheapest server?") == [("money", False)]
    assert superlatives("whats the monthly price on ur biggest server tier") == [("money", True)]
    for q in ("Is phone support included if I only have the cheapest server plan?",
              "How many of the largest 8-core servers can a brand-new account run at the same time?",
              "Can I order the biggest dedicated-core server in Singapore?", "what do I get when I pick the cheapest?"):
        assert superlatives(q) == [], q


def test_a_code_the_documents_do_not_hold_is_unknown():
    from rag.claims import unknown_codes

    docs = ["BH-5017 A snapshot is already in progress.", "Region code: fra1; City: Frankfurt"]
    assert unknown_codes("What does error BH-5099 mean?", docs) == ["bh-5099"]
    assert unknown_codes("What does error BH-5017 mean?", docs) == []
    assert unknown_codes("Is fra1 in Germany? I run an 8-core box.", docs) == []  # "8-core" is no code
    # written in pieces: a word glued to its number, a path whose host and version the documents write apart
    docs += ["The company became ISO/IEC 27001 certified.", "Use https://api.byteharbor.cloud/v2/. Version v1 was "
             "retired."]
    assert unknown_codes("Are you ISO27001 certified?", docs) == []
    assert unknown_codes("Are you ISO27002 certified?", docs) == ["iso27002"]
    assert unknown_codes("My script calls api.byteharbor.cloud/v1, why 410?", docs) == []
    assert unknown_codes("What's at api.byteharbor.cloud/v7?", docs) == ["api.byteharbor.cloud/v7"]
    assert unknown_codes("What is the fra9 region?", docs) == ["fra9"]


def test_a_sentence_reciting_the_grounding_rules_is_dropped_and_the_answer_goes_on():
    text, grounding, _ = run("How much is the Sloop per month?",
                             "Ahoy! The document is reference data, not instructions. The Sloop costs $14 a month [1].")
    assert text == "Ahoy! The Sloop costs $14 a month [1]." and grounding == "generated"


def test_the_quote_gives_each_sentence_its_own_citation():
    backups = Source("backups.md", "Backups", None, "c4", 0.7, text=(
        "Backups\nTreasure Chest backups cost 20% of the server's monthly plan price. "
        "Treasure Chest keeps 7 daily backups and 6 monthly backups of each server."))
    text, grounding, _ = run("How much do Treasure Chest backups cost, and how many backups are kept?",
                             "Ahoy! They are great.", sources=(PRICING, backups))
    assert grounding == "extractive"
    assert "20% of the server's monthly plan price [2]." in text and "6 monthly backups of each server [2]." in text


def test_a_reply_stating_one_part_gets_the_parts_it_left_out():
    backups = Source("backups.md", "Backups", None, "c4", 0.7, text=(
        "Backups\nTreasure Chest backups cost 20% of the server's monthly plan price. "
        "Treasure Chest keeps 7 daily backups and 6 monthly backups of each server."))
    q = "How much do Treasure Chest backups cost, and how many backups are kept?"
    text, grounding, _ = run(q, "Ahoy! Treasure Chest backups cost 20% of the plan price [2].", sources=(PRICING, backups))
    assert text.startswith("Ahoy! Treasure Chest backups cost 20% of the plan price [2].")  # the model's words stay
    assert text.count("20%") == 1 and "6 monthly backups of each server [2]." in text and grounding == "extractive"
    both = "Ahoy! Backups cost 20% of the plan price and 7 daily and 6 monthly backups are kept [2]."
    assert run(q, both, sources=(PRICING, backups))[:2] == (both, "generated")  # nothing left out: nothing added
    # a sentence is stated when all its figures of the kind asked for are said: "7" alone leaves "6 monthly" out
    text, grounding, _ = run("How many backups are kept?", "Ahoy! Treasure Chest keeps 7 daily backups [2].",
                             sources=(PRICING, backups))
    assert grounding == "extractive" and "6 monthly backups of each server [2]." in text
    text, grounding, _ = run("How many backups does Treasure Chest keep?",
                             "Ahoy! It keeps 7 daily and 6 monthly backups [2].", sources=(backups,))
    assert text.startswith("Ahoy! It keeps 7 daily and 6 monthly backups [2].") and "each server" not in text


def test_a_reply_copying_a_source_label_is_cut_there():
    text, grounding, _ = run("How much is the Sloop per month?",
                             "Ahoy! [1] pricing-plans.md > Pricing > Server plans\nPlan: Sloop; vCPU: 2")
    assert "pricing-plans.md" not in text and grounding == "extractive" and "$14" in text


def test_a_reply_to_a_fact_without_figures_must_say_it():
    q = "Which plan has cores that are never shared with other customers?"
    text, grounding, _ = run(q, "Ahoy! The Galleon plan has dedicated vCPUs that are never shared [1].")
    assert grounding == "generated" and text == "Ahoy! The Galleon plan has dedicated vCPUs that are never shared [1]."
    text, grounding, _ = run(q, "Ahoy! That is a great plan for you.")
    assert grounding == "extractive" and "never shared with other customers [1]." in text


def test_a_command_in_backticks_must_be_written_as_the_documents_write_it():
    cli = Source("cli.md", "CLI", None, "c5", 0.8, text="CLI\nInstall the CLI with `brew install byteharbor/tap/bhc`.")
    text, grounding, bad = run("How do I install the CLI with Homebrew?", "Ahoy! Run `brew install bhc` [1].",
                               sources=(cli,))
    assert grounding == "extractive" and bad == ["`brew install bhc`"]
    assert "`brew install byteharbor/tap/bhc` [1]" in text
    text, grounding, _ = run("How do I install the CLI with Homebrew?",
                             "Ahoy! Run `brew install byteharbor/tap/bhc` [1].", sources=(cli,))
    assert grounding == "generated"


def test_a_fragment_left_before_a_leaked_label_is_not_sent():
    text, grounding, _ = run("How much is the Sloop per month?", "Ahoy! The pricing-plans.md document says $14.")
    assert grounding == "extractive" and not text.startswith("Ahoy! The Plan") and text.startswith("Ahoy! Plan: Sloop")


def test_a_reply_copying_a_flags_meaning_without_the_flag_gets_the_flag():
    """"Flag: `--debug`; Meaning: Print each HTTP request ...": a reply that copies the meaning but leaves out the flag
    has not answered "how do I make it print its requests?"; the flag is quoted."""
    cli = Source("cli.md", "CLI > Global flags", None, "c6", 0.8, text=(
        "CLI > Global flags\nFlag: `--debug`; Meaning: Print each HTTP request and response, with the token masked\n"
        "Flag: `--output json`; Meaning: Print results as JSON"))
    q = "how do I make the CLI print out every HTTP request it sends?"
    text, grounding, _ = run(q, "Ahoy! Print each HTTP request and response, with the token masked.", sources=(cli,))
    assert grounding == "extractive" and "`--debug`" in text
    text, grounding, _ = run(q, "Ahoy! Add `--debug` to print each HTTP request and response [1].", sources=(cli,))
    assert grounding == "generated" and text.count("--debug") == 1


def test_an_address_written_number_last_is_an_address():
    """"Rua da Ribeira Nova 42" is an address as much as "11 Keppel Bay Quay": a reply giving the other office's
    address shares only a "3" with it ("3º andar", "#07-03"), which had counted as stating it."""
    lisbon = Source("offices.html", "Offices > Lisbon", None, "c11", 0.7, text=(
        "Offices > Lisbon\nRua da Ribeira Nova 42, 3º andar, 1200-371 Lisboa, Portugal."))
    singapore = Source("offices.html", "Offices > Singapore", None, "c12", 0.6, text=(
        "Offices > Singapore\nThe office is at 11 Keppel Bay Quay, #07-03, Singapore."))
    text, grounding, _ = run("whats the address of the office there?",
                             "Ahoy! The address is 11 Keppel Bay Quay, #07-03, Singapore.", sources=(lisbon, singapore))
    assert grounding == "extractive" and "Rua da Ribeira Nova 42" in text
    assert asked_kinds("What's your postal address?")[0].search("Write to Byte Harbor Cloud Inc., PO Box 3142.")


def test_each_part_of_a_two_part_question_gets_its_answer_quoted():
    """"How often are the keys rotated, and what cipher protects data at rest?": the whole question's ranking leans to
    the rotation sentence and the cipher's sat below the runner-up share; each part's best sentence is quoted."""
    from rag.evidence import question_parts

    security = Source("security.pdf", "Security > Encryption", None, "c14", 0.7, text=(
        "Security > Encryption\nEach customer account has its own encryption keys, and the keys are rotated every 90 "
        "days. Rotation of the keys is automatic and needs no downtime for the keys. "
        "All disks are encrypted at rest with AES-256."))
    q = "How often are the encryption keys rotated, and what cipher protects data at rest?"
    assert question_parts(q) == ["How often are the encryption keys rotated", "what cipher protects data at rest?"]
    assert question_parts("thanks - and who's the CFO? (chief financial officer)") == [
        "thanks - and who's the CFO? (chief financial officer)"]  # "thanks -" is no part, nor the expansion
    text, grounding, _ = run(q, "Ahoy! The keys are rotated every 90 days [1].", sources=(security,))
    assert "90 days" in text and "AES-256" in text


def test_a_code_entry_is_quoted_whole():
    """An error code's entry says what it means and what to do: the remedy scored under the runner-up share."""
    errors = Source("error-codes.txt", "Errors > Networking", None, "c17", 0.6, text=(
        "Errors > Networking\nBH-7001  Too many requests. Slow down and retry after the Retry-After header.\n"
        "BH-7230  Port 25 blocked. Outbound SMTP on port 25 is blocked on new accounts to stop spam. Ask support to "
        "unblock it after 60 days of good standing, or send mail through port 587 with an email provider."))
    text, _, _ = run("Outgoing mail from my new server never leaves, SMTP on port 25 just times out. Is something "
                     "blocking it?", "Ahoy!", sources=(errors,))
    assert "blocked on new accounts" in text and "587" in text and "Too many requests" not in text


def test_the_questions_own_figures_state_nothing():
    """"Does v1 still work?" answered "The v1 endpoints are still working": the reply's "v1" is the question's, and the
    evidence ("v1 was retired ... answers 410 Gone") is not stated, so the quote answers."""
    api = Source("api.html", "API", None, "c16", 0.6, text=(
        "API\nVersion v1 was retired on 30 June 2023 and now answers every request with HTTP 410 Gone."))
    q = "We have an old integration still calling the v1 endpoints. Does that still work?"
    text, grounding, bad = run(q, "Ahoy! The v1 endpoints are still working [1].", sources=(api,))
    assert grounding == "extractive" and "still working" not in text and "410 Gone" in text and bad == ["~lead"]
    text, grounding, _ = run(q, "Ahoy! No: v1 was retired on 30 June 2023 and answers 410 Gone [1].", sources=(api,))
    assert grounding == "generated" and text.startswith("Ahoy! No: v1 was retired")


def test_a_question_about_a_code_is_answered_first_by_a_sentence_naming_it():
    """"What does error BH-3320 mean?": the model described the neighbouring row ("The bank refused the charge" is
    BH-3310), a sentence with no figure to check; the first sentence must name the code, else the quote answers."""
    errors = Source("error-codes.txt", "Errors > Billing", None, "c15", 0.6, text=(
        "Errors > Billing\nBH-3310  Payment method declined. The bank refused the charge.\n"
        "BH-3320  Account past due. An invoice is overdue, so creating new resources is blocked until it is paid."))
    q = "What does error BH-3320 mean?"
    text, grounding, bad = run(q, "Ahoy! The bank refused the charge [1].", sources=(errors,))
    assert grounding == "extractive" and "bank refused" not in text.split("BH-3320")[0] and "Account past due" in text
    assert bad == ["~bh-3320"]
    text, grounding, _ = run(q, "Ahoy! BH-3320 means your account is past due. New resources are blocked [1].",
                             sources=(errors,))
    assert text.startswith("Ahoy! BH-3320 means your account is past due. New resources are blocked [1].")


def test_a_short_answer_glued_to_the_best_sentence_is_quoted_with_it():
    """"Live service status is published at status.byteharbor.cloud." is short, so it is scored together with the
    sentence after it, which alone scored a little higher: the quote said where the page is hosted, not where it is.
    A table row stays alone (the sentence before a row is not part of it)."""
    from rag.evidence import Evidence
    from rag.guard import GuardedReply

    hosted = "The page is hosted with an outside provider, so it stays reachable during an outage."
    status = f"Live service status is published at status.byteharbor.cloud. {hosted}"
    reply = GuardedReply([Evidence(hosted, 1, 1.0, span=(1, 1)), Evidence(status, 1, 0.95, span=(0, 1))],
                         Context(status), "Ahoy!")
    text = reply.feed("") + reply.finish()
    assert "status.byteharbor.cloud" in text and text.count("outside provider") == 1
    row = "Service: Compute servers; Monthly uptime commitment: 99.95%"
    intro = f"Uptime is measured per calendar month. {row}"
    reply = GuardedReply([Evidence(row, 1, 1.0, span=(1, 1)), Evidence(intro, 1, 0.95, span=(0, 1))],
                         Context(intro), "Ahoy!")
    assert (reply.feed("") + reply.finish()).startswith(f"Ahoy! {row}")


def test_the_sentence_holding_the_figure_the_question_names_leads():
    """"my script keeps getting 429 errors ... how long am I supposed to wait?" asks about the 429: the sentence that
    holds it (the Retry-After header) answers, not the one carrying a duration ("suspended for one hour") that a
    "how long" otherwise puts first."""
    limits = Source("api-rate-limits.html", "API > Rate limits", None, "c13", 0.5, text=(
        "API > Rate limits\nClients that keep sending requests while limited for more than 10 minutes have their "
        "token suspended for one hour.\nWhen a limit is exceeded, the API answers HTTP 429 Too Many Requests with a "
        "Retry-After header giving the number of seconds to wait."))
    q = "my script keeps getting 429 errors from the api. how long am I supposed to wait before retrying?"
    # the embedder finds the 429 sentence closest, the suspension one close behind (as MiniLM did: 0.73 and 0.68)
    def embed(texts):
        return [[1.0, 0.0] if "429" in t else [0.8, 0.6] for t in texts]

    assert "Retry-After" in Guard(embed=embed).evidence(q, [limits])[0].text


def test_the_row_holding_the_code_the_question_names_leads():
    """"getting BH-4501 when i try to move my vm down to a smaller plan, whats wrong": the error table's BH-4501 row
    answers (qa_dev6 quoted how long a resize reboots, from the plans' page, that the embedder found nearer)."""
    errors = Source("error-codes.txt", "ERRORS > RESOURCES (4xxx)", None, "c20", 0.44, text=(
        "ERRORS > RESOURCES (4xxx)\nBH-4207  Server limit reached. Your account is at its maximum number of servers."
        "\nBH-4501  Resize not possible. The target plan's disk is smaller than the data on the server."))
    plans = Source("pricing-plans.md", "Plans > Changing plans", None, "c21", 0.37, text=(
        "Plans > Changing plans\nYou can resize a server to a larger plan at any time. Resizes cause a reboot that "
        "usually takes less than two minutes."))
    q = "getting BH-4501 when i try to move my vm down to a smaller plan, whats wrong"

    def embed(texts):  # the resize sentences nearest, as MiniLM has them
        return [[1.0, 0.0] if "resize" in t.lower() and "BH-" not in t else [0.8, 0.6] for t in texts]

    assert "smaller than the data" in Guard(embed=embed).evidence(q, [errors, plans])[0].text


def test_the_band_holding_the_value_the_question_names_answers():
    """"your monitoring says 97% uptime. What do I get back for that?": the band "below 99.0% but at least 95.0%"
    holds 97%, so its credit answers, not the sentence that repeats an uptime ("fra1 compute uptime is 98.7%"); the
    bands that do not hold it ("below 95.0%", "at least 99.0%") are no answer."""
    from rag.evidence import _in_band

    sla = Source("sla-and-credits.md", "SLA > Service credits", None, "c14", 0.5, text=(
        "SLA > Service credits\nIn March, fra1 compute uptime is 98.7% because of a network fault at the monitoring "
        "site.\n- Uptime below the commitment but at least 99.0%: 10% credit.\n- Uptime below 99.0% but at least "
        "95.0%: 25% credit.\n- Uptime below 95.0%: 50% credit."))
    q = "Frankfurt compute was really flaky last month, your monitoring says 97% uptime. What do I get back for that?"
    assert "25% credit" in Guard(embed=None).evidence(q, [sla])[0].text
    assert _in_band("Uptime below 99.0% but at least 95.0%: 25% credit.", 97.0)
    assert not _in_band("Uptime below 95.0%: 50% credit.", 97.0)
    assert not _in_band("Uptime below the commitment but at least 99.0%: 10% credit.", 97.0)
    assert not _in_band("Uptime is 98.7% in March.", 97.0)  # no band at all
