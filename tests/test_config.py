"""Config validation: every bad value names FILE:LINE:COL, the key path and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrackd.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
GOOD = """\
ami:
  username: ctrackd
  secret: s3cret
store:
  path: calls.sqlite3
defaults:
  forward_to: PJSIP/office
channels:
  google:
    label: Google Ads
numbers:
  "+74950000001":
    channel: google
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_is_valid() -> None:
    config = load_config(ROOT / "config" / "ctrackd.example.yaml")
    assert config.store.path == (ROOT / "var" / "ctrackd.sqlite3")
    assert config.agi.host == "127.0.0.1" and config.agi.port == 4573
    assert "+74950000003" in config.numbers            # written as 84950000003
    assert config.channels["yandex-direct"].label == "Яндекс.Директ"
    assert "change-me" not in repr(config.ami)          # the secret stays out of logs


def test_defaults_and_relative_store_path(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.store.path == tmp_path / "calls.sqlite3"
    assert (config.ami.host, config.ami.port) == ("127.0.0.1", 5038)
    assert config.defaults.ring_timeout == 30
    assert config.phone_region == "RU"
    plan = config.static_plan()
    assert plan.numbers["+74950000001"].channel == "google"


@pytest.mark.parametrize("old, new, where, message", [
    ("  secret: s3cret\n", "  secret: s3cret\n  prot: 5038\n", "4:3",
     "ami.prot: expected one of the keys"),
    ("  forward_to: PJSIP/office\n", "  forward_to: PJSIP/office,tT\n", "7:15",
     "defaults.forward_to: expected a Dial string"),
    ("    channel: google\n", "    channel: gogle\n", "13:14",
     "numbers.+74950000001.channel: expected one of the channels (google), found 'gogle'"),
    ('  "+74950000001":\n', '  "hello":\n', "12:3",
     "numbers: expected a phone number (DID)"),
    ("  forward_to: PJSIP/office\n", "  forward_to: PJSIP/office\n  ring_timeout: soon\n", "8:17",
     "defaults.ring_timeout: expected a whole number from 1 to 600, found 'soon'"),
    ("  forward_to: PJSIP/office\n", "  forward_to: PJSIP/office\n  ring_timeout: 0\n", "8:17",
     "defaults.ring_timeout: expected a whole number from 1 to 600, found 0"),
    ("  username: ctrackd\n", "", "2:3", "ami.username: expected this required key"),
    ("    label: Google Ads\n", "    label: Google Ads\n    lable: x\n", "11:5",
     "channels.google.lable: expected one of the keys"),
    ('numbers:\n  "+74950000001":\n    channel: google\n',
     'numbers:\n  "+74950000001":\n    channel: google\n  "84950000001":\n    channel: google\n',
     "14:3", "numbers.84950000001: expected each number once (it is +74950000001, already at "
     "line 12)"),
    ("ami:\n", "ami:\n  port: 5038\n  port: 5039\n", "3:3",
     "ami.port: expected each key once (first at line 2)"),
    ("store:\n  path: calls.sqlite3\n", "store:\n  path: [a, b]\n", "5:9",
     "store.path: expected a text value, found a list"),
    ("defaults:\n", "phone_region: XX\ndefaults:\n", "6:15",
     "phone_region: expected a two-letter region code"),
    ("ami:\n  username: ctrackd\n", "ami:\n  username: ctrackd\n  host: [x\n", "4:9",
     "invalid YAML"),
])
def test_bad_config_points_at_the_line(tmp_path: Path, old: str, new: str, where: str,
                                       message: str) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    text = str(raised.value)
    assert text.startswith(f"{path}:"), text
    assert message in text, text
    if where:
        line = where.split(":")[0]
        assert text.split(":")[1] == line, text


@pytest.mark.parametrize("text, message", [
    ("", "expected a mapping of settings, found an empty file"),
    ("- a\n- b\n", "expected a mapping, found a list"),
])
def test_not_a_config_at_all(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


DYNAMIC = GOOD.replace("channels:\n", "channels:\n  yandex:\n    label: Яндекс.Директ\n") + """\
pools:
  site:
    numbers: ["+74950000101", "84950000102"]
    hold_seconds: 600
    overflow: "+74950000199"
    channel: google
utm_rules:
  - {source: yandex, medium: cpc, channel: yandex}
web:
  listen: "127.0.0.1:0"
  origins: ["https://shop.example.com"]
  replace: ["+7 (495) 123-45-67"]
"""


def test_dynamic_sections(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, DYNAMIC))
    (pool,) = config.pools
    assert pool.numbers == ("+74950000101", "+74950000102")
    assert (pool.hold_seconds, pool.grace_seconds, pool.overflow) == (600, 3600, "+74950000199")
    assert pool.channel == "google"
    assert config.utm_rules[0].channel == "yandex" and config.utm_rules[0].source == "yandex"
    assert config.web is not None
    assert config.web.origins == ("https://shop.example.com",)
    assert config.web.replace == ("+74951234567",)
    assert (config.web.host, config.web.port, config.web.heartbeat_seconds) == ("127.0.0.1", 0, 30)


def test_web_is_off_by_default(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, GOOD)).web is None


@pytest.mark.parametrize("extra, message", [
    ('pools:\n  site:\n    numbers: ["+74950000001"]\n',
     "pools.site.numbers: expected a number used once (it is +74950000001, already in numbers)"),
    ('pools:\n  site:\n    numbers: []\n', "pools.site.numbers: expected a list of phone numbers"),
    ('pools:\n  site:\n    numbers: ["+74950000101"]\n    overflow: everyone\n',
     "pools.site.overflow: expected a phone number"),
    ('pools:\n  site:\n    numbers: ["+74950000101"]\n    channel: nope\n',
     "pools.site.channel: expected one of the channels (google), found 'nope'"),
    ('pools:\n  a:\n    numbers: ["+74950000101"]\n  b:\n    numbers: ["84950000101"]\n',
     "pools.b.numbers: expected a number used once (it is +74950000101, already in pools.a)"),
    ('utm_rules:\n  - {source: yandex, channel: nope}\n',
     "utm_rules[0].channel: expected one of the channels (google)"),
    ('utm_rules:\n  - {channel: google}\n',
     "utm_rules[0]: expected at least one of source, medium, campaign"),
    ('web:\n  origins: ["shop.example.com"]\n  replace: ["+74951234567"]\n',
     "web.origins: expected an origin such as https://example.com"),
    ('web:\n  origins: ["https://a.ru"]\n  replace: ["+74951234567"]\n  rate_limit: {burst: 0}\n',
     "web.rate_limit.burst: expected a whole number from 1 to 100000, found 0"),
])
def test_bad_dynamic_sections(tmp_path: Path, extra: str, message: str) -> None:
    path = write(tmp_path, GOOD + extra)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert message in str(raised.value), str(raised.value)
    assert str(raised.value).startswith(f"{path}:")


def test_an_overflow_number_must_not_be_a_pool_number(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + 'pools:\n  a:\n    numbers: ["+74950000101"]\n'
                 '    overflow: "+74950000201"\n  b:\n    numbers: ["+74950000201"]\n')
    with pytest.raises(ConfigError, match=r":17:15: pools.a.overflow: expected a number in no "
                                          r"pool \(it is \+74950000201, in pools.b\)"):
        load_config(path)


def test_web_without_pools_serves_promo_codes_only(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD + 'web:\n  origins: ["https://a.ru"]\n'))
    assert config.web is not None and config.pools == () and config.web.replace == ()


@pytest.mark.parametrize("extra, message", [
    ('pools:\n  p:\n    numbers: ["+74950000101"]\n    hold_seconds: 30\n'
     'web:\n  origins: ["https://a.ru"]\n  replace: ["+74951234567"]\n',
     "web.heartbeat_seconds: expected at most half of every pool's hold_seconds"),
])
def test_web_needs_pools_that_hold_across_heartbeats(tmp_path: Path, extra: str,
                                                     message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, GOOD + extra))


def test_origins_are_kept_as_browsers_send_them(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD + 'pools:\n  p:\n    numbers: ["+74950000101"]\n'
                               'web:\n  origins: ["https://Shop.Example.com:443", '
                               '"http://a.ru:8080"]\n  replace: ["+74951234567"]\n'))
    assert config.web.origins == ("https://shop.example.com", "http://a.ru:8080")


def test_pools_need_numbers_to_replace(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="web.replace: expected the office number"):
        load_config(write(tmp_path, GOOD + 'pools:\n  p:\n    numbers: ["+74950000101"]\n'
                          'web:\n  origins: ["https://a.ru"]\n'))


def test_recordings_dir_must_be_absolute(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="recordings.dir: expected an absolute path"):
        load_config(write(tmp_path, GOOD + "recordings:\n  dir: monitor\n"))


@pytest.mark.parametrize("extra, message", [
    ('metrics: {listen: "127.0.0.1:4573"}\n',
     r"metrics.listen: expected an address other than agi.listen's"),
    ("spend: {currency: USD}\nexports: {currency: RUB, value: 100}\n",
     r"spend.currency: expected the currency of exports \(RUB\)"),
])
def test_settings_wrong_together_are_caught_by_check_config(tmp_path: Path, extra: str,
                                                            message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, GOOD + extra))
