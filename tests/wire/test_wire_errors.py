"""Refusals are one enum on both sides: the aggregator raises a code, the body carries it, the client parses it back."""

from __future__ import annotations

import httpx
import pytest
from support.aggregator_harness import RunningAggregator

from fedshield.aggregator.errors import CRYPTO_CODES, ApiError, crypto_code, envelope_refused
from fedshield.config import AggregationSpec, FederationConfig, LimitsSpec, SiloSpec
from fedshield.crypto import errors as crypto_errors
from fedshield.crypto.errors import CryptoError, FormatError
from fedshield.security.auth import Authenticator, TokenStore, hash_token
from fedshield.security.limits import Busy, RateLimiter, UploadSlots
from fedshield.wire.client import AggregatorClient, AggregatorRefused, ClientSecurity
from fedshield.wire.errors import FEDERATION_OVER, STATUS, ErrorBody, ErrorCode, error_body, parse_error
from fedshield.wire.messages import JoinRequest, UploadMetadata

SIZE, LAYOUT, SILOS = 3000, "layout-1", ("bank-a", "bank-b")
TOKENS = {silo: f"token-of-{silo}" for silo in SILOS}


def config(**limits) -> FederationConfig:
    return FederationConfig(silos=tuple(SiloSpec(name=n, samples=100) for n in SILOS), rounds=2,
                            aggregation=AggregationSpec(min_silos=2, round_deadline_seconds=600),
                            limits=LimitsSpec(**({"aggregate_wait_s": 0.0} | limits)))


def join(silo: str, **kw) -> JoinRequest:
    return JoinRequest(**{"silo": silo, "samples": 100, "vector_size": SIZE, "layout": LAYOUT, **kw})


@pytest.fixture()
def aggregator(public_keys, tmp_path):
    with RunningAggregator(config(), public_keys, tmp_path / "state") as agg:
        yield agg


def refusal(call) -> AggregatorRefused:
    with pytest.raises(AggregatorRefused) as refused:
        call()
    return refused.value


# --- the enum itself -------------------------------------------------------------------------

def test_every_code_has_one_http_status():
    assert set(STATUS) == set(ErrorCode)
    assert all(400 <= code.status < 600 for code in ErrorCode)
    assert ErrorCode.ROUND_NOT_CLOSED.status == 425 and ErrorCode.UNAUTHENTICATED.status == 401
    assert FEDERATION_OVER == {ErrorCode.FEDERATION_FINISHED, ErrorCode.FEDERATION_STOPPED}


def test_the_body_builder_and_parser_round_trip():
    body = error_body(ErrorCode.WRONG_ROUND, "round 1 is not open")
    assert body == {"error": "wrong_round", "detail": "round 1 is not open"}
    parsed = parse_error(409, httpx.Response(409, json=body).content)
    assert parsed == ErrorBody(error=ErrorCode.WRONG_ROUND, detail="round 1 is not open")
    assert parsed.error is ErrorCode.WRONG_ROUND


def test_a_body_that_is_no_error_body_parses_as_http_error():
    assert parse_error(502, b"<html>bad gateway</html>").error is ErrorCode.HTTP_ERROR
    assert "bad gateway" in parse_error(502, b"<html>bad gateway</html>").detail
    assert parse_error(400, b'{"error": "a_code_from_the_future", "detail": "x"}').error is ErrorCode.HTTP_ERROR


def test_api_error_takes_its_status_from_the_code_unless_told():
    assert ApiError(ErrorCode.NOT_JOINED, "x").status == 403
    assert ApiError(ErrorCode.WRONG_ROUND, "x", status=400).status == 400


def test_every_limit_refusal_is_a_code_with_its_status():
    slots, rate = UploadSlots(1), RateLimiter(1.0, 1)
    refused: list[Busy] = []
    with slots.hold("a"):
        for attempt in (lambda: slots.hold("a").__enter__(), lambda: slots.hold("b").__enter__()):
            with pytest.raises(Busy) as exc:
                attempt()
            refused.append(exc.value)
    rate.take("a")
    with pytest.raises(Busy) as exc:
        rate.take("a")
    refused.append(exc.value)
    assert [ErrorCode(b.code) for b in refused] == [ErrorCode.UPLOAD_IN_PROGRESS, ErrorCode.TOO_MANY_UPLOADS, ErrorCode.RATE_LIMITED]
    assert all(ErrorCode(b.code).status == b.status for b in refused)


def test_crypto_errors_map_through_the_enum_by_class():
    subclasses = [c for c in vars(crypto_errors).values() if isinstance(c, type) and issubclass(c, CryptoError)]
    assert set(CRYPTO_CODES) <= set(subclasses)
    for cls in CRYPTO_CODES:
        assert isinstance(crypto_code(cls("x")), ErrorCode)

    class Truncated(FormatError):
        pass

    assert crypto_code(Truncated("x")) is ErrorCode.MALFORMED_ENVELOPE
    assert crypto_code(crypto_errors.SecretKeyMissingError("x")) is ErrorCode.BAD_ENVELOPE
    refused = envelope_refused(crypto_errors.RoundMismatchError("envelope of round 1"))
    assert (refused.status, refused.code, refused.detail) == (400, ErrorCode.WRONG_ROUND, "envelope of round 1")


# --- over HTTP: server code -> body -> client exception, one refusal per resource --------------

def test_silos_join_refusals_arrive_as_codes(aggregator):
    client = AggregatorClient(aggregator.url, retries=0)
    try:
        unknown = refusal(lambda: client.join(join("bank-z")))
        assert (unknown.status, unknown.code) == (403, ErrorCode.UNKNOWN_SILO)
        assert "silo 'bank-z' is not part of federation" in unknown.detail
        client.join(join("bank-a"))
        mismatch = refusal(lambda: client.join(join("bank-b", layout="another")))
        assert (mismatch.status, mismatch.code) == (409, ErrorCode.LAYOUT_MISMATCH)
        too_many = refusal(lambda: client.join(join("bank-b", samples=101)))
        assert (too_many.status, too_many.code) == (ErrorCode.SAMPLES_ABOVE_DECLARED.status, ErrorCode.SAMPLES_ABOVE_DECLARED)
    finally:
        client.close()


def test_rounds_refusals_arrive_as_codes(aggregator):
    client = AggregatorClient(aggregator.url, retries=0)
    try:
        for silo in SILOS:
            client.join(join(silo))
        unknown = refusal(lambda: client.aggregate(7))
        assert (unknown.status, unknown.code) == (404, ErrorCode.UNKNOWN_ROUND)
        ahead = refusal(lambda: client.upload(1, "bank-a", b"\x00", UploadMetadata(samples=100)))
        assert (ahead.status, ahead.code) == (409, ErrorCode.WRONG_ROUND)
        garbage = refusal(lambda: client.upload(0, "bank-a", b"\x00not an envelope", UploadMetadata(samples=100)))
        assert (garbage.status, garbage.code) == (400, ErrorCode.MALFORMED_ENVELOPE)
    finally:
        client.close()


def test_unlearning_refusals_arrive_as_codes(aggregator):
    client = AggregatorClient(aggregator.url, retries=0)
    try:
        for silo in SILOS:
            client.join(join(silo))
        missing = refusal(lambda: client.unlearning_aggregate(0))
        assert (missing.status, missing.code) == (404, ErrorCode.UNKNOWN_UNLEARNING)
        unapproved = refusal(lambda: client.approve_unlearning(0, "bank-b", "0" * 64))
        assert (unapproved.status, unapproved.code) == (404, ErrorCode.UNKNOWN_UNLEARNING)
    finally:
        client.close()


def test_status_and_unknown_routes_refuse_with_codes(aggregator):
    r = httpx.get(f"{aggregator.url}/v1/status", params={"limit": 0})
    assert (r.status_code, parse_error(r.status_code, r.content).error) == (422, ErrorCode.MALFORMED_REQUEST)
    r = httpx.get(f"{aggregator.url}/v1/nothing-here")
    assert (r.status_code, parse_error(r.status_code, r.content).error) == (404, ErrorCode.NOT_FOUND)
    r = httpx.delete(f"{aggregator.url}/v1/plan")
    assert (r.status_code, parse_error(r.status_code, r.content).error) == (405, ErrorCode.METHOD_NOT_ALLOWED)


def test_the_guard_refuses_with_codes(public_keys, tmp_path):
    auth = Authenticator(tokens=TokenStore({silo: hash_token(token) for silo, token in TOKENS.items()}))
    with RunningAggregator(config(), public_keys, tmp_path / "state", auth=auth) as agg:
        anonymous = AggregatorClient(agg.url, retries=0)
        wrong = AggregatorClient(agg.url, retries=0, security=ClientSecurity(token="not-a-token"))
        bank_a = AggregatorClient(agg.url, retries=0, security=ClientSecurity(token=TOKENS["bank-a"]))
        try:
            assert refusal(anonymous.plan).code is ErrorCode.UNAUTHENTICATED
            assert refusal(wrong.plan).status == 401
            impostor = refusal(lambda: bank_a.join(join("bank-b")))
            assert (impostor.status, impostor.code) == (403, ErrorCode.IDENTITY_MISMATCH)
            not_joined = refusal(bank_a.plan)
            assert (not_joined.status, not_joined.code) == (403, ErrorCode.NOT_JOINED)
            r = httpx.get(f"{agg.url}/v1/status")  # status needs an identity too (issue 17)
            assert (r.status_code, parse_error(r.status_code, r.content).error) == (401, ErrorCode.UNAUTHENTICATED)
            r = httpx.get(f"{agg.url}/v1/status", headers={"authorization": f"Bearer {TOKENS['bank-b']}"})
            assert r.status_code == 200 and r.json()["plan"]["mask_seed"] is None  # a silo that has not joined
        finally:
            for client in (anonymous, wrong, bank_a):
                client.close()


def test_the_openapi_schema_lists_every_code(aggregator):
    schemas = httpx.get(f"{aggregator.url}/openapi.json").json()["components"]["schemas"]
    assert set(schemas["ErrorCode"]["enum"]) == {code.value for code in ErrorCode}


def test_an_aggregate_request_is_held_until_the_round_closes_then_425_with_retry_after(public_keys, keys, tmp_path):
    """A long poll: the request waits (limits.aggregateWaitS) and is answered as soon as the round closes; when the
    wait runs out it is 425 with Retry-After (limits.aggregateRetryAfterS), which the client honours."""
    import threading
    import time

    from support.aggregator_calls import make_upload

    with RunningAggregator(config(aggregate_wait_s=1.5, aggregate_retry_after_s=1), public_keys, tmp_path / "s") as agg:
        client = AggregatorClient(agg.url, retries=0)
        try:
            plan = {}
            for silo in SILOS:
                plan = client.join(join(silo)).model_dump()
            t0 = time.monotonic()
            raw = client._http.get("/v1/rounds/0/aggregate")
            assert raw.status_code == 425 and raw.headers["retry-after"] == "1" and time.monotonic() - t0 >= 1.4
            calls: list[int] = []
            real_call = client._call
            client._call = lambda send, **kw: calls.append(1) or real_call(send)  # type: ignore[method-assign]
            with pytest.raises(TimeoutError):
                client.aggregate(0, timeout_s=4.0)
            assert len(calls) <= 3  # held 1.5 s + 1 s between asks (a poll every 0.2 s would make 20)
            got: dict[str, float] = {}

            def wait() -> None:
                client.aggregate(0, timeout_s=30)
                got["at"] = time.monotonic()

            waiter = threading.Thread(target=wait)
            waiter.start()
            time.sleep(0.3)
            for i, silo in enumerate(SILOS):
                data, _ = make_upload(keys, silo, plan, seed=i)
                closed_at = time.monotonic()
                assert httpx.put(f"{agg.url}/v1/rounds/0/uploads/{silo}", content=data, params={"samples": 100}).status_code == 200
            waiter.join(timeout=30)
            assert got["at"] - closed_at < 1.2  # answered within a check of the close (or after one Retry-After)
        finally:
            client.close()


def test_the_client_sleeps_the_servers_retry_after_with_jitter():
    import time as time_module

    waits: list[float] = []
    answers = iter([httpx.Response(425, headers={"Retry-After": "3"}, json=error_body(ErrorCode.ROUND_NOT_CLOSED, "open")),
                    httpx.Response(425, json=error_body(ErrorCode.ROUND_NOT_CLOSED, "open")),
                    httpx.Response(200, content=b"aggregate")])
    client = AggregatorClient("http://127.0.0.1:1", retries=0)
    client._call = lambda send, sleep=time_module.sleep: next(answers)  # type: ignore[method-assign]
    try:
        assert client.aggregate(0, poll_s=0.2, sleep=waits.append) == b"aggregate"
    finally:
        client.close()
    assert 3.0 <= waits[0] <= 3.3 and 0.2 <= waits[1] <= 0.22  # the server's wait, else poll_s; plus at most 10% jitter
