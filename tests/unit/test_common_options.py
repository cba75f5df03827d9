"""hostkv.common.options: the Cobbler options, the one set of boolean words, koan's transport."""
import os
import re

import pytest

from hostkv.common import options

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("value, expected", [
    ("1", True), ("true", True), ("YES", True), (" On ", True), ("y", True), ("Y", True), (True, True), (1, True),
    ("0", False), ("false", False), ("No", False), ("OFF", False), ("n", False), ("", False), (None, False),
    (False, False), (0, False),
])
def test_boolean_words(value, expected):
    assert options.parse_bool("hostkv_enabled", value) is expected


@pytest.mark.parametrize("value", ["maybe", "2", "enabled", "ja", 2.0, "t", "1 1"])
def test_anything_else_is_refused_with_the_one_message(value):
    with pytest.raises(options.OptionError) as err:
        options.parse_bool("hostkv_gpgcheck", value)
    assert str(err.value) == options.bool_problem("hostkv_gpgcheck", value) == (
        "hostkv_gpgcheck=%r is not a boolean word (use 1/true/yes/on/y or 0/false/no/off/n, any case; "
        "empty means no)" % str(value))


def test_the_snippet_carries_the_generated_word_block():
    """kickstart_snippets/hostkv_agent holds exactly snippet_block() (Cheetah cannot import Python);
    regenerate with `python3 -m hostkv.common.options --snippet kickstart_snippets/hostkv_agent`."""
    with open(os.path.join(REPO, "kickstart_snippets", "hostkv_agent")) as f:
        text = f.read()
    assert options.snippet_block() in text
    assert options.update_snippet(text) == text
    assert "'1', 'true', 'yes', 'on', 'y'" in options.snippet_block()


def test_vm_options_use_the_entry_rule_and_name_the_option():
    assert options.vm_values({"hostkv_vm_role": "web", "hostkv_vm_e": None, "tree": "x"}) == \
        {"vm.role": "web", "vm.e": ""}
    with pytest.raises(options.OptionError) as err:
        options.vm_values({"hostkv_vm_motd": "a\x01b"})
    assert str(err.value).startswith("hostkv_vm_motd (hostkv key vm.motd): value of vm.motd has U+0001")
    with pytest.raises(options.OptionError, match="257 hostkv_vm_. options, the limit is 256"):
        options.vm_values(dict(("hostkv_vm_k%d" % i, "v") for i in range(257)))


def test_parse_flattened():
    assert options.parse_flattened("a=1 b='x y' c hostkv_vm_q= ") == {"a": "1", "b": "x y", "c": None,
                                                                     "hostkv_vm_q": ""}
    assert options.parse_flattened("k=1 k=2") == {"k": ["1", "2"]}
    for empty in (None, "", "~", "<<inherit>>"):
        assert options.parse_flattened(empty) == {}
    with pytest.raises(options.OptionError, match="does not parse"):
        options.parse_flattened("k='open")


def test_host_options_set_host_keys_with_the_entry_rule():
    meta = {"hostkv_host_rack": "r7", "hostkv_host_row": 3, "hostkv_vm_role": "db", "other": "x",
            "hostkv_host_empty": None}
    assert options.host_values(meta) == {"host.rack": "r7", "host.row": "3", "host.empty": ""}
    assert options.vm_values(meta) == {"vm.role": "db"}
    for bad, message in (({"hostkv_host_r@ck": "1"}, "hostkv_host_r@ck (hostkv key host.r@ck)"),
                         ({"hostkv_host_motd": "a\x01"}, "U+0001"),
                         ({"hostkv_host_twice": ["a", "b"]}, "not text (given twice?)")):
        with pytest.raises(options.OptionError, match=re.escape(message)):
            options.host_values(bad)
    # the Cobbler validator knows the option (a typo of it is still refused)
    assert options.check_meta({"hostkv_host_rack": "r7", "hostkv_host_motd": " leading space ok"}) == []
    assert "hostkv_host_r@ck" in options.check_meta({"hostkv_host_r@ck": "1"})[0]
    assert "not a hostkv option" in options.check_meta({"hostkv_hosts_rack": "1"})[0]
