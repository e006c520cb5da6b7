"""Drives `sluice serve`'s HTTP data API from Python, as a service in another language would,
with examples/polyglot/python/sluice_http.py (standard library only). Run by
tests/polyglot.rs in two phases around a Rust worker on sluice://:

    interop.py publish URL   creates the topology, publishes JSON, text and CloudEvents
    interop.py consume URL   receives what Python and Rust published, acks, retries,
                             dead-letters, extends, and checks every CloudEvent attribute

Every check is an assert: a failure exits non-zero with the reason.
"""

import base64
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "examples", "polyglot", "python"))

from sluice_http import Sluice, SluiceError  # noqa: E402

EVENT = {
    "specversion": "1.0",
    "id": "ce-1",
    "source": "/py/shop",
    "type": "com.example.order.placed",
    "subject": "order-42",
    "time": "2026-12-07T10:00:00Z",
    "datacontenttype": "application/json",
    "tenant": "acme",
    "data": {"order": 42, "total": 12.5},
}


def publish(client):
    client.ensure_topic("orders", dedup_window_ms=60000)
    client.ensure_subscription("py-orders", topic="orders", max_attempts=2)
    client.ensure_subscription("py-events", topic="orders")
    client.ensure_subscription("rust-orders", topic="orders")

    # A batch with one invalid message publishes nothing.
    try:
        client.publish("orders", [{"id": "never", "text": "ok"}, {"text": "x", "headers": {"sluice-x": "1"}}])
        raise AssertionError("an invalid batch was accepted")
    except SluiceError as e:
        assert e.status == 400 and e.code == "invalid_message", e
        assert e.body["results"][0]["index"] == 1, e.body

    results = client.publish("orders", [
        {"id": "py-1", "type": "order.placed", "payload": {"order": 1, "items": ["a", "b"]},
         "headers": {"tenant": "acme"}, "ordering_key": "customer-7", "routing_key": "order.placed.eu"},
        {"id": "py-2", "text": "hello from python"},
    ])
    assert [r["status"] for r in results] == ["published", "published"], results
    again = client.publish("orders", [{"id": "py-1", "payload": {"order": 1}}])
    assert again[0]["status"] == "duplicate", again

    assert client.publish_event("orders", EVENT)[0]["status"] == "published"
    binary = client.publish_binary_event(
        "orders", bytes([0, 1, 2, 255]), "application/octet-stream",
        id="ce-2", source="/py/shop", type="com.example.blob", subject="café")
    assert binary[0]["status"] == "published", binary
    print("published py-1 py-2 ce-1 ce-2")


def receive_all(client, subscription, want, **kw):
    got = []
    deadline = time.time() + 20
    while len(got) < want and time.time() < deadline:
        got += client.receive(subscription, max=want - len(got), wait_ms=1000, **kw)
    assert len(got) == want, f"{subscription}: {len(got)} of {want}: {got}"
    return got


def consume(client):
    # Python's four and the Rust worker's two, in publish order.
    deliveries = receive_all(client, "py-orders", 6)
    by_id = {d["message"]["id"]: d for d in deliveries}
    assert sorted(by_id) == ["ce-1", "ce-2", "py-1", "py-2", "rust-1", "rust-2"], sorted(by_id)
    py1 = by_id["py-1"]["message"]
    assert py1["payload"] == {"order": 1, "items": ["a", "b"]}, py1
    assert py1["headers"]["tenant"] == "acme" and py1["ordering_key"] == "customer-7", py1
    assert py1["routing_key"] == "order.placed.eu" and py1["type"] == "order.placed", py1
    assert by_id["py-2"]["message"]["text"] == "hello from python"
    assert base64.b64decode(by_id["ce-2"]["message"]["base64"]) == bytes([0, 1, 2, 255])
    assert by_id["ce-2"]["message"]["headers"]["ce-subject"] == "café"
    rust1 = by_id["rust-1"]["message"]
    assert rust1["payload"] == {"invoice": 7}, rust1
    assert rust1["headers"]["ce-source"] == "/rust/billing", rust1
    assert by_id["rust-2"]["message"]["text"] == "plain text from rust"
    for d in deliveries:
        assert d["attempt"] == 1 and d["lease_ms"] > 0 and d["topic"] == "orders", d

    # Settle in one batch: ack four, retry one at once, extend another's lease.
    verbs = [{"lease": by_id[i]["lease"], "verb": "ack"} for i in ["py-1", "ce-1", "ce-2", "rust-2"]]
    verbs.append({"lease": by_id["py-2"]["lease"], "verb": "retry", "delay_ms": 0})
    verbs.append({"lease": by_id["rust-1"]["lease"], "verb": "extend", "lease_ms": 60000})
    results = client.settle("py-orders", verbs)
    assert all(r["status"] == "ok" for r in results), results
    client.ack("py-orders", by_id["rust-1"]["lease"])
    # A lease already settled is lost, with its code.
    try:
        client.ack("py-orders", by_id["py-1"]["lease"])
        raise AssertionError("a settled lease was accepted twice")
    except SluiceError as e:
        assert e.code == "lease_lost", e

    # The retried message comes back with its second attempt, its last: dead-letter it.
    again = receive_all(client, "py-orders", 1)[0]
    assert again["message"]["id"] == "py-2" and again["attempt"] == 2, again
    client.dead_letter("py-orders", again["lease"], reason="cannot parse", last_error="not JSON")
    dead = client.dead_lettered("py-orders")
    assert [d["id"] for d in dead] == ["py-2"], dead
    assert "cannot parse" in str(dead[0]), dead[0]
    assert client.receive("py-orders", max=10, wait_ms=200) == []

    # The same messages as CloudEvents: every attribute of the event Python published, and a
    # complete event for what Rust published.
    events = receive_all(client, "py-events", 5, format="cloudevents")
    by_id = {d["event"]["id"]: d["event"] for d in events}
    ce1 = by_id["ce-1"]
    for k, v in EVENT.items():
        assert ce1[k] == v, (k, ce1)
    rust1 = by_id["rust-1"]
    assert rust1["source"] == "/rust/billing" and rust1["type"] == "com.example.invoice.issued", rust1
    assert rust1["subject"] == "invoice-7" and rust1["data"] == {"invoice": 7}, rust1
    assert rust1["specversion"] == "1.0" and "time" in rust1, rust1
    py1 = by_id["py-1"]
    assert py1["partitionkey"] == "customer-7" and py1["tenant"] == "acme", py1
    assert py1["source"] == "/sluice/topics/orders", py1
    client.settle("py-events", [{"lease": d["lease"], "verb": "ack"} for d in events])

    # Binary mode: the last one, as ce-* headers and the data as the body.
    status, headers, body = client._call(
        "POST", "/api/v1/subscriptions/py-events/receive",
        {"format": "cloudevents-binary", "wait_ms": 5000}, raw=True)
    headers = {k.lower(): v for k, v in headers.items()}
    assert status == 200 and headers["ce-id"] == "rust-2", headers
    assert headers["ce-specversion"] == "1.0" and body == b"plain text from rust", (headers, body)
    client.ack("py-events", headers["sluice-lease"])
    print("consumed and settled 6 + 6 deliveries")


def main():
    phase, url = sys.argv[1], sys.argv[2]
    client = Sluice(url, token=os.environ.get("SLUICE_TOKEN"))
    {"publish": publish, "consume": consume}[phase](client)


if __name__ == "__main__":
    main()
