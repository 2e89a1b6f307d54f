"""Epsilon travels with its unit: an enum in the upload metadata and the status summary, never free text."""

import pytest
from pydantic import ValidationError

from fedshield import metrics
from fedshield.aggregator import telemetry
from fedshield.wire.messages import StatusSummary, UploadMetadata


def test_the_unit_is_one_of_silo_record_user_and_needs_an_epsilon():
    assert UploadMetadata(samples=1, epsilon=2.0, epsilon_unit="record").epsilon_unit == "record"
    assert UploadMetadata(samples=1).epsilon_unit is None
    for bad in ({"epsilon": 2.0, "epsilon_unit": "patient"}, {"epsilon": 2.0, "epsilon_unit": "Record"}, {"epsilon_unit": "user"}):
        with pytest.raises(ValidationError):
            UploadMetadata(samples=1, **bad)
    assert StatusSummary(rounds_closed=1, max_epsilon=2.0, epsilon_unit="user").epsilon_unit == "user"
    with pytest.raises(ValidationError):
        StatusSummary(rounds_closed=1, max_epsilon=2.0, epsilon_unit="device")


def test_the_epsilon_metric_is_labelled_with_the_unit():
    telemetry.publish_reports({"bank-a": {"epsilon": 3.5, "epsilon_unit": "record"}, "bank-b": {"epsilon": 1.0}}, ["bank-a", "bank-b"], [])
    value = metrics.AGGREGATOR.get_sample_value
    assert value("fedshield_epsilon_spent", {"silo": "bank-a", "unit": "record"}) == 3.5
    assert value("fedshield_epsilon_spent", {"silo": "bank-b", "unit": "unknown"}) == 1.0  # stored before units were reported
