// An order service in Node.js on `sluice serve`: publishes orders (one of them poison),
// consumes them, acks the good ones and dead-letters the poison one with its reason.
//
//   sluice serve --data ./data          # HTTP API on 127.0.0.1:7576
//   node examples/polyglot/node/example.mjs http://127.0.0.1:7576
import assert from "node:assert/strict";
import { Sluice } from "./sluice_http.mjs";

const sluice = new Sluice(process.argv[2] ?? "http://127.0.0.1:7576", { token: process.env.SLUICE_TOKEN });
await sluice.ensureTopic("node-orders");
await sluice.ensureSubscription("node-billing", { topic: "node-orders", start: "earliest", max_attempts: 3 });

const orders = [1, 2, 3].map((n) => ({ id: `node-order-${n}`, type: "order.placed", payload: { order: n, total: n * 10 } }));
orders.push({ id: "node-order-poison", type: "order.placed", text: "not JSON" });
const results = await sluice.publish("node-orders", orders);
console.log(`published ${results.filter((r) => r.status !== "failed").length} orders`);

let handled = 0;
let deadLettered = 0;
const deadline = Date.now() + 20_000;
while (handled + deadLettered < orders.length && Date.now() < deadline) {
  for (const d of await sluice.receive("node-billing", { max: 10, wait_ms: 1000 })) {
    const m = d.message;
    if (m.payload === undefined) {
      await sluice.deadLetter("node-billing", d.lease, "undecodable payload", `expected JSON, got ${JSON.stringify(m.text)}`);
      deadLettered += 1;
      continue;
    }
    console.log(`order ${m.payload.order}: total ${m.payload.total} (attempt ${d.attempt})`);
    await sluice.ack("node-billing", d.lease);
    handled += 1;
  }
}
assert.equal(handled, 3);
assert.equal(deadLettered, 1);
console.log("3 orders handled, 1 dead-lettered");
