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
