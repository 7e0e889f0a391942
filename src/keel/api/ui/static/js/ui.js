// The confirmation dialog and the toast: the only two pieces of chrome the pages share.
import { esc } from "./vlist.js";

// Resolves to the dialog's form data when confirmed, to null when cancelled.
export function confirmDialog(text, extraHtml = "") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-extra").innerHTML = extraHtml;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok" ? new FormData(dialog.querySelector("form")) : null);
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

export function toast(message, kind = "") {
  const t = document.createElement("div");
  t.className = `toast ${kind}`;
  t.setAttribute("role", kind === "bad" ? "alert" : "status");
  t.innerHTML = esc(message);
  document.body.append(t);
  setTimeout(() => t.remove(), kind === "bad" ? 8000 : 4000);
}
