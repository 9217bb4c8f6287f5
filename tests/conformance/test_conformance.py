"""One test body over the whole registry: every registered mixer, every check."""
import pytest

import rnnlab
from tests.conformance.checks import CHECKS, factory


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("name", rnnlab.available_mixers())
def test_mixer_conforms(name, check):
    CHECKS[check](factory(name))
