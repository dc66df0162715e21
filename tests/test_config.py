"""Config (TOML), generate-config, the keystore on disk, and restarts."""

import gc
import stat
import tomllib
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from phoenix_ref.cli import generate_config, main
from phoenix_ref.codec import decode
from phoenix_ref.config import Config, ConfigError, Limits, OperatorSettings, Performance
from phoenix_ref.credentials import AsCredentialsResponse
from phoenix_ref.queuing.messages import QsVerifyingKeyResponse
from phoenix_ref.homeserver import Homeserver, normalise_host
from phoenix_ref.keystore import Keystore, KeystoreError
from phoenix_ref.spec_plugin import spec


def _config(tmp_path: Path, **kw) -> Config:
    return Config(domain="a.example", data_dir=tmp_path / "data", keys_dir=tmp_path / "keys", **kw)


def test_toml_round_trip(tmp_path):
    cfg = _config(tmp_path, listen_port=8444, tls_cert=tmp_path / "cert.pem", tls_key=tmp_path / "key.pem",
                  ca_bundle=Path("/etc/ssl/ca.pem"), well_known={"qs": "https://qs.a.example:9000"},
                  discovery={"b.example": {s: f"https://{s}.b.example:8445" for s in ("as", "ds", "qs")}},
                  listen_host='we"ird\\', resolve={"as.b.example": "127.0.0.1:8445"},
                  federation_allow=("b.example",), federation_deny=("spam.example",),
                  limits=Limits(max_body_bytes=1234, request_timeout_s=2.5),
                  performance=Performance(gc_thresholds=(1000, 15, 12)))
    text = cfg.to_toml(base=tmp_path)
    tomllib.loads(text)                         # valid TOML
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert Config.load(path) == cfg
    assert 'data_dir = "data"' in text           # paths inside the directory stay relative


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.toml"
    path.write_text('domain = "A.Example."\n[tls]\ncert = "../c.pem"\n')
    cfg = Config.load(path)
    assert cfg.domain == "a.example"
    assert cfg.tls_cert == (tmp_path / "c.pem").resolve()
    assert cfg.data_dir == (tmp_path / "sub" / "data").resolve()


@pytest.mark.parametrize("text, needle", [
    ("", "domain"),
    ('domain = "not a domain"', "domain"),
    ('domain = "a.example"\n[listen]\nport = "80"', "listen.port"),
    ('domain = "a.example"\n[listen]\nport = true', "listen.port"),
    ('domain = "a.example"\n[limits]\nbogus = 1', "bogus"),
    ('domain = "a.example"\n[discovery."b.example"]\nas = "https://as.b.example"', "discovery"),
    ('domain = "a.example"\n[well_known]\nxx = "https://x.a.example"', "well_known"),
    ("domain = [", "config.toml"),
    ('domain = "a.example"\n[resolve]\n"as.b.example" = "127.0.0.1"', "resolve"),
    ('domain = "a.example"\n[discovery."b.example"]\nas = "http://as.b.example"\n'
     'ds = "https://ds.b.example"\nqs = "https://qs.b.example"', "https"),
    ('domain = "a.example"\n[performance]\nbogus = 1', "performance: unknown keys"),
    *((f'domain = "a.example"\n[performance]\ngc_thresholds = {bad}', "performance.gc_thresholds")
      for bad in ("[0, 20, 20]", "[50000, 20]", "[50000, 20, 20, 1]", "50000", '"50000, 20, 20"',
                  "[50000, -1, 20]", "[1.5, 20, 20]", "[true, 20, 20]", "[2147483648, 20, 20]")),
    ('domain = "a.example"\n[operator]\nbogus = 1', "operator: unknown keys"),
    ('domain = "a.example"\noperator = "127.0.0.1:9464"', "operator: expected a table"),
    *((f'domain = "a.example"\n[operator]\nmetrics_listen = {bad}', "operator.metrics_listen")
      for bad in ('"0.0.0.0:9464"', '"10.1.2.3:9464"', '"[::]:9464"', '"[2001:db8::1]:9464"',   # not loopback
                  '"localhost:9464"', '"metrics.a.example:9464"',                              # not an address
                  '"127.0.0.1"', '"127.0.0.1:"', '"127.0.0.1:0"', '"127.0.0.1:65536"', '"127.0.0.1:x"',
                  '"::1:9464"', '""', "9464", "true", '["127.0.0.1:9464"]')),
    ('domain = "a.example"\n[listen]\nport = 9464\n[operator]\nmetrics_listen = "127.0.0.1:9464"',
     "operator.metrics_listen: .* public listener"),
])
def test_bad_config_is_a_config_error(tmp_path, text, needle):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        Config.load(path)


@pytest.mark.parametrize("given, stored", [("127.0.0.1:9464", "127.0.0.1:9464"), ("127.8.9.10:1", "127.8.9.10:1"),
                                           ("[::1]:9464", "[::1]:9464"),
                                           ("[0:0:0:0:0:0:0:1]:9464", "[::1]:9464")])
def test_metrics_listen_takes_a_loopback_address(tmp_path, given, stored):
    cfg = _config(tmp_path, operator=OperatorSettings(metrics_listen=given))
    assert cfg.operator.metrics_listen == stored
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml(base=tmp_path))
    assert Config.load(path) == cfg
    assert f'metrics_listen = "{stored}"' in path.read_text().splitlines()
    # another port on the public listener's address is fine
    _config(tmp_path, listen_host="127.0.0.1", listen_port=9465, operator=OperatorSettings(metrics_listen=given))


def test_federation_allow_and_deny_lists(tmp_path):
    assert _config(tmp_path).federates_with("b.example")
    cfg = _config(tmp_path, federation_deny=("spam.example",))
    assert not cfg.federates_with("SPAM.example") and cfg.federates_with("b.example")
    cfg = _config(tmp_path, federation_allow=("b.example",))
    assert cfg.federates_with("b.example") and not cfg.federates_with("c.example")


def test_announced_urls(tmp_path):
    assert _config(tmp_path, listen_port=443).announced_urls()["as"] == "https://as.a.example"
    urls = _config(tmp_path, listen_port=8443, well_known={"ds": "https://ds.x.example"}).announced_urls()
    assert urls == {"as": "https://as.a.example:8443", "ds": "https://ds.x.example",
                    "qs": "https://qs.a.example:8443"}


def test_generate_config_writes_keys_certificate_and_refuses_to_overwrite(tmp_path):
    cfg = generate_config(tmp_path / "a", "a.example", port=8443, test_ca=True,
                          peers={"b.example": 8444})
    assert Config.load(tmp_path / "a" / "config.toml") == cfg
    assert cfg.resolve["qs.b.example"] == "127.0.0.1:8444"
    keys = sorted(p.name for p in cfg.keys_dir.iterdir())
    assert keys == ["as_credential-1.cred", "as_credential-1.key", "as_intermediate-1.cred",
                    "as_intermediate-1.key", "ds_signing-1.key", "privacy_pass_counter-1.key", "qs_outbound-1.key",
                    "qs_queue_config-1.key", "qs_signing-1.key"]
    for p in [*cfg.keys_dir.glob("*.key"), cfg.tls_key, tmp_path / "a" / "ca-key.pem"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    cert = x509.load_pem_x509_certificate(cfg.tls_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {
        "a.example", "as.a.example", "ds.a.example", "qs.a.example"}
    with pytest.raises(ConfigError, match="exists"):
        generate_config(tmp_path / "a", "a.example")


def test_cli_generate_config_and_bad_serve(tmp_path, capsys):
    assert main(["generate-config", "--domain", "b.example", "--dir", str(tmp_path / "b"), "--test-ca",
                 "--test-ca-dir", str(tmp_path / "ca"), "--peer", "a.example=8443"]) == 0
    assert (tmp_path / "ca" / "ca.pem").exists() and (tmp_path / "b" / "cert.pem").exists()
    (tmp_path / "broken.toml").write_text('domain = "c.example"\n')
    assert main(["serve", "--config", str(tmp_path / "broken.toml")]) == 2
    assert "keys" in capsys.readouterr().err


def test_keystore_load_rejects_missing_or_foreign_material(tmp_path):
    Keystore.create(tmp_path / "k", "a.example", 1_767_225_600_000)
    assert Keystore.load(tmp_path / "k", "a.example").as_credentials
    with pytest.raises(KeystoreError, match="b.example"):
        Keystore.load(tmp_path / "k", "b.example")
    with pytest.raises(KeystoreError, match="already"):
        Keystore.create(tmp_path / "k", "a.example", 0)
    (tmp_path / "k" / "ds_signing-1.key").unlink()
    with pytest.raises(KeystoreError, match="ds_signing"):
        Keystore.load(tmp_path / "k", "a.example")
    (tmp_path / "k" / "qs_signing-1.key").write_text("zz")
    with pytest.raises(KeystoreError):
        Keystore.load(tmp_path / "k", "a.example")


def test_keystore_outbound_secret_rotates_and_is_added_to_an_older_keys_directory(tmp_path):
    ks = Keystore.create(tmp_path / "k", "a.example", 1_767_225_600_000)
    first = ks.qs_outbound_secrets[0]
    second = ks.rotate_outbound_secret()
    assert Keystore.load(tmp_path / "k", "a.example").qs_outbound_secrets == [second, first]
    for n in (1, 2):   # a keys directory written before the outbound queues were sealed
        (tmp_path / "k" / f"qs_outbound-{n}.key").unlink()
    loaded = Keystore.load(tmp_path / "k", "a.example")
    assert len(loaded.qs_outbound_secrets) == 1 and (tmp_path / "k" / "qs_outbound-1.key").stat().st_mode & 0o077 == 0
    (tmp_path / "k" / "qs_outbound-1.key").write_text("00ff")
    with pytest.raises(KeystoreError, match="32 bytes expected"):
        Keystore.load(tmp_path / "k", "a.example")


def test_keystore_counter_secret_survives_reloading_and_is_added_to_an_older_keys_directory(tmp_path):
    """The secret that names the Privacy Pass issuance counters
    (docs/storage.md, "Privacy Pass store"): the same after a restart, or every window
    would restart with it."""
    ks = Keystore.create(tmp_path / "k", "a.example", 1_767_225_600_000)
    assert len(ks.counter_secret) == 32
    assert Keystore.load(tmp_path / "k", "a.example").counter_secret == ks.counter_secret
    (tmp_path / "k" / "privacy_pass_counter-1.key").unlink()   # a keys directory of an earlier version
    loaded = Keystore.load(tmp_path / "k", "a.example")
    assert loaded.counter_secret != ks.counter_secret
    assert (tmp_path / "k" / "privacy_pass_counter-1.key").stat().st_mode & 0o077 == 0
    (tmp_path / "k" / "privacy_pass_counter-1.key").write_text("00ff")
    with pytest.raises(KeystoreError, match="32 bytes expected"):
        Keystore.load(tmp_path / "k", "a.example")


@pytest.mark.parametrize("header, host", [
    ("AS.A.example:8443", "as.a.example"), ("qs.a.example.", "qs.a.example"),
    ("[::1]:443", "unknown.invalid"), ("ds..a.example", "unknown.invalid"), ("", "unknown.invalid"),
])
def test_host_header_normalisation(header, host):
    assert normalise_host(header) == host


async def _get(hs: Homeserver, url: str) -> bytes:
    async with hs.app.running():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hs.asgi)) as c:
            resp = await c.get(url)
            assert resp.status_code == 200
            return resp.content


async def test_key_material_and_revocations_survive_a_restart(tmp_path):
    cfg = generate_config(tmp_path / "a", "a.example")
    first = Homeserver(Config.load(tmp_path / "a" / "config.toml"))
    async with first.app.running():
        revoked = await first.operator.revoke_intermediate()
        await first.operator.rotate_qs_signing_key()
        qs_before = [k.public for k in first.keystore.qs_signing_keys]
        inters_before = [c for c, _ in first.keystore.as_intermediates]
    second = Homeserver(Config.load(tmp_path / "a" / "config.toml"))      # a new process, same files
    answer = decode(AsCredentialsResponse, await _get(second, "https://as.a.example/phoenix/v1/as_credentials"))
    assert answer.revoked_certs == [revoked]
    assert answer.as_intermediate_credentials == inters_before and len(inters_before) == 2
    qs = decode(QsVerifyingKeyResponse, await _get(second, "https://qs.a.example/phoenix/v1/qs_verifying_key"))
    assert qs.verifying_keys == qs_before and len(qs_before) == 2
    assert cfg.domain == "a.example"


def test_keystore_renews_the_intermediate_near_its_end_but_never_past_the_as_credential(tmp_path):
    from phoenix_ref.keystore import DAY_MS, INTERMEDIATE_RENEW_MS, INTERMEDIATE_VALIDITY_MS
    t0 = 1_767_225_600_000
    ks = Keystore.create(tmp_path / "k", "a.example", t0)
    end = ks.as_intermediates[0][0].expiration_data.not_after
    assert end == t0 + INTERMEDIATE_VALIDITY_MS
    assert not ks.intermediate_due(end - INTERMEDIATE_RENEW_MS)
    soon = end - INTERMEDIATE_RENEW_MS + 1
    assert ks.intermediate_due(soon)
    new = ks.issue_intermediate(soon)
    assert not ks.intermediate_due(soon) and new.expiration_data.not_after == soon + INTERMEDIATE_VALIDITY_MS
    assert Keystore.load(tmp_path / "k", "a.example").as_intermediates[0][0] == new
    # near the AS credential's end a new intermediate would not last longer: nothing to do
    root_end = ks.as_credentials[0][0].expiration_data.not_after
    ks.issue_intermediate(root_end - 10 * DAY_MS)
    assert not ks.intermediate_due(root_end - 5 * DAY_MS)


def test_the_default_garbage_collector_thresholds(tmp_path):
    """Absent from the file, the thresholds are (50 000, 20, 20) (docs/decisions.md)."""
    path = tmp_path / "config.toml"
    path.write_text('domain = "a.example"\n')
    assert Config.load(path).performance.gc_thresholds == (50_000, 20, 20)


async def test_a_started_homeserver_applies_the_configured_garbage_collector_thresholds(tmp_path):
    generate_config(tmp_path / "a", "a.example")
    path = tmp_path / "a" / "config.toml"
    text = path.read_text()
    assert "[performance]\ngc_thresholds = [50000, 20, 20]" in text   # written with its default
    path.write_text(text.replace("gc_thresholds = [50000, 20, 20]", "gc_thresholds = [1234, 11, 9]"))
    hs = Homeserver(Config.load(path))
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        async with hs.app.running():
            assert gc.get_threshold() == (1234, 11, 9)
    finally:
        gc.set_threshold(*before)


# --- every setting typed and range-checked at load ----------------------------------------------
# spec/threat_model/stride/security_requirements/operators.md#homeserver-management:
# "The homeserver must perform checks to ensure the configuration is valid".

_BASE = 'domain = "a.example"\n'


@spec("threat_model/stride/security_requirements/operators.md#homeserver-management", "MUST")
@pytest.mark.parametrize("text, key, expected", [
    # [limits]: wrong type, out of range, each kind once
    ('[limits]\ntoken_allowance = "x"', "limits.token_allowance", "an integer"),
    ("[limits]\ntoken_allowance = -5", "limits.token_allowance", "from 1"),
    ("[limits]\ntoken_allowance = 1.5", "limits.token_allowance", "an integer"),
    ("[limits]\ntoken_allowance = true", "limits.token_allowance", "an integer"),
    ("[limits]\nmax_body_bytes = 0", "limits.max_body_bytes", "from 1024"),
    ("[limits]\nas_max_messages = 1000000000", "limits.as_max_messages", "to 100000"),
    ("[limits]\nrequest_timeout_s = 0", "limits.request_timeout_s", "a number"),
    ('[limits]\nrequest_timeout_s = "10"', "limits.request_timeout_s", "a number"),
    ("[limits]\nfederation_retry_base_s = 500.0", "limits.federation_retry_base_s", "federation_retry_max_s"),
    ("[limits]\ntoken_allowence = 5", "limits", "token_allowence"),
    ("limits = 5", "limits", "a table"),
    # [listen]
    ("[listen]\nport = 99999", "listen.port", "1 to 65535"),
    ("[listen]\nport = 0", "listen.port", "1 to 65535"),
    ('[listen]\nhost = ""', "listen.host", "empty"),
    ("[listen]\nhots = 1", "listen", "hots"),
    # domains: refused when not an FQDN
    ('[federation]\ndeny = ["not a domain"]', "federation.deny", "not a domain"),
    ("[federation]\ndeny = [5]", "federation.deny", "domain name"),
    ('[federation]\ndeny = "b.example"', "federation.deny", "a list"),
    ('[federation]\nallow = ["localhost"]', "federation.allow", "two labels"),
    ('[federation]\nallow = ["-b.example"]', "federation.allow", "hyphen"),
    ('[federation]\nallow = ["b..example"]', "federation.allow", "empty label"),
    ('[federation]\nblock = ["b.example"]', "federation", "block"),
    ('[discovery."b_example"]\nas = "https://as.b.example"\nds = "https://ds.b.example"\n'
     'qs = "https://qs.b.example"', "discovery", "b_example"),
    ('[discovery."b.example"]\nas = "https://as.b.example/x"\nds = "https://ds.b.example"\n'
     'qs = "https://qs.b.example"', "discovery.b.example.as", "without path"),
    ('[discovery."b.example"]\nas = "https://as.b.example:99999"\nds = "https://ds.b.example"\n'
     'qs = "https://qs.b.example"', "discovery.b.example.as", "HOST[:PORT]"),
    ('[well_known]\nas = "https://"', "well_known.as", "HOST[:PORT]"),
    ('[well_known]\nenabled = "yes"', "well_known.enabled", "true or false"),
    ('[resolve]\n"as.b.example:http" = "127.0.0.1:1"', "resolve", "HOST:PORT"),
    ('[resolve]\n"as.b.example" = "127.0.0.1:0"', "resolve.as.b.example", "ADDRESS:PORT"),
    ('[tls]\ncert = 5', "tls.cert", "a string"),
    ('listne = 1', "unknown keys", "listne"),
])
def test_each_kind_of_mistake_is_one_clear_config_error(tmp_path, capsys, text, key, expected):
    path = tmp_path / "config.toml"
    path.write_text(_BASE + text + "\n")
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    message = str(info.value)
    assert key in message and expected in message, message
    assert "\n" not in message
    # `phoenix-ref serve` says the same in one line and exits 2, before touching keys or network
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"phoenix-ref: {message}\n"


@spec("threat_model/stride/security_requirements/operators.md#homeserver-management", "MUST")
def test_domains_in_the_config_are_normalised(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('domain = "A.Example."\n[federation]\ndeny = ["b.example.", "SPAM.Example", "Bücher.example"]\n'
                    'allow = []\n[discovery."C.Example."]\nas = "https://as.c.example"\nds = "https://ds.c.example"\n'
                    'qs = "https://qs.c.example"\n[resolve]\n"AS.C.Example.:8445" = "127.0.0.1:8445"\n')
    cfg = Config.load(path)
    assert cfg.domain == "a.example"
    assert cfg.federation_deny == ("b.example", "spam.example", "xn--bcher-kva.example")
    assert set(cfg.discovery) == {"c.example"} and set(cfg.resolve) == {"as.c.example:8445"}
    for denied in ("b.example", "B.EXAMPLE.", "spam.example", "xn--bcher-kva.example"):
        assert not cfg.federates_with(denied), denied
    assert cfg.federates_with("c.example")
    # the QS core gets the normalised lists too
    from phoenix_ref.homeserver import qs_config
    from phoenix_ref.ids import Fqdn
    assert Fqdn("b.example") in qs_config(cfg).federation_deny
    # and a normalised config survives its own TOML
    out = tmp_path / "again.toml"
    out.write_text(cfg.to_toml(base=tmp_path))
    assert Config.load(out) == cfg
