// A table that renders only the rows in view (plus a few), so 50,000 rows cost what 40 do.
// Rows are plain data; columns say how to show a row: {title, width, text(row), cls(row)}.

const ROW = 24;
const OVERSCAN = 8;

export function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

export class VTable {
  constructor(parent, columns, { height = 420, onSelect = null, keyOf = (r) => r.key, label = "rows" } = {}) {
    this.columns = columns;
    this.rows = [];
    this.keyOf = keyOf;
    this.onSelect = onSelect;
    this.selected = null;
    this.label = label;
    this.el = document.createElement("div");
    this.el.className = "vt";
    this.el.dataset.table = label;
    const head = document.createElement("div");
    head.className = "vt-head";
    head.innerHTML = columns.map((c) => `<div style="width:${c.width}px">${esc(c.title)}</div>`).join("");
    this.scroll = document.createElement("div");
    this.scroll.className = "vt-scroll";
    this.scroll.style.height = `${height}px`;
    this.spacer = document.createElement("div");
    this.layer = document.createElement("div");
    this.scroll.append(this.spacer, this.layer);
    this.count = document.createElement("div");
    this.count.className = "vt-count";
    this.el.append(head, this.scroll, this.count);
    parent.append(this.el);
    this.pending = false;
    this.scroll.addEventListener("scroll", () => this.schedule());
    this.layer.addEventListener("click", (e) => {
      const row = e.target.closest(".vt-row");
      if (!row) return;
      this.selected = row.dataset.key;
      if (this.onSelect) this.onSelect(this.rows.find((r) => this.keyOf(r) === this.selected));
      this.render();
    });
  }
  setRows(rows) { this.rows = rows; this.schedule(); }
  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.render(); });
  }
  render() {
    const n = this.rows.length;
    this.spacer.style.height = `${n * ROW}px`;
    const top = this.scroll.scrollTop;
    const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
    const last = Math.min(n, Math.ceil((top + this.scroll.clientHeight) / ROW) + OVERSCAN);
    const html = [];
    for (let i = first; i < last; i++) {
      const row = this.rows[i];
      const key = this.keyOf(row);
      const cells = this.columns.map((c) => {
        const cls = c.cls ? c.cls(row) : "";
        return `<div class="${cls}" style="width:${c.width}px">${esc(c.text(row))}</div>`;
      }).join("");
      html.push(`<div class="vt-row${key === this.selected ? " sel" : ""}" data-key="${esc(key)}" style="top:${i * ROW}px">${cells}</div>`);
    }
    this.layer.innerHTML = html.join("");
    this.count.textContent = `${n.toLocaleString("en")} ${this.label}` + (n > last - first ? ` (showing ${first + 1}–${last})` : "");
  }
}
