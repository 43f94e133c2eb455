"""rag/answerable.py: the sources hold what a question asks for, said of what it names (a place's phone number, a
role's person), or the gate refuses. Unit cases on the documents' own shapes, then the real demo index."""

from __future__ import annotations

from rag.answerable import missing_contact

OFFICES = [
    "Office Locations > Halifax, Canada (headquarters)\nAddress: 88 Cable Wharf Road, Suite 400, Halifax\n"
    "Reception phone: +1 902 555 0188",
    "Office Locations > Singapore (Asia-Pacific office)\nAddress: 11 Keppel Bay Quay, #07-03, Singapore 098412\n"
    "Opened in March 2022, the Singapore office has 21 staff.",
    "Office Locations > Lisbon, Portugal (European office)\n"
    "Address: Rua da Ribeira Nova 42, 3º andar, 1200-371 Lisboa\n"
    "Opened in September 2019, the Lisbon office is home to 34 people and the data-protection officer.",
]
LEADERS = ["Company > Leadership\nName: Priya Lindgren; Role: Chief Financial Officer; Joined: 2016",
           "Support > Harbor Priority\nHarbor Priority adds a named technical account manager after six months."]


def test_a_contact_must_be_written_for_the_place_the_question_names():
    # Halifax's reception phone is no answer for Singapore's, nor for Lisbon's
    assert missing_contact("What's the phone number for the Singapore office reception?", OFFICES)
    assert missing_contact("What's the phone number for the Lisbon office?", OFFICES)
    assert not missing_contact("What's the reception phone number for your Halifax office?", OFFICES)
    assert not missing_contact("What's your office's phone number?", OFFICES)  # names no place: any one answers
    assert not missing_contact("What's the street address of your Singapore office?", OFFICES)


def test_a_follow_up_asks_what_the_turn_before_asked():
    """"and the lisbon office?" after a phone question asks for Lisbon's phone number."""
    before = "What's the reception phone number for your Halifax office?"
    assert missing_contact("and the number for the lisbon office?", OFFICES, asked=f"{before} and the lisbon office?")
    assert not missing_contact("and for halifax?", OFFICES, asked=f"{before} and for halifax?")
    assert not missing_contact("and the number for the lisbon office?", OFFICES)  # alone it asks for no phone


def test_a_person_asked_by_role_must_be_named_with_that_role():
    assert missing_contact("What's the name of your data-protection officer?", LEADERS + OFFICES)
    assert missing_contact("Who is Byte Harbor's chief marketing officer?", LEADERS)
    assert missing_contact("what's the name of the account manager I'd get?", LEADERS)
    assert not missing_contact("Who is your chief financial officer?", LEADERS)
    assert not missing_contact("What's the name of your finance officer?", LEADERS)  # finance ~ financial
    # an address's "da Ribeira Nova" is no person named beside the officer
    assert missing_contact("who's the data protection officer?", OFFICES)
    # "who is the owner?" asks what the owner role may do, not for a person
    assert not missing_contact("Who is the owner of a team account?", ["Owner – one per account; full control."])
