"""ribsr.errors: configuration and option errors share one base and one message layout."""

from __future__ import annotations

import pytest

from ribsr.config import ConfigError, SSTConfig
from ribsr.errors import ProblemsError
from ribsr.train.options import OptionsError, options_from_dict


def test_config_and_option_errors_are_problems_errors_listing_everything():
    with pytest.raises(ProblemsError) as config_info:
        SSTConfig(window_sizes=[8], num_heads=[2], ranks=[8], n_blocks=1, dim=-1, scale=0)
    assert isinstance(config_info.value, ConfigError) and len(config_info.value.problems) >= 2
    assert str(config_info.value).startswith("invalid SST configuration")
    with pytest.raises(ProblemsError) as options_info:
        options_from_dict({"scale": "x"}, source="o.yml")
    assert isinstance(options_info.value, OptionsError) and options_info.value.source == "o.yml"
    assert str(options_info.value).startswith("invalid training options in o.yml:\n  - ")
    assert isinstance(options_info.value, ValueError)
