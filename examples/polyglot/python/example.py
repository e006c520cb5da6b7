"""An order service in Python on `sluice serve`: publishes orders (one of them poison),
consumes them, acks the good ones, retries a transient failure and dead-letters the poison
one with its reason. Standard library only.

    sluice serve --data ./data          # HTTP API on 127.0.0.1:7576
    python3 examples/polyglot/python/example.py http://127.0.0.1:7576
"""

import os
import sys
import time

from sluice_http import Sluice

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:7576"
sluice = Sluice(url, token=os.environ.get("SLUICE_TOKEN"))
sluice.ensure_topic("py-example-orders")
sluice.ensure_subscription("py-example-billing", topic="py-example-orders", start="earliest", max_attempts=3)

orders = [{"id": f"py-order-{n}", "type": "order.placed", "payload": {"order": n, "total": n * 10}} for n in (1, 2, 3)]
orders.append({"id": "py-order-poison", "type": "order.placed", "text": "not JSON"})
sluice.publish("py-example-orders", orders)
print(f"published {len(orders)} orders")

handled, dead, flaky_failed = 0, 0, False
deadline = time.time() + 20
while handled + dead < len(orders) and time.time() < deadline:
    for d in sluice.receive("py-example-billing", max=10, wait_ms=1000):
        m = d["message"]
        if "payload" not in m:
            sluice.dead_letter("py-example-billing", d["lease"], reason="undecodable payload",
                               last_error=f"expected JSON, got {m.get('text')!r}")
            dead += 1
        elif m["payload"]["order"] == 2 and not flaky_failed:
            # A downstream hiccup: try again in 100 ms (a new attempt, same message).
            flaky_failed = True
            sluice.retry("py-example-billing", d["lease"], delay_ms=100)
        else:
            print(f"order {m['payload']['order']}: total {m['payload']['total']} (attempt {d['attempt']})")
            sluice.ack("py-example-billing", d["lease"])
            handled += 1

assert (handled, dead) == (3, 1), (handled, dead)
print("3 orders handled (one after a retry), 1 dead-lettered")
