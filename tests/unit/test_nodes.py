"""Node ids: configured, or made once per state directory and kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcmd.config import Settings
from tcmd.errors import ConfigError
from tcmd.nodes import node_id


def test_a_made_node_id_is_kept_by_its_state_dir(tmp_path: Path) -> None:
    first = node_id(None, tmp_path / "a")
    assert first == node_id(None, tmp_path / "a")  # a restart keeps it
    assert first != node_id(None, tmp_path / "b")  # another daemon on this host differs
    assert node_id("rack-7", tmp_path / "a") == "rack-7"


@pytest.mark.parametrize("bad", ["has space", "x" * 65, "semi;colon", "{tag}"])
def test_a_bad_node_id_is_refused_naming_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"TCM_NODE_ID": bad})
    assert info.value.variable == "TCM_NODE_ID"


def test_redis_settings_are_checked() -> None:
    s = Settings.from_env({"TCM_REDIS_PREFIX": "team1:", "TCM_REDIS_OUTBOX": "1000"})
    assert (s.redis_prefix, s.redis_outbox) == ("team1:", 1000)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"TCM_REDIS_PREFIX": "a b"})
    assert info.value.variable == "TCM_REDIS_PREFIX"
