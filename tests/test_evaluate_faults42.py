"""`cellsynth evaluate` with files as other tools and common preparations make them (session
42's sweep): donors stored as numbers two ways, rounded normalised values, synthetic cells that
are the held-out cells, backed views, per-type depth, small types, and the messages."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cellsynth.metrics.privacy import NO_DONOR, donor_values


def test_a_donor_stored_as_1_and_as_1_0_is_one_donor():
    """A column of numbers turns float once it holds a NaN: donor 1.0 is donor 1 (the audit
    took them for two, and ran a donor-level attack on donors that both sides share)."""
    ints = donor_values(pd.Series([1, 2, 3], name="donor"))
    floats = donor_values(pd.Series([1.0, np.nan, 3.0], name="donor"))
    assert ints.tolist() == ["1", "2", "3"]
    assert floats.tolist() == ["1", NO_DONOR, "3"]
    text = donor_values(pd.Series(["01", None, "d7"], name="donor", dtype=object))
    assert text.tolist() == ["01", NO_DONOR, "d7"]  # text as written
    cat = donor_values(pd.Series(pd.Categorical(["a", None, "b"]), name="donor"))
    assert cat.tolist() == ["a", NO_DONOR, "b"]
