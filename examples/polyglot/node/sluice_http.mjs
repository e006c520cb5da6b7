// A small client of `sluice serve`'s HTTP data API for Node.js 18+ (global fetch, no
// dependencies). Copy this file into your service; docs/http-api.md describes the API.
//
//   import { Sluice } from "./sluice_http.mjs";
//   const sluice = new Sluice("http://127.0.0.1:7576", { token: process.env.SLUICE_TOKEN });
//   await sluice.ensureTopic("orders");
//   await sluice.ensureSubscription("billing", { topic: "orders", max_attempts: 5 });
//   await sluice.publish("orders", [{ id: "order-1", type: "order.placed", payload: { total: 12 } }]);
//   for (const d of await sluice.receive("billing", { max: 10, wait_ms: 5000 })) {
//     await handle(d.message);
//     await sluice.ack("billing", d.lease);
//   }

export class SluiceError extends Error {
  constructor(status, code, message, body) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

export class Sluice {
  constructor(url, { token, namespace } = {}) {
    this.url = url.replace(/\/$/, "");
    this.token = token;
    this.namespace = namespace;
  }

  async call(method, path, body, headers = {}) {
    const url = new URL(this.url + path);
    if (this.namespace) url.searchParams.set("namespace", this.namespace);
    const h = { ...headers };
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    let data = body;
    if (body !== undefined && !(body instanceof Uint8Array) && typeof body !== "string") {
      data = JSON.stringify(body);
      h["Content-Type"] ??= "application/json";
    }
    const response = await fetch(url, { method, headers: h, body: data });
    const text = await response.text();
    let answer = null;
    try {
      answer = text ? JSON.parse(text) : null;
    } catch {
      answer = { error: text, code: "http" };
    }
    if (!response.ok) {
      throw new SluiceError(response.status, answer?.code, answer?.error, answer);
    }
    return answer;
  }

  ensureTopic(topic, config = {}) {
    return this.call("PUT", `/api/v1/topics/${topic}`, config);
  }

  ensureSubscription(subscription, config) {
    return this.call("PUT", `/api/v1/subscriptions/${subscription}`, config);
  }

  // Messages: { payload | text | base64, id, type, routing_key, ordering_key, headers,
  // content_type, delay_ms }. Answered once durable; none is published if one is invalid.
  async publish(topic, messages) {
    return (await this.call("POST", `/api/v1/topics/${topic}/messages`, { messages })).results;
  }

  // One CloudEvent in structured mode.
  async publishEvent(topic, event) {
    const headers = { "Content-Type": "application/cloudevents+json" };
    return (await this.call("POST", `/api/v1/topics/${topic}/messages`, JSON.stringify(event), headers)).results;
  }

  async receive(subscription, { max = 1, wait_ms = 0, format = "sluice" } = {}) {
    const body = { max, wait_ms, format };
    return (await this.call("POST", `/api/v1/subscriptions/${subscription}/receive`, body)).deliveries;
  }

  async settle(subscription, settlements) {
    return (await this.call("POST", `/api/v1/subscriptions/${subscription}/settle`, { settlements })).results;
  }

  async one(subscription, settlement) {
    const [result] = await this.settle(subscription, [settlement]);
    if (result.status !== "ok") {
      const retryable = ["unavailable", "closed", "timeout", "backlog_full"].includes(result.code);
      throw new SluiceError(result.code === "lease_lost" ? 410 : retryable ? 503 : 400, result.code, result.error, result);
    }
  }

  ack(subscription, lease) {
    return this.one(subscription, { lease, verb: "ack" });
  }

  retry(subscription, lease, delay_ms = 0) {
    return this.one(subscription, { lease, verb: "retry", delay_ms });
  }

  deadLetter(subscription, lease, reason, last_error) {
    return this.one(subscription, { lease, verb: "dead_letter", reason, last_error });
  }

  extend(subscription, lease, lease_ms) {
    return this.one(subscription, { lease, verb: "extend", lease_ms });
  }
}
