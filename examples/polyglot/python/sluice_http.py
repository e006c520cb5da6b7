"""A small client of `sluice serve`'s HTTP data API, on Python's standard library only.

Copy this file into your service. It covers what docs/http-api.md describes: create topics
and subscriptions, publish (JSON messages, CloudEvents), receive with a lease, and settle
each delivery (ack, retry, release, dead-letter, extend).

    client = Sluice("http://127.0.0.1:7576", token=os.environ.get("SLUICE_TOKEN"))
    client.ensure_topic("orders")
    client.ensure_subscription("billing", topic="orders", max_attempts=5)
    client.publish("orders", [{"id": "order-1", "type": "order.placed", "payload": {"total": 12}}])
    for d in client.receive("billing", max=10, wait_ms=5000):
        handle(d["message"])
        client.ack("billing", d["lease"])
"""

import json
import urllib.error
import urllib.parse
import urllib.request


class SluiceError(Exception):
    """A refusal of the API: `status` (HTTP), `code` (stable, see docs/http-api.md), message."""

    def __init__(self, status, code, message, body=None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.body = body or {}


class Sluice:
    def __init__(self, url, token=None, namespace=None, timeout=60):
        self.url = url.rstrip("/")
        self.token = token
        self.namespace = namespace
        self.timeout = timeout

    def _call(self, method, path, body=None, headers=None, query=None, raw=False):
        query = dict(query or {})
        if self.namespace:
            query["namespace"] = self.namespace
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        data = body
        if body is not None and not isinstance(body, (bytes, bytearray)):
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                content = response.read()
                if raw:
                    return response.status, dict(response.headers), content
                return json.loads(content) if content else None
        except urllib.error.HTTPError as e:
            content = e.read()
            try:
                answer = json.loads(content)
            except ValueError:
                answer = {"error": content.decode(errors="replace"), "code": "http"}
            raise SluiceError(e.code, answer.get("code"), answer.get("error"), answer) from None

    # ---- topology

    def ensure_topic(self, topic, **config):
        """Creates the topic, or checks it exists with this configuration."""
        return self._call("PUT", f"/api/v1/topics/{topic}", config)

    def ensure_subscription(self, subscription, topic, **config):
        """Creates the subscription of `topic` (filter, start, lease_ms, max_attempts, ...)."""
        return self._call("PUT", f"/api/v1/subscriptions/{subscription}", dict(config, topic=topic))

    # ---- publish

    def publish(self, topic, messages):
        """Publishes a batch of messages (dicts: payload | text | base64, id, type,
        routing_key, ordering_key, headers, content_type, delay_ms). Returns each one's
        outcome once they are durable; nothing is published if one is invalid."""
        return self._call("POST", f"/api/v1/topics/{topic}/messages", {"messages": messages})["results"]

    def publish_event(self, topic, event):
        """Publishes one CloudEvent (a dict in the structured JSON format)."""
        body = json.dumps(event).encode()
        headers = {"Content-Type": "application/cloudevents+json"}
        return self._call("POST", f"/api/v1/topics/{topic}/messages", body, headers)["results"]

    def publish_binary_event(self, topic, data, content_type, **attributes):
        """Publishes one CloudEvent in binary mode: attributes as ce-* headers, data as the body."""
        # Header values are percent-encoded as the CloudEvents HTTP binding says.
        safe = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')
        headers = {"ce-" + k: urllib.parse.quote(str(v), safe=safe) for k, v in attributes.items()}
        headers.setdefault("ce-specversion", "1.0")
        headers["Content-Type"] = content_type
        return self._call("POST", f"/api/v1/topics/{topic}/messages", data, headers)["results"]

    # ---- consume

    def receive(self, subscription, max=1, wait_ms=0, format="sluice"):
        """Leases up to `max` deliveries, waiting up to `wait_ms` for the first. Each has a
        `lease` to settle before `lease_ms` runs out, else it is delivered again."""
        body = {"max": max, "wait_ms": wait_ms, "format": format}
        return self._call("POST", f"/api/v1/subscriptions/{subscription}/receive", body)["deliveries"]

    def settle(self, subscription, settlements):
        """Applies a batch of verbs ({"lease", "verb", ...}); returns each one's result."""
        body = {"settlements": settlements}
        return self._call("POST", f"/api/v1/subscriptions/{subscription}/settle", body)["results"]

    def _one(self, subscription, settlement):
        result = self.settle(subscription, [settlement])[0]
        if result["status"] != "ok":
            # The settle call itself succeeded (200); this verb did not: 410 for a lost lease.
            retryable = ("unavailable", "closed", "timeout", "backlog_full")
            status = 410 if result["code"] == "lease_lost" else 503 if result["code"] in retryable else 400
            raise SluiceError(status, result["code"], result["error"], result)

    def ack(self, subscription, lease):
        self._one(subscription, {"lease": lease, "verb": "ack"})

    def retry(self, subscription, lease, delay_ms=0):
        self._one(subscription, {"lease": lease, "verb": "retry", "delay_ms": delay_ms})

    def release(self, subscription, lease):
        self._one(subscription, {"lease": lease, "verb": "release"})

    def dead_letter(self, subscription, lease, reason, last_error=None):
        self._one(subscription, {"lease": lease, "verb": "dead_letter", "reason": reason,
                                 "last_error": last_error})

    def extend(self, subscription, lease, lease_ms):
        self._one(subscription, {"lease": lease, "verb": "extend", "lease_ms": lease_ms})

    # ---- operations (need the admin grant)

    def dead_lettered(self, subscription, limit=100):
        return self._call("GET", f"/api/v1/subscriptions/{subscription}/dlq", query={"limit": limit})
