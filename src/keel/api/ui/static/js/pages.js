// The pages. Each says which kinds it watches and which live topics it needs, and mounts
// itself into <main>; lists go through VTable, so only the visible rows are ever drawn.
import { collection, live, request, session, keyOf } from "./api.js";
import { actions, ownedRevisions } from "./actions.js";
import { VTable, esc } from "./vlist.js";
import { confirmDialog, toast } from "./ui.js";

// ----------------------------------------------------------------------------- helpers

export function cpu(q) { // cores
  if (q === undefined || q === null || q === "") return 0;
  if (typeof q === "number") return q;
  const m = /^([0-9.]+)(m?)$/.exec(q);
  return m ? Number(m[1]) / (m[2] ? 1000 : 1) : 0;
}
const UNITS = { "": 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4, m: 1e-3 };
export function bytes(q) {
  if (q === undefined || q === null || q === "") return 0;
  if (typeof q === "number") return q;
  const m = /^([0-9.]+)([a-zA-Z]*)$/.exec(q);
  return m ? Number(m[1]) * (UNITS[m[2]] ?? 1) : 0;
}
const fmtCpu = (c) => (c >= 10 ? c.toFixed(0) : c >= 1 ? c.toFixed(1) : `${Math.round(c * 1000)}m`);
function fmtBytes(b) {
  if (b >= 1024 ** 3) return `${(b / 1024 ** 3).toFixed(1)}Gi`;
  if (b >= 1024 ** 2) return `${Math.round(b / 1024 ** 2)}Mi`;
  if (b >= 1024) return `${Math.round(b / 1024)}Ki`;
  return `${Math.round(b)}`;
}
function age(ts) {
  if (!ts) return "";
  const s = Math.max(0, live.now() - Date.parse(ts) / 1000);
  if (s < 120) return `${Math.round(s)}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}
const cond = (obj, type) => ((obj.status || {}).conditions || []).find((c) => c.type === type);
const nsName = (o) => (o.metadata.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : o.metadata.name);
function nodeState(node) {
  const ready = cond(node, "Ready");
  const state = !ready ? "Unknown" : ready.status === "True" ? "Ready" : ready.status === "False" ? "NotReady" : "Unknown";
  return { state, cordoned: !!(node.spec || {}).unschedulable };
}
function instanceReady(inst) { const c = cond(inst, "Ready"); return !!c && c.status === "True"; }

// Redraw at most every `ms` while things change (50,000 objects re-sort in tens of ms).
function throttled(fn, ms) {
  let timer = null, last = 0;
  const run = () => { timer = null; last = performance.now(); fn(); };
  return () => {
    if (timer) return;
    const wait = Math.max(0, ms - (performance.now() - last));
    timer = setTimeout(run, wait);
  };
}

function el(html) {
  const t = document.createElement("template");
  t.innerHTML = html.trim();
  return t.content.firstElementChild;
}

function watchAll(colls, redraw) {
  const offs = colls.map((c) => c.subscribe(redraw));
  return () => offs.forEach((off) => off());
}

const canAct = () => !!(session.who && session.who.canAct);

async function act(text, run, extra = "") {
  const form = await confirmDialog(text, extra);
  if (!form) return;
  try {
    toast(await run(form), "ok");
  } catch (err) {
    toast(err.code === 403 ? `Refused: ${err.message}` : err.message, "bad");
  }
}

// Events from the live stream, shared by the pages that show them.
export const events = { items: [], version: 0 };
live.on((msg) => {
  if (msg.type !== "events") return;
  if (msg.reset) events.items = [];
  events.items.push(...msg.items);
  if (events.items.length > 5000) events.items.splice(0, events.items.length - 5000);
  events.version++;
});
const renewals = { items: {} };
live.on((msg) => { if (msg.type === "renewals") Object.assign(renewals.items, msg.items); });
const telemetry = { heartbeats: new Map(), usages: new Map() };
live.on((msg) => {
  if (msg.type !== "heartbeats" && msg.type !== "usages") return;
  const map = telemetry[msg.type];
  for (const item of msg.items) {
    const key = `${item.namespace}/${item.name}`;
    if (item.gone) map.delete(key); else map.set(key, item);
  }
});

function eventsOf(kind, namespace, name) {
  return events.items.filter((e) => e.involvedObject.kind === kind && e.involvedObject.name === name
    && (e.involvedObject.namespace || "") === (namespace || ""));
}
function eventRows(list) {
  if (!list.length) return `<p class="dim">no events</p>`;
  return `<table class="plain"><tr><th>time</th><th>type</th><th>reason</th><th>message</th></tr>${
    list.slice(-15).reverse().map((e) => `<tr><td>${esc(age(e.time))}</td><td class="${e.type === "Warning" ? "warn" : ""}">${esc(e.type)}</td><td>${esc(e.reason)}</td><td>${esc(e.message)}</td></tr>`).join("")}</table>`;
}
function condRows(conds) {
  if (!conds || !conds.length) return `<p class="dim">no conditions</p>`;
  return `<table class="plain"><tr><th>type</th><th>status</th><th>reason</th><th>message</th></tr>${
    conds.map((c) => `<tr><td>${esc(c.type)}</td><td class="${c.status === "True" ? "ok" : "warn"}">${esc(c.status)}</td><td>${esc(c.reason)}</td><td>${esc(c.message)}</td></tr>`).join("")}</table>`;
}
// Every plain field of a rollout's status (steps and waves included, whatever the
// controller reports), so a new status field shows without a change here.
function statusRows(status) {
  const rows = Object.entries(status || {}).filter(([k, v]) => k !== "conditions" && v !== "" && (typeof v !== "object" || v === null));
  if (!rows.length) return `<p class="dim">not reported yet</p>`;
  return `<table class="plain">${rows.map(([k, v]) => `<tr><td>${esc(k)}</td><td class="mono" data-status="${esc(k)}">${esc(v)}</td></tr>`).join("")}</table>`;
}
function steps(dep) {
  // Canary steps and waves, the current one marked (status.currentStep / currentWave).
  const strategy = dep.spec.strategy || {};
  const s = dep.status || {};
  const stepping = s.stableRevision && s.stableRevision !== s.updateRevision;
  const parts = [];
  const list = (strategy.canary || {}).steps || [];
  if (list.length) {
    const text = list.map((st, i) => {
      let what = "analysis";
      if (st.setWeight !== undefined && st.setWeight !== null) what = `setWeight ${st.setWeight}%`;
      else if (st.pause) what = st.pause.duration == null ? "pause (promote)" : `pause ${st.pause.duration}s`;
      const here = stepping && i === (s.currentStep || 0);
      return `<span class="step${here ? " current" : ""}" data-step="${i}">${i + 1}: ${esc(what)}</span>`;
    }).join(" → ");
    parts.push(`<h3>canary steps</h3><p class="mono" data-current-step="${stepping ? s.currentStep || 0 : ""}">${text}</p>`);
  }
  const waves = strategy.waves || [];
  if (waves.length) {
    const text = waves.map((w, i) => {
      const label = w.name || (w.clusters || []).join(",") || "selected clusters";
      const here = stepping && i === (s.currentWave || 0);
      return `<span class="step${here ? " current" : ""}" data-wave="${i}">${i + 1}: ${esc(label)}</span>`;
    }).join(" → ");
    parts.push(`<h3>waves</h3><p class="mono">${text}</p>`);
  }
  return parts.join("");
}

// ----------------------------------------------------------------------------- overview

const overview = {
  kinds: ["clusters", "nodes", "instances"],
  topics: ["heartbeats"],
  mount(main) {
    main.innerHTML = `<h2>Overview</h2><div class="cards" id="summary"></div><div class="cards" id="clusters"></div>
      <div class="toolbar"><input id="filter" placeholder="filter nodes" aria-label="filter nodes"></div>`;
    const table = new VTable(main, [
      { title: "node", width: 200, text: (r) => r.name },
      { title: "cluster", width: 110, text: (r) => r.cluster },
      { title: "status", width: 150, text: (r) => r.state + (r.cordoned ? ",cordoned" : ""), cls: (r) => (r.state !== "Ready" ? "bad" : r.cordoned ? "warn" : "ok") },
      { title: "cpu alloc/cap", width: 120, text: (r) => `${fmtCpu(r.cpuAlloc)}/${fmtCpu(r.cpuCap)}` },
      { title: "mem alloc/cap", width: 140, text: (r) => `${fmtBytes(r.memAlloc)}/${fmtBytes(r.memCap)}` },
      { title: "cpu used", width: 90, text: (r) => (r.cpuUse === null ? "–" : fmtCpu(r.cpuUse)) },
      { title: "mem used", width: 90, text: (r) => (r.memUse === null ? "–" : fmtBytes(r.memUse)) },
      { title: "instances", width: 80, text: (r) => r.instances },
    ], { height: 460, label: "nodes", keyOf: (r) => r.name });
    const filter = main.querySelector("#filter");
    const [clusters, nodes, instances] = overview.kinds.map(collection);
    const draw = () => {
      const alloc = new Map();
      const phases = {};
      for (const inst of instances.items.values()) {
        const phase = (inst.status || {}).phase || "Pending";
        phases[phase] = (phases[phase] || 0) + 1;
        const node = inst.spec.nodeName;
        if (!node || phase === "Succeeded" || phase === "Failed") continue;
        const a = alloc.get(node) || { cpu: 0, mem: 0, n: 0 };
        const res = inst.spec.resources || {};
        a.cpu += cpu(res.cpu); a.mem += bytes(res.memory); a.n++;
        alloc.set(node, a);
      }
      const rows = [];
      const perCluster = new Map();
      let ready = 0, cordoned = 0;
      const f = filter.value.trim();
      for (const node of nodes.items.values()) {
        const { state, cordoned: c } = nodeState(node);
        const name = node.metadata.name, cluster = node.spec.cluster || "";
        const pc = perCluster.get(cluster) || { nodes: 0, ready: 0 };
        pc.nodes++; if (state === "Ready") { pc.ready++; ready++; }
        perCluster.set(cluster, pc);
        if (c) cordoned++;
        if (f && !name.includes(f) && !cluster.includes(f)) continue;
        const cap = (node.status || {}).allocatable || node.spec.capacity || {};
        const a = alloc.get(name) || { cpu: 0, mem: 0, n: 0 };
        const hb = telemetry.heartbeats.get(`/${name}`);
        rows.push({ name, cluster, state, cordoned: c, cpuCap: cpu(cap.cpu), memCap: bytes(cap.memory),
          cpuAlloc: a.cpu, memAlloc: a.mem, instances: a.n,
          cpuUse: hb ? cpu(hb.cpuUsage) : null, memUse: hb ? bytes(hb.memoryUsage) : null,
          rank: state !== "Ready" ? 0 : c ? 1 : 2 });
      }
      rows.sort((a, b) => a.rank - b.rank || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      table.setRows(rows);
      const total = nodes.items.size;
      main.querySelector("#summary").innerHTML = [
        ["nodes", total, ""], ["ready", ready, "ok"], ["not ready", total - ready, total - ready ? "bad" : "dim"],
        ["cordoned", cordoned, cordoned ? "warn" : "dim"], ["instances", instances.items.size, ""],
        ["running", phases.Running || 0, "ok"], ["pending", (phases.Pending || 0) + (phases.Scheduled || 0), phases.Pending ? "warn" : "dim"],
        ["failed", phases.Failed || 0, phases.Failed ? "bad" : "dim"],
      ].map(([t, n, cls]) => `<div class="card" data-card="${t}"><div class="big ${cls}">${n.toLocaleString("en")}</div><div class="dim">${t}</div></div>`).join("");
      main.querySelector("#clusters").innerHTML = [...clusters.items.values()].sort((a, b) => (a.metadata.name < b.metadata.name ? -1 : 1)).map((cl) => {
        const pc = perCluster.get(cl.metadata.name) || { nodes: 0, ready: 0 };
        const bad = pc.ready < pc.nodes || pc.nodes === 0;
        return `<div class="card" data-cluster="${esc(cl.metadata.name)}"><b>${esc(cl.metadata.name)}</b> <span class="${bad ? "warn" : "ok"}">${pc.ready}/${pc.nodes} ready</span>
          <div class="dim">${esc([cl.spec.region, cl.spec.zone].filter(Boolean).join(" / ") || "")}</div></div>`;
      }).join("");
    };
    const redraw = throttled(draw, 200);
    filter.addEventListener("input", redraw);
    const offLive = live.on((m) => { if (m.type === "heartbeats") redraw(); });
    const off = watchAll([clusters, nodes, instances], redraw);
    draw();
    return () => { off(); offLive(); };
  },
};

// ----------------------------------------------------------------------------- deployments

const deployments = {
  kinds: ["deployments", "revisions", "instances"],
  topics: ["events"],
  mount(main) {
    main.innerHTML = `<h2>Deployments</h2><div class="split"><div id="list"></div><div class="detail" id="detail"><p class="dim">select a deployment</p></div></div>`;
    const [deps, revs, insts] = deployments.kinds.map(collection);
    let selected = null;
    const table = new VTable(main.querySelector("#list"), [
      { title: "deployment", width: 190, text: (r) => r.key },
      { title: "phase", width: 100, text: (r) => r.phase, cls: (r) => (r.phase === "Failed" || r.phase === "RolledBack" ? "bad" : r.phase === "Complete" ? "ok" : "warn") },
      { title: "ready", width: 70, text: (r) => `${r.ready}/${r.replicas}` },
      { title: "updated", width: 70, text: (r) => r.updated },
      { title: "strategy", width: 110, text: (r) => r.strategy },
    ], { height: 460, label: "deployments", onSelect: (r) => { selected = r && r.key; detail(); } });
    const detailEl = main.querySelector("#detail");
    const draw = () => {
      const rows = [...deps.items.values()].map((d) => {
        const s = d.status || {};
        return { key: nsName(d), phase: d.spec.paused ? "Paused" : s.phase || "–", ready: s.readyReplicas || 0,
          replicas: d.spec.replicas, updated: s.updatedReplicas || 0, strategy: d.spec.strategy.type };
      });
      const rank = (p) => (p === "Failed" || p === "RollingBack" || p === "RolledBack" ? 0 : p === "Complete" ? 2 : 1);
      rows.sort((a, b) => rank(a.phase) - rank(b.phase) || (a.key < b.key ? -1 : 1));
      table.setRows(rows);
      if (!selected && rows.length) { selected = rows[0].key; table.selected = selected; }
      detail();
    };
    function detail() {
      const dep = selected && deps.items.get(selected);
      if (!dep) { detailEl.innerHTML = `<p class="dim">select a deployment</p>`; return; }
      const s = dep.status || {};
      const owned = ownedRevisions(dep, [...revs.items.values()]);
      const byHash = {};
      for (const inst of insts.items.values()) {
        if (inst.metadata.namespace !== dep.metadata.namespace) continue;
        if (!(inst.metadata.ownerReferences || []).some((o) => o.uid === dep.metadata.uid)) continue;
        const h = (inst.metadata.labels || {})["keel.dev/template-hash"] || "?";
        const b = byHash[h] || (byHash[h] = { total: 0, ready: 0 });
        b.total++; if (instanceReady(inst)) b.ready++;
      }
      const revRows = owned.slice().reverse().map((r) => {
        const h = (r.metadata.labels || {})["keel.dev/template-hash"] || "";
        const b = byHash[h] || { total: 0, ready: 0 };
        const tags = [h === s.updateRevision ? "update" : "", h === s.currentRevision ? "current" : "", h === s.stableRevision ? "stable" : "", h === s.failedRevision ? "failed" : ""].filter(Boolean).join(", ");
        return `<tr data-revision="${r.spec.revision}"><td>${r.spec.revision}</td><td class="mono">${esc(h)}</td><td>${esc(tags)}</td><td>${b.ready}/${b.total} ready</td><td class="mono">${esc((r.spec.template.spec.command || []).join(" ").slice(0, 60))}</td></tr>`;
      }).join("");
      const disabled = canAct() ? "" : ` title="read-only: your role cannot act"`;
      detailEl.innerHTML = `<h2 data-deployment="${esc(nsName(dep))}">${esc(nsName(dep))}</h2>
        <div>phase <b class="phase" data-phase="${esc(s.phase || "")}">${esc(dep.spec.paused ? "Paused" : s.phase || "–")}</b>
          · ${s.readyReplicas || 0}/${dep.spec.replicas} ready · ${s.updatedReplicas || 0} updated · strategy ${esc(dep.spec.strategy.type)}</div>
        <div class="actions">
          <button data-act="scale"${disabled}>Scale…</button>
          <button data-act="${dep.spec.paused ? "resume" : "pause"}"${disabled}>${dep.spec.paused ? "Resume" : "Pause"}</button>
          <button data-act="undo"${disabled}>Undo</button>
          <button data-act="promote"${disabled}>Promote</button>
          <button data-act="abort"${disabled}>Abort</button>
        </div>
        ${steps(dep)}
        <h3>status</h3>${statusRows(s)}
        <h3>revisions</h3><table class="plain"><tr><th>#</th><th>hash</th><th></th><th>instances</th><th>command</th></tr>${revRows}</table>
        <h3>conditions</h3>${condRows(s.conditions)}
        <h3>events</h3>${eventRows(eventsOf("Deployment", dep.metadata.namespace, dep.metadata.name))}`;
      detailEl.querySelectorAll("button[data-act]").forEach((b) => b.addEventListener("click", () => onAction(b.dataset.act, dep)));
    }
    function onAction(kind, dep) {
      const name = nsName(dep);
      if (kind === "scale") {
        act(`Scale ${name}?`, (form) => actions.scale(dep, Number(form.get("replicas"))),
          `<label>replicas <input name="replicas" type="number" min="0" value="${dep.spec.replicas}"></label>`);
      } else if (kind === "undo") {
        act(`Roll ${name} back to its previous revision?`, () => actions.undo(dep, [...revs.items.values()]));
      } else {
        act(`${kind[0].toUpperCase() + kind.slice(1)} the rollout of ${name}?`, () => actions[kind](dep));
      }
    }
    const redraw = throttled(draw, 150);
    const off = watchAll([deps, revs, insts], redraw);
    const offLive = live.on((m) => { if (m.type === "events") redraw(); });
    draw();
    return () => { off(); offLive(); };
  },
};

// ----------------------------------------------------------------------------- instances

const instances = {
  kinds: ["instances"],
  topics: ["usages"],
  mount(main) {
    main.innerHTML = `<h2>Instances</h2><div class="toolbar"><input id="filter" placeholder="filter: name, node or phase" aria-label="filter instances">
      </div><div class="split"><div id="list"></div><div class="detail" id="detail"><p class="dim">select an instance</p></div></div>`;
    const insts = collection("instances");
    const filter = main.querySelector("#filter");
    let selected = null;
    const table = new VTable(main.querySelector("#list"), [
      { title: "instance", width: 210, text: (r) => r.key },
      { title: "phase", width: 80, text: (r) => r.phase, cls: (r) => (r.phase === "Failed" ? "bad" : r.phase === "Running" ? "ok" : "warn") },
      { title: "ready", width: 50, text: (r) => (r.ready ? "yes" : "no"), cls: (r) => (r.ready ? "ok" : "warn") },
      { title: "node", width: 100, text: (r) => r.node },
      { title: "restarts", width: 65, text: (r) => r.restarts },
      { title: "ports", width: 120, text: (r) => r.ports },
    ], { height: 480, label: "instances", onSelect: (r) => { selected = r && r.key; detail(true); } });
    const detailEl = main.querySelector("#detail");
    const draw = () => {
      const f = filter.value.trim();
      const rows = [];
      for (const inst of insts.items.values()) {
        const key = nsName(inst), s = inst.status || {}, node = inst.spec.nodeName || "";
        const phase = s.phase || "Pending";
        if (f && !key.includes(f) && !node.includes(f) && phase !== f) continue;
        const usage = telemetry.usages.get(`${inst.metadata.namespace}/${inst.metadata.name}`);
        rows.push({ key, phase, node, ready: instanceReady(inst), restarts: usage ? usage.restarts : "–",
          ports: (s.ports || []).map((p) => `${p.name}:${p.port}`).join(" "),
          rank: phase === "Failed" ? 0 : phase === "Running" && instanceReady(inst) ? 2 : 1 });
      }
      rows.sort((a, b) => a.rank - b.rank || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
      table.setRows(rows);
      if (!selected && rows.length) { selected = table.selected = rows[0].key; return detail(true); }
      detail(false);
    };
    let logFor = null;
    let logMissing = false;
    async function detail(loadLog) {
      const inst = selected && insts.items.get(selected);
      if (!inst) { detailEl.innerHTML = `<p class="dim">select an instance</p>`; return; }
      const s = inst.status || {};
      const body = `<h2>${esc(selected)}</h2><table class="plain">
        <tr><td>phase</td><td>${esc(s.phase || "Pending")}</td></tr><tr><td>node</td><td>${esc(inst.spec.nodeName || "–")}</td></tr>
        <tr><td>ports</td><td>${esc((s.ports || []).map((p) => `${p.name} ${s.hostIP || ""}:${p.port}`).join(", ") || "–")}</td></tr>
        <tr><td>started</td><td>${esc(age(s.startedAt))}</td></tr><tr><td>message</td><td>${esc(s.message || "")}</td></tr></table>
        <h3>conditions</h3>${condRows(s.conditions)}
        <h3>log <button class="link" id="reload-log">reload</button></h3><pre class="log" id="log">${logFor === selected ? "" : "…"}</pre>`;
      const old = detailEl.querySelector("#log");
      const keep = old && logFor === selected ? old.textContent : null;
      detailEl.innerHTML = body;
      detailEl.querySelector("#reload-log").addEventListener("click", () => loadTail());
      if (keep !== null && !loadLog) detailEl.querySelector("#log").textContent = keep;
      else loadTail();
    }
    async function loadTail() {
      const inst = selected && insts.items.get(selected);
      if (!inst) return;
      const key = selected;
      logFor = key;
      let text;
      logMissing = false;
      try {
        text = await request("GET", `ui/api/logs/${encodeURIComponent(inst.metadata.namespace)}/${encodeURIComponent(inst.metadata.name)}?tail=200`);
      } catch (err) { text = `(${err.message})`; logMissing = err.code === 404; }
      const pre = detailEl.querySelector("#log");
      if (pre && logFor === key) { pre.textContent = text || "(empty)"; pre.scrollTop = pre.scrollHeight; }
    }
    const redraw = throttled(draw, 200);
    filter.addEventListener("input", redraw);
    const off = watchAll([insts], redraw);
    const offLive = live.on((m) => {
      if (m.type !== "usages") return;
      redraw();
      // The agent publishes where the log is with the instance's usage: try again then.
      if (logMissing && m.items.some((u) => `${u.namespace}/${u.instance || u.name}` === selected)) loadTail();
    });
    draw();
    return () => { off(); offLive(); };
  },
};

// ----------------------------------------------------------------------------- services

function timeLeft(lease) {
  const key = `${lease.metadata.namespace}/${lease.metadata.name}`;
  const acquired = lease.status && lease.status.acquireTime ? Date.parse(lease.status.acquireTime) / 1000 : 0;
  const last = Math.max(renewals.items[key] || 0, acquired);
  if (!last) return null;
  return Math.max(0, lease.spec.leaseDurationSeconds - (live.now() - last));
}

const services = {
  kinds: ["services", "endpoints", "leases"],
  topics: ["leases"],
  mount(main) {
    main.innerHTML = `<h2>Services</h2><div id="svc"></div><h3>endpoints</h3><div id="eps"></div>`;
    const [svcs, eps, leases] = services.kinds.map(collection);
    const svcTable = new VTable(main.querySelector("#svc"), [
      { title: "service", width: 220, text: (r) => r.key },
      { title: "type", width: 110, text: (r) => r.type },
      { title: "ports", width: 160, text: (r) => r.ports },
      { title: "ready endpoints", width: 120, text: (r) => `${r.ready}/${r.total}`, cls: (r) => (r.ready ? "ok" : "bad") },
    ], { height: 200, label: "services" });
    const epTable = new VTable(main.querySelector("#eps"), [
      { title: "service", width: 200, text: (r) => r.service },
      { title: "address", width: 170, text: (r) => r.address },
      { title: "ready", width: 55, text: (r) => (r.ready ? "yes" : "no"), cls: (r) => (r.ready ? "ok" : "warn") },
      { title: "instance / registration", width: 230, text: (r) => r.source },
      { title: "node / holder", width: 140, text: (r) => r.where },
      { title: "ttl", width: 50, text: (r) => r.ttl },
      { title: "time left", width: 80, text: (r) => (r.left === null ? "" : `${r.left.toFixed(1)}s`), cls: (r) => (r.left !== null && r.left < 2 ? "bad countdown" : "countdown") },
    ], { height: 300, label: "endpoints" });
    const draw = () => {
      const rows = [], epRows = [];
      for (const svc of svcs.items.values()) {
        const ep = eps.items.get(keyOf(svc));
        const addrs = ep ? (ep.subsets || []).flatMap((s) => s.addresses || []) : [];
        rows.push({ key: nsName(svc), type: svc.spec.selector ? "selector" : "external", ports: (svc.spec.ports || []).map((p) => `${p.name || ""}:${p.port}`).join(" "),
          ready: addrs.filter((a) => a.ready !== false).length, total: addrs.length });
        for (const a of addrs) {
          const lease = a.lease ? leases.items.get(`${svc.metadata.namespace}/${a.lease}`) : null;
          epRows.push({ key: `${nsName(svc)}/${a.ip}:${a.port}`, service: nsName(svc), address: `${a.ip}:${a.port}`, ready: a.ready !== false,
            source: a.lease ? `lease ${a.lease}` : a.instance, where: lease ? lease.spec.holderIdentity : a.node,
            ttl: lease ? `${lease.spec.leaseDurationSeconds}s` : "", left: lease ? timeLeft(lease) : null });
        }
      }
      rows.sort((a, b) => (a.ready ? 1 : 0) - (b.ready ? 1 : 0) || (a.key < b.key ? -1 : 1)); // problems first
      epRows.sort((a, b) => (a.key < b.key ? -1 : 1));
      svcTable.setRows(rows);
      epTable.setRows(epRows);
    };
    const redraw = throttled(draw, 150);
    const off = watchAll([svcs, eps, leases], redraw);
    const ticker = setInterval(draw, 500); // countdowns (a clock, not a poll: no requests)
    draw();
    return () => { off(); clearInterval(ticker); };
  },
};

// ----------------------------------------------------------------------------- leases

const history = new Map(); // ns/name -> [{holder, token, at}] seen since the page opened
const leasesPage = {
  kinds: ["leases"],
  topics: ["leases"],
  mount(main) {
    main.innerHTML = `<h2>Leases</h2><p class="dim">holder, fencing token (rises with every new holder) and time left; a failover shows as a new holder with a higher token.</p><div id="list"></div><h3>transitions seen</h3><div id="hist"></div>`;
    const leases = collection("leases");
    const table = new VTable(main.querySelector("#list"), [
      { title: "lease", width: 260, text: (r) => r.key },
      { title: "holder", width: 200, text: (r) => r.holder },
      { title: "fencing token", width: 100, text: (r) => r.token },
      { title: "duration", width: 70, text: (r) => `${r.duration}s` },
      { title: "time left", width: 80, text: (r) => (r.left === null ? "?" : `${r.left.toFixed(1)}s`), cls: (r) => (r.left !== null && r.left < 2 ? "bad countdown" : "countdown") },
      { title: "transitions", width: 80, text: (r) => r.transitions },
      { title: "acquired", width: 80, text: (r) => age(r.acquired) },
    ], { height: 420, label: "leases" });
    const record = () => {
      for (const l of leases.items.values()) {
        const key = keyOf(l);
        const h = history.get(key) || [];
        const token = l.status.fencingToken, holder = l.spec.holderIdentity;
        if (!h.length || h[h.length - 1].token !== token || h[h.length - 1].holder !== holder) {
          h.push({ holder, token, at: new Date().toISOString().slice(11, 19) });
          history.set(key, h);
        }
      }
    };
    const draw = () => {
      record();
      const rows = [...leases.items.values()].map((l) => ({
        key: nsName(l), holder: l.spec.holderIdentity, token: l.status.fencingToken, duration: l.spec.leaseDurationSeconds,
        left: timeLeft(l), transitions: Math.max(0, (history.get(keyOf(l)) || []).length - 1), acquired: l.status.acquireTime,
        system: l.metadata.namespace === "keel-node-lease" ? 1 : 0,
      }));
      rows.sort((a, b) => a.system - b.system || (a.key < b.key ? -1 : 1));
      table.setRows(rows);
      const moved = [...history.entries()].filter(([, h]) => h.length > 1);
      main.querySelector("#hist").innerHTML = moved.length ? `<table class="plain">${moved.map(([k, h]) =>
        `<tr data-lease="${esc(k)}"><td>${esc(k)}</td><td>${h.map((x) => `${esc(x.at)} ${esc(x.holder)} (token ${x.token})`).join(" → ")}</td></tr>`).join("")}</table>` : `<p class="dim">none yet</p>`;
    };
    const redraw = throttled(draw, 100);
    const off = watchAll([leases], redraw);
    const ticker = setInterval(() => table.schedule(), 250);
    const tick = setInterval(draw, 500);
    draw();
    return () => { off(); clearInterval(ticker); clearInterval(tick); };
  },
};

// ----------------------------------------------------------------------------- boundary

const boundary = {
  kinds: [],
  topics: ["boundary"],
  mount(main) {
    main.innerHTML = `<h2>Consensus boundary</h2><p class="dim">store writes (consensus writes) counted by this API server, per kind and verb: over the last minute, live, and since it started. Telemetry never reaches the store.</p>
      <div class="cards" id="cards"></div><table class="plain" id="kinds"></table>`;
    let storage = [], snap = null;
    const draw = () => {
      if (!snap) return;
      const verbs = ["create", "update", "patch", "delete"];
      const all = new Set(verbs);
      for (const k of Object.values(snap.totals)) Object.keys(k).forEach((v) => all.add(v));
      const vs = [...all];
      const perMin = Object.values(snap.perMinute).reduce((n, k) => n + Object.values(k).reduce((a, b) => a + b, 0), 0);
      const total = Object.values(snap.totals).reduce((n, k) => n + Object.values(k).reduce((a, b) => a + b, 0), 0);
      const since = snap.secondsSinceWrite;
      main.querySelector("#cards").innerHTML = [
        ["writes / min", perMin, perMin ? "warn" : "ok"], ["writes since start", total, ""],
        ["idle writes", snap.idleWrites, snap.idleWrites ? "bad" : "ok"], ["idle minutes", snap.idleMinutes, "dim"],
        ["since last write", since === null ? "never" : `${Math.round(since)}s`, "dim"],
      ].map(([t, n, cls]) => `<div class="card" data-card="${t}"><div class="big ${cls}">${esc(n)}</div><div class="dim">${t}</div></div>`).join("");
      main.querySelector("#kinds").innerHTML = `<tr><th>kind</th><th>storage</th>${vs.map((v) => `<th>${v}/min</th>`).join("")}<th>total</th><th>why</th></tr>` +
        storage.map((s) => {
          const m = snap.perMinute[s.kind] || {}, t = snap.totals[s.kind] || {};
          const sum = Object.values(t).reduce((a, b) => a + b, 0);
          return `<tr data-kind="${esc(s.kind)}"><td>${esc(s.kind)}</td><td class="${s.storage === "memory" ? "dim" : ""}">${esc(s.storage)}</td>${vs.map((v) => `<td>${m[v] || ""}</td>`).join("")}<td>${sum}</td><td class="dim">${esc(s.why)}</td></tr>`;
        }).join("");
    };
    const off = live.on((msg) => {
      if (msg.type === "storage") storage = msg.items;
      if (msg.type === "boundary") { snap = msg; draw(); }
    });
    main.querySelector("#cards").innerHTML = `<p class="dim">connecting…</p>`;
    return off;
  },
};

// ----------------------------------------------------------------------------- events

const eventsPage = {
  kinds: [],
  topics: ["events"],
  mount(main) {
    main.innerHTML = `<h2>Events</h2><div class="toolbar"><input id="filter" placeholder="filter: object, reason or message" aria-label="filter events">
      <select id="type" aria-label="event type"><option value="">all types</option><option>Normal</option><option>Warning</option></select>
      <select id="kind" aria-label="object kind"><option value="">all kinds</option></select></div><div id="list"></div>`;
    const filter = main.querySelector("#filter"), type = main.querySelector("#type"), kindSel = main.querySelector("#kind");
    const table = new VTable(main.querySelector("#list"), [
      { title: "age", width: 55, text: (r) => age(r.time) },
      { title: "type", width: 70, text: (r) => r.type, cls: (r) => (r.type === "Warning" ? "warn" : "") },
      { title: "object", width: 320, text: (r) => r.object },
      { title: "reason", width: 150, text: (r) => r.reason },
      { title: "message", width: 420, text: (r) => r.message },
      { title: "source", width: 140, text: (r) => r.source },
    ], { height: 520, label: "events" });
    const kinds = new Set();
    const draw = () => {
      const f = filter.value.trim().toLowerCase(), t = type.value, k = kindSel.value;
      const rows = [];
      for (let i = events.items.length - 1; i >= 0; i--) {
        const e = events.items[i], o = e.involvedObject;
        if (!kinds.has(o.kind)) { kinds.add(o.kind); kindSel.append(new Option(o.kind, o.kind)); }
        const object = `${o.kind}/${o.namespace ? `${o.namespace}/` : ""}${o.name}`;
        if (t && e.type !== t) continue;
        if (k && o.kind !== k) continue;
        if (f && !`${object} ${e.reason} ${e.message}`.toLowerCase().includes(f)) continue;
        rows.push({ key: `${i}`, time: e.time, type: e.type, object, reason: e.reason, message: e.message, source: e.source || "" });
      }
      table.setRows(rows);
    };
    const redraw = throttled(draw, 150);
    [filter, type, kindSel].forEach((x) => x.addEventListener("input", redraw));
    const off = live.on((m) => { if (m.type === "events") redraw(); });
    draw();
    return off;
  },
};

export const PAGES = { overview, deployments, instances, services, leases: leasesPage, boundary, events: eventsPage };
