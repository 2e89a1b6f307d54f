"""A hostile-input corpus (hypothesis, ~240 cases) against a real mutual-TLS aggregator on loopback.

Every case goes over real TLS (raw sockets where the request itself must be malformed), and after
each one: no 5xx, /healthz still answers, and the aggregator's state is unchanged: its status
JSON, the SQLite ledger, the files under rounds/, the running encrypted sum, an empty incoming/.
The round stays open throughout: bank-b has uploaded, bank-a (the attacker's usual seat) has not.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import socket
import ssl
import struct
import urllib.parse
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.aggregator_harness import RunningAggregator

from fedshield.config import AggregationSpec, FederationConfig, LimitsSpec, SiloSpec
from fedshield.crypto import encrypt_update
from fedshield.crypto.envelope import ENVELOPE_MAGIC
from fedshield.crypto.framing import DIGEST_BYTES, write_framed
from fedshield.security.auth import Authenticator
from fedshield.security.certs import SiloFiles, issue_all, issue_silo, silo_files
from fedshield.security.tls import ServerTLS, client_context
from fedshield.updates import kept_count

pytestmark = pytest.mark.slow

SIZE, LAYOUT = 2000, "layout-hostile"
SILOS = ("bank-a", "bank-b")
LIMITS = LimitsSpec(silo_requests_per_s=1e6, silo_request_burst=10**6, silo_uploads_per_minute=1e8, silo_upload_burst=10**6,
                    aggregate_wait_s=0.0)  # an open round's aggregate: 425 at once, no long poll


def cases(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class World:
    """The running aggregator, its certificates, and the envelopes the cases start from."""

    def __init__(self, root: Path, keys, other_keys, public_keys):
        self.certs = root / "certs"
        issue_all(self.certs, [*SILOS, "mallory"])
        issue_all(root / "foreign", ["bank-a"])
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
        issue_silo(self.certs, "bank-a-expired", not_before=past, not_after=past + dt.timedelta(days=1))
        self.cert = {s: silo_files(self.certs, s) for s in (*SILOS, "mallory")}
        self.cert["foreign"] = silo_files(root / "foreign", "bank-a")
        self.cert["expired"] = silo_files(self.certs, "bank-a-expired")
        config = FederationConfig(silos=tuple(SiloSpec(name=n) for n in SILOS), rounds=2, limits=LIMITS,
                                  aggregation=AggregationSpec(min_silos=2, round_deadline_seconds=3600))
        tls = ServerTLS(self.certs / "aggregator.crt", self.certs / "aggregator.key", self.certs / "ca.crt")
        self.agg = RunningAggregator(config, public_keys, root / "state", tls=tls, auth=Authenticator(mutual_tls=True)).__enter__()
        self.http = {s: self.agg.client(self.cert[s].cert, self.cert[s].key, timeout=10) for s in SILOS}
        for silo in SILOS:
            r = self.http[silo].post("/v1/join", json={"silo": silo, "samples": 100, "vector_size": SIZE, "layout": LAYOUT})
            assert r.status_code == 200, r.text
        self.plans = {s: self.http[s].get("/v1/plan").json() for s in SILOS}  # each silo is served its own weight
        self.plan = self.plans[SILOS[-1]]
        self.valid = {s: self.envelope(keys, s) for s in SILOS}
        self.foreign_key = self.envelope(other_keys, "bank-a")
        self.next_round = self.envelope(keys, "bank-a", round=1)
        accepted = self.http["bank-b"].put("/v1/rounds/0/uploads/bank-b", content=self.valid["bank-b"], params={"samples": 100})
        assert accepted.status_code == 200 and not accepted.json()["duplicate"]

    def envelope(self, keys, silo: str, round: int = 0) -> bytes:
        values = np.random.default_rng(len(silo) + round).uniform(-1e-2, 1e-2, kept_count(SIZE, self.plan["pruning"]))
        return encrypt_update(keys, values, weight=self.plans[silo]["weights"][silo], round=round, silo=silo, layout=LAYOUT).data

    def state(self) -> tuple:
        """Everything a rejected request must leave alone."""
        status = self.http["bank-b"].get("/v1/status").json()
        status["plan"].pop("deadline_s")
        store = self.agg.coordinator.store
        files = sorted((str(p.relative_to(store.root)), hashlib.sha256(p.read_bytes()).hexdigest())
                       for p in (store.root / "rounds").rglob("*") if p.is_file())
        total = self.agg.coordinator._sum  # noqa: SLF001 - the running encrypted sum must not move either
        ledger = (store.silos(), store.rounds(), store.withdrawn(), [(u.silo, u.sha256, u.bytes, u.metadata) for u in store.uploads(0)])
        return status, ledger, files, tuple(total.contributors), hashlib.sha256(total.to_bytes()).hexdigest()

    def raw(self, request: bytes, who: str | None = "bank-a") -> int | None:
        """Send bytes as they are over mutual TLS; the status code of the answer (None: closed without one)."""
        files = self.cert[who] if who else None
        ctx = client_context(self.certs / "ca.crt", files.cert if files else None, files.key if files else None)
        with socket.create_connection(("127.0.0.1", self.agg.port), timeout=10) as sock:
            with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                try:
                    tls.sendall(request)
                except OSError:
                    pass  # the server may answer and close before reading everything
                answer = b""
                try:
                    while b"\r\n" not in answer:
                        chunk = tls.recv(4096)
                        if not chunk:
                            break
                        answer += chunk
                except (OSError, ssl.SSLError):
                    pass
        line = answer.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) >= 2 and line[1].isdigit() else None


@pytest.fixture(scope="module")
def world(tmp_path_factory, keys, other_keys, public_keys):
    w = World(tmp_path_factory.mktemp("hostile"), keys, other_keys, public_keys)
    w.baseline = w.state()
    yield w
    for client in w.http.values():
        client.close()
    w.agg.__exit__(None, None, None)


def check(world: World, status: int | None) -> None:
    assert status is None or status < 500, f"server error {status}"
    with world.agg.client(timeout=5) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
    assert not list((world.agg.coordinator.store.root / "incoming").iterdir())
    assert world.state() == world.baseline


def put(world: World, data: bytes, silo: str = "bank-a", round: int = 0, who: str = "bank-a", **params) -> httpx.Response:
    return world.http[who].put(f"/v1/rounds/{round}/uploads/{silo}", content=data, params={"samples": 100, **params},
                               headers={"content-type": "application/octet-stream"})


# --- malformed JSON ------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=10)
JOIN_FIELDS = st.fixed_dictionaries({}, optional={
    "silo": st.sampled_from(["bank-a", "bank-b", "mallory", "", "../bank-b"]) | st.text(max_size=70),
    "samples": st.integers(-5, 10**30) | st.floats() | st.text(max_size=5),
    "vector_size": st.sampled_from([SIZE, SIZE + 1, 0]) | st.integers(-(10**30), 10**30),
    "layout": st.sampled_from([LAYOUT, "other"]) | st.text(max_size=300),
    "extra": JSON,
})


@cases(50)
@given(body=st.one_of(st.binary(max_size=200), JSON.map(lambda v: json.dumps(v).encode()),
                      JOIN_FIELDS.map(lambda v: json.dumps(v).encode())),
       endpoint=st.sampled_from(["/v1/join", "/v1/silos/bank-a/withdraw"]))
def test_malformed_json(world, body, endpoint):
    if endpoint.endswith("withdraw"):
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and set(parsed) == {"reason"} and isinstance(parsed["reason"], str) and 0 < len(parsed["reason"]) <= 500:
            assume(False)  # a well-formed withdrawal is not hostile: it would (rightly) change the state
    r = world.http["bank-a"].post(endpoint, content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 or (endpoint == "/v1/join" and r.status_code == 200), r.text  # 200: bank-a's own re-join
    if r.status_code >= 400:
        assert set(r.json()) == {"error", "detail"}
    check(world, r.status_code)


# --- bad headers (raw HTTP/1.1 over TLS) -----------------------------------------------------

HEADER_VALUE = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
HOSTILE_HEADERS = st.lists(st.one_of(
    st.tuples(st.just(b"content-length"), st.sampled_from([b"-1", b"abc", b"16, 16", b"+16", b"0x10", b"1e9", b"99999999999999999999"])),
    st.tuples(st.just(b"transfer-encoding"), st.sampled_from([b"gzip", b"chunked, gzip", b"identity", b"\xff"])),
    st.tuples(st.sampled_from([b"content-type", b"authorization", b"host", b"expect", b"connection", b"x-forwarded-for"]), HEADER_VALUE),
    st.tuples(st.binary(min_size=1, max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"") or b"x"), HEADER_VALUE),
), max_size=4)


@cases(40)
@given(headers=HOSTILE_HEADERS, target=st.sampled_from([b"PUT /v1/rounds/0/uploads/bank-a?samples=100", b"POST /v1/join", b"GET /v1/plan"]),
       body=st.binary(max_size=16))
def test_bad_headers(world, headers, target, body):
    names = {n.lower() for n, _ in headers}
    framing = [] if names & {b"content-length", b"transfer-encoding"} else [(b"content-length", str(len(body)).encode())]
    lines = b"".join(n + b": " + v + b"\r\n" for n, v in [(b"host", b"127.0.0.1"), *headers, *framing])
    status = world.raw(target + b" HTTP/1.1\r\n" + lines + b"connection: close\r\n\r\n" + body)
    check(world, status)


# --- envelopes: truncated, bit-flipped, wrong fingerprint, edited headers ------------------------

def reframe(data: bytes, edit: dict | None = None, records=None) -> bytes:
    """Re-frame an envelope with an edited header and/or records, with a *valid* checksum (as an attacker would)."""
    (header_len,) = struct.unpack(">I", data[6:10])
    header = json.loads(data[10:10 + header_len])
    body, offset, recs = data[10 + header_len:-DIGEST_BYTES], 0, []
    while offset < len(body):
        n = int.from_bytes(body[offset:offset + 4], "big")
        recs.append(body[offset + 4:offset + 4 + n])
        offset += 4 + n
    out = io.BytesIO()
    write_framed(out, ENVELOPE_MAGIC, {**header, **(edit or {})}, records(recs) if records else recs)
    return out.getvalue()


HEADER_EDITS = st.sampled_from([
    {"fingerprint": "0" * 32}, {"fingerprint": "not hex"}, {"round": 1}, {"round": -1}, {"silo": "bank-b"},
    {"silo": "../bank-b"}, {"weight": 0.9}, {"weight": 0}, {"count": 1}, {"n_ciphertexts": 2}, {"kind": "aggregate"},
    {"format_version": 2}, {"layout": "other"}, {"ckks": {"poly_degree": 4096}}, {"ckks": {"scale_bits": 30}}, {"ckks": None},
    {"packing": None}, {"packing": {"max_silos": 2}}, {"extra": 1}, {"weight": "heavy"}, {"silo": None},
])  # edits that leave the envelope meaning the same (e.g. "ckks": {} = the defaults, "weight": "0.5" = 0.5) are not hostile and not here
RECORD_EDITS = st.sampled_from([
    lambda r: r[:-1] or [b""], lambda r: r + r[-1:], lambda r: [x[: len(x) // 2] for x in r], lambda r: [b"\x00" * 64 for _ in r],
    lambda r: [x[::-1] for x in r], lambda r: [x[:8] + b"\xff" * 8 + x[16:] for x in r],
])


@st.composite
def hostile_envelope(draw):
    """A function of the world giving bank-a's valid envelope damaged one way or another."""
    kind = draw(st.sampled_from(["truncate", "flip", "foreign key", "next round", "header", "records"]))
    if kind == "truncate":
        fraction = draw(st.floats(0, 1, exclude_max=True))
        return lambda w: w.valid["bank-a"][: int(len(w.valid["bank-a"]) * fraction)]
    if kind == "flip":
        bits = draw(st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=3, unique=True))

        def flip(w: World) -> bytes:
            data = bytearray(w.valid["bank-a"])
            for position in {int(b * len(data) * 8) for b in bits}:
                data[position // 8] ^= 1 << (position % 8)
            return bytes(data)
        return flip
    if kind == "foreign key":
        return lambda w: w.foreign_key
    if kind == "next round":
        return lambda w: w.next_round
    if kind == "header":
        edit = draw(HEADER_EDITS)
        return lambda w: reframe(w.valid["bank-a"], edit)
    records = draw(RECORD_EDITS)
    return lambda w: reframe(w.valid["bank-a"], records=records)


@cases(60)
@given(damage=hostile_envelope())
def test_hostile_envelopes(world, damage):
    data = damage(world)
    assert data != world.valid["bank-a"]
    r = put(world, data)
    assert 400 <= r.status_code < 500 and r.json()["error"] and r.json()["detail"], r.text
    check(world, r.status_code)


# --- replay of another silo's upload ----------------------------------------------------------

@cases(20)
@given(as_url=st.sampled_from(["bank-a", "bank-b"]), round=st.integers(0, 3), samples=st.integers(1, 10**6),
       val_loss=st.none() | st.floats(0, 10))
def test_replay_of_another_silos_upload(world, as_url, round, samples, val_loss):
    params = {"samples": samples, **({"val_loss": val_loss} if val_loss is not None else {})}
    r = put(world, world.valid["bank-b"], silo=as_url, round=round, who="bank-a", **params)
    assert 400 <= r.status_code < 500, r.text  # silo_mismatch under bank-a's name, identity_mismatch under bank-b's
    assert r.json()["error"] in {"silo_mismatch", "identity_mismatch", "wrong_round"}
    check(world, r.status_code)


# --- reports a silo makes about itself (issue 17): out of range, with a valid envelope -------------

RANGES = {"train_loss": (0.0, 1e4), "val_loss": (0.0, 1e4), "val_score": (0.0, 1.0), "epsilon": (0.0, 1e6)}


def _outside(field: str) -> st.SearchStrategy:
    lo, hi = RANGES[field]
    return (st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: v < lo or v > hi).map(repr)
            | st.sampled_from(["nan", "inf", "-inf", "1e309", "1.7e308", "-0.0001", "1e300"]).filter(
                lambda v: not lo <= float(v) <= hi))


@cases(30)
@given(data=st.data(), field=st.sampled_from(sorted(RANGES)))
def test_self_reports_out_of_range(world, data, field):
    value = data.draw(_outside(field))
    r = put(world, world.valid["bank-a"], **{field: value})
    assert r.status_code == 422 and field in r.json()["detail"], r.text
    check(world, r.status_code)


@cases(10)
@given(samples=st.sampled_from(["0", "-1", str(2**53 + 1), str(2**64), "1e3", "nan"]))
def test_sample_claims_out_of_range(world, samples):
    r = world.http["bank-a"].put("/v1/rounds/0/uploads/bank-a", content=world.valid["bank-a"], params={"samples": samples},
                                 headers={"content-type": "application/octet-stream"})
    assert r.status_code == 422 and "samples" in r.json()["detail"], r.text
    check(world, r.status_code)


# --- path tricks in silo names and round numbers ------------------------------------------------

SILO_TRICKS = st.sampled_from(["..", "%2e%2e", "bank-a/../bank-b", "..%2fbank-b", "BANK-A", "bank-a%00", "bank-a.fshe",
                               "b\u0430nk-a", "aggregate", "%2Fetc%2Fpasswd", "bank-a;bank-b", "bank-b", "", "%20"]) | st.text(max_size=30)
ROUND_TRICKS = st.sampled_from(["-1", "1e3", "0x0", " 0", "+0", "00", "1" * 40, "0.0", "%30", "0/../1", "NaN", "2147483648"]) \
    | st.integers(-(10**12), 10**12).map(str)


@cases(50)
@given(silo=SILO_TRICKS, round=ROUND_TRICKS, what=st.sampled_from(["upload", "aggregate", "withdraw", "upload-get"]))
def test_path_tricks(world, silo, round, what):
    quoted = urllib.parse.quote(silo, safe="%/.")
    r_quoted = urllib.parse.quote(round, safe="%/.")
    target = {
        "upload": f"PUT /v1/rounds/{r_quoted}/uploads/{quoted}?samples=100",
        "aggregate": f"GET /v1/rounds/{r_quoted}/aggregate",
        "withdraw": f"POST /v1/silos/{quoted}/withdraw",
        "upload-get": f"GET /v1/rounds/{r_quoted}/uploads/{quoted}",  # uploads are never served, whatever the path
    }[what]
    body = world.valid["bank-b"] if what == "upload" else b'{"reason": "path trick"}' if what == "withdraw" else b""
    if what == "withdraw" and urllib.parse.unquote(silo) == "bank-a":
        assume(False)  # bank-a withdrawing itself is legitimate
    head = f"{target} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(body)}\r\nconnection: close\r\n"
    status = world.raw(head.encode() + b"\r\n" + body)
    assert status is None or 400 <= status < 500, (target, status)  # round 0's aggregate: 425, the round is open
    check(world, status)


# --- certificates: absent, foreign CA, expired, unknown silo, another silo's --------------------

ENDPOINTS = {
    "upload-a": ("PUT", "/v1/rounds/0/uploads/bank-a"), "upload-b": ("PUT", "/v1/rounds/0/uploads/bank-b"),
    "join-a": ("POST", "/v1/join"), "withdraw-a": ("POST", "/v1/silos/bank-a/withdraw"),
    "withdraw-b": ("POST", "/v1/silos/bank-b/withdraw"), "plan": ("GET", "/v1/plan"), "aggregate": ("GET", "/v1/rounds/0/aggregate"),
}


@cases(40)
@given(who=st.sampled_from([None, "foreign", "expired", "mallory", "bank-a", "bank-b"]), endpoint=st.sampled_from(sorted(ENDPOINTS)))
def test_wrong_certificates(world, who, endpoint):
    own = {"upload-a": "bank-a", "join-a": "bank-a", "withdraw-a": "bank-a", "upload-b": "bank-b", "withdraw-b": "bank-b"}
    if who in SILOS and (own.get(endpoint) == who or endpoint in ("plan", "aggregate")):
        assume(False)  # a silo using its own certificate for its own calls is not hostile
    method, path = ENDPOINTS[endpoint]
    body = {"upload-a": world.valid["bank-a"], "upload-b": world.valid["bank-b"],
            "join-a": json.dumps({"silo": "bank-a", "samples": 100, "vector_size": SIZE, "layout": LAYOUT}).encode(),
            "withdraw-a": b'{"reason": "x"}', "withdraw-b": b'{"reason": "x"}'}.get(endpoint, b"")
    files: SiloFiles | None = world.cert[who] if who else None
    ctx = client_context(world.certs / "ca.crt", files.cert if files else None, files.key if files else None)
    try:
        with httpx.Client(base_url=world.agg.url, verify=ctx, timeout=10) as client:
            r = client.request(method, path, content=body, params={"samples": 100} if method == "PUT" else None,
                               headers={"content-type": "application/json" if method == "POST" else "application/octet-stream"})
        status = r.status_code
        assert who in (None, "mallory", "bank-a", "bank-b"), f"{who}'s certificate was accepted"
        expected = {None: "unauthenticated", "mallory": "unknown_silo"}.get(who, "identity_mismatch")
        assert (status, r.json()["error"]) == (401 if who is None else 403, expected), r.text
    except httpx.TransportError:
        assert who in ("foreign", "expired")  # refused in the handshake: no HTTP at all
        status = None
    check(world, status)
