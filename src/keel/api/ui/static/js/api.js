// Talking to the API server: the session token, requests, watches (resumed from the last
// resourceVersion after a break) and the /ui live stream. Every URL is relative to the page,
// so the dashboard works over http and https and behind a path prefix alike.

const TOKEN_KEY = "keel.session";
export const GROUP = "apis/keel.dev/v1";
const base = new URL("..", document.baseURI.replace(/#.*$/, "")); // the server root (page is /ui/)
export const url = (path) => new URL(path, base).toString();

export const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  set(token) { sessionStorage.setItem(TOKEN_KEY, token); },
  clear() { sessionStorage.removeItem(TOKEN_KEY); },
  who: null,
};

export class ApiError extends Error {
  constructor(code, reason, message) { super(message); this.code = code; this.reason = reason; }
}

const listeners = { unauthorized: [] };
export function onUnauthorized(fn) { listeners.unauthorized.push(fn); }

async function failure(response) {
  let message = `${response.status} ${response.statusText}`, reason = "";
  try {
    const status = await response.json();
    message = status.message || message; reason = status.reason || "";
  } catch (_) { /* not a Status */ }
  if (response.status === 401) listeners.unauthorized.forEach((fn) => fn(message));
  return new ApiError(response.status, reason, message);
}

export async function request(method, path, body, contentType = "application/json") {
  const headers = { Accept: "application/json" };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = contentType;
  const response = await fetch(url(path), {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

// Log in: exchange a one-time code or a pasted bearer token for a session token.
export async function login({ code, token }) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token.trim()}`;
  const response = await fetch(url("ui/api/session"), {
    method: "POST", headers, body: JSON.stringify(code ? { code } : {}),
  });
  if (!response.ok) {
    const err = await failure(response);
    throw err;
  }
  const answer = await response.json();
  session.set(answer.token);
  session.who = answer;
  return answer;
}

export async function whoami() {
  session.who = await request("GET", "ui/api/whoami");
  return session.who;
}

export function objectPath(plural, namespace, name, sub) {
  let p = GROUP;
  if (namespace) p += `/namespaces/${encodeURIComponent(namespace)}`;
  p += `/${plural}`;
  if (name) p += `/${encodeURIComponent(name)}`;
  if (sub) p += `/${sub}`;
  return p;
}

export const keyOf = (obj) => `${obj.metadata.namespace || ""}/${obj.metadata.name}`;

// Read a stream of JSON lines, calling `onItem` for each; resolves when the stream ends.
async function readLines(response, onItem, onChunk) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    let at;
    let start = 0;
    while ((at = pending.indexOf("\n", start)) >= 0) {
      const text = pending.slice(start, at);
      start = at + 1;
      if (text) onItem(JSON.parse(text));
    }
    pending = pending.slice(start);
    if (onChunk) onChunk();
  }
}

// One kind, kept current by a watch: `items` maps namespace/name to the object.
export class Collection {
  constructor(plural) {
    this.plural = plural;
    this.items = new Map();
    this.rv = "";
    this.version = 0; // bumps on every change: pages redraw when it moved
    this.subscribers = new Set();
    this.abort = null;
    this.running = false;
    this.connected = false;
    this.synced = false;
    this.generation = 0; // a stopped loop must not go on after a quick stop and start
  }
  subscribe(fn) { this.subscribers.add(fn); return () => this.subscribers.delete(fn); }
  changed() { this.version++; for (const fn of this.subscribers) fn(this); }
  start() {
    if (this.running) return;
    this.running = true;
    this.loop(++this.generation);
  }
  stop() {
    this.running = false;
    if (this.abort) this.abort.abort();
  }
  async loop(generation) {
    let delay = 250;
    const mine = () => this.running && this.generation === generation;
    while (mine()) {
      this.abort = new AbortController();
      const params = new URLSearchParams({ watch: "1", allowWatchBookmarks: "true" });
      if (this.rv) params.set("resourceVersion", this.rv);
      const fresh = !this.rv; // a watch without resourceVersion starts with every object
      try {
        const response = await fetch(url(`${GROUP}/${this.plural}?${params}`), {
          headers: { Authorization: `Bearer ${session.token}` }, signal: this.abort.signal,
        });
        if (response.status === 410) { this.rv = ""; continue; }
        if (!response.ok) throw await failure(response);
        this.connected = true;
        status.update();
        if (fresh) this.items.clear(); // a relist: what comes now is everything there is
        await readLines(response, (event) => {
          if (event.type === "ERROR") {
            if (event.object && event.object.code === 410) this.rv = "";
            throw new ApiError(event.object.code, event.object.reason, event.object.message);
          }
          const obj = event.object;
          if (obj && obj.metadata && obj.metadata.resourceVersion) {
            const rv = obj.metadata.resourceVersion;
            if (!this.rv || Number(rv) > Number(this.rv)) this.rv = rv;
          }
          if (event.type === "BOOKMARK") return;
          const key = keyOf(obj);
          if (event.type === "DELETED") this.items.delete(key);
          else this.items.set(key, obj);
        }, () => {
          this.synced = true;
          this.changed();
        });
        delay = 250;
      } catch (err) {
        if (!mine()) break;
        if (err instanceof ApiError && err.code === 401) { this.running = false; break; }
        if (err instanceof ApiError && err.code === 410) this.rv = "";
      }
      if (!mine()) break;
      this.connected = false;
      status.update();
      await new Promise((r) => setTimeout(r, delay)); // resume from this.rv
      delay = Math.min(delay * 2, 5000);
    }
  }
}

const collections = new Map();
export function collection(plural) {
  if (!collections.has(plural)) collections.set(plural, new Collection(plural));
  return collections.get(plural);
}

// Keep exactly these kinds watched (a browser allows six connections to a server over
// HTTP/1.1: a page keeps at most four streams open, so requests always get through).
export function watchOnly(plurals) {
  for (const [plural, c] of collections) if (!plurals.includes(plural)) c.stop();
  return plurals.map((p) => { const c = collection(p); c.start(); return c; });
}

// The /ui live stream: boundary, renewals, events, heartbeats, usages.
export const live = {
  topics: "",
  abort: null,
  generation: 0,
  handlers: new Set(),
  connected: false,
  serverOffset: 0, // server wall time minus ours, in seconds
  on(fn) { this.handlers.add(fn); return () => this.handlers.delete(fn); },
  open(topics) {
    const wanted = topics.slice().sort().join(",");
    if (wanted === this.topics) return;
    this.close();
    this.topics = wanted;
    if (wanted) this.loop(wanted, ++this.generation);
  },
  close() { this.topics = ""; if (this.abort) this.abort.abort(); this.abort = null; },
  async loop(topics, generation) {
    let delay = 500;
    while (this.topics === topics && this.generation === generation) {
      const abort = (this.abort = new AbortController());
      try {
        const response = await fetch(url(`ui/api/live?topics=${topics}`), {
          headers: { Authorization: `Bearer ${session.token}` }, signal: abort.signal,
        });
        if (!response.ok) throw await failure(response);
        this.connected = true; status.update();
        await readLines(response, (msg) => {
          if (msg.type === "tick") this.serverOffset = msg.now - Date.now() / 1000;
          for (const fn of this.handlers) fn(msg);
        });
        delay = 500;
      } catch (err) {
        if (err instanceof ApiError && err.code === 401) break;
      }
      this.connected = false; status.update();
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  },
  now() { return Date.now() / 1000 + this.serverOffset; },
};

// The dot in the header: green while every stream the page uses is connected.
export const status = {
  update() {
    const dot = document.getElementById("live");
    if (!dot) return;
    const active = [...collections.values()].filter((c) => c.running);
    const ok = active.every((c) => c.connected) && (!live.topics || live.connected);
    dot.className = ok ? "live on" : "live off";
    dot.title = ok ? "live: watching" : "reconnecting…";
  },
};
