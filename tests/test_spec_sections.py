from phoenix_ref.spec_sections import check_section, headings, slugify


def test_slugify_like_mdbook():
    assert slugify("Federated QS-to-QS communication") == "federated-qs-to-qs-communication"
    assert slugify("Publicly avaliable endpoints") == "publicly-avaliable-endpoints"
    assert slugify("Get AS credentials") == "get-as-credentials"


def test_repeated_headings_numbered():
    assert headings("# A\n## Authentication\n```\n# not a heading\n```\n## Authentication\n") == [
        "a", "authentication", "authentication-1"]


def test_known_and_unknown_sections():
    assert check_section("spec/queuing_service.md#federated-qs-to-qs-communication") is None
    assert check_section("spec/authentication_service.md#get-as-credentials") is None
    assert "no heading" in check_section("spec/queuing_service.md#federated-enqueue-message")
    assert "no spec file" in check_section("spec/nope.md#x")


# --- requirement sentences -----------------------------------------------------------------

from phoenix_ref.spec_sections import parse_sections, requirement_sentences, sentence_level  # noqa: E402


def test_rfc2119_words_in_either_case():
    assert sentence_level("The DS MUST NOT store it.") == "MUST"
    assert sentence_level("the ds must reject it") == "MUST"
    assert sentence_level("It SHALL be signed.") == "MUST"
    assert sentence_level("A token is required.") == "MUST"
    assert sentence_level("The client has to query this first.") == "MUST"
    assert sentence_level("Clients have to provide the token.") == "MUST"
    assert sentence_level("It should be removed.") == "SHOULD"
    assert sentence_level("This is RECOMMENDED.") == "SHOULD"
    assert sentence_level("Clients MAY provide a push token.") == "MAY"
    assert sentence_level("This field is OPTIONAL.") == "MAY"
    assert sentence_level("It should, and must, be so.") == "MUST"     # the strongest wins
    assert sentence_level("The DS checks the signature.") is None
    assert sentence_level("The mustard is yellow; a shallow hashtag.") is None   # whole words only


def test_prose_that_makes_no_requirement():
    # a released duty reads as OPTIONAL
    assert sentence_level("The display name does not have to be unique.") == "MAY"
    assert sentence_level("No additional authentication is required for this endpoint.") == "MAY"
    # a guess, and "required" used as a description
    assert sentence_level("The remote AS might have to fetch the key material.") is None
    assert sentence_level("Both QS and DS provide endpoints required for distribution.") is None
    assert sentence_level("Key material as required for the server to run OPAQUE.") is None
    # a restriction with "may only" forbids everything else
    assert sentence_level("Credentials may only sign credentials within their validity.") == "MUST"


def test_sentences_are_split_and_quoted_without_list_markers():
    text = ("Intro text. The DS must reject it, e.g. a stale commit. Then it stops.\n\n"
            "* If the store is non-empty, the next commit\n  must be an update.\n"
            "| Integrity | The homeserver must check the config |\n")
    assert requirement_sentences(text) == [
        ("MUST", "The DS must reject it, e.g. a stale commit."),
        ("MUST", "If the store is non-empty, the next commit must be an update."),
        ("MUST", "| Integrity | The homeserver must check the config |"),
    ]


def test_a_section_holds_its_subsections_but_its_own_text_does_not():
    text = ("# Top\nIntro.\n## A\nIt should work.\n### A1\nIt must work.\n## B\nPlain.\n"
            "```\n# not a heading\nstruct X { must: u8 }  // must not count\n```\n")
    secs = {s.slug: s for s in parse_sections("x.md", text)}
    assert secs["a"].level() == "MUST" and secs["a"].level(own=True) == "SHOULD"
    assert secs["top"].level() == "MUST" and secs["top"].level(own=True) == "informative"
    assert secs["a1"].level() == "MUST"
    # code blocks are not prose: their "must" and "# heading" do not count
    assert secs["b"].level() == "informative" and "not a heading" not in secs["b"].text()
    assert secs["a1"].id == "x.md#a1"
