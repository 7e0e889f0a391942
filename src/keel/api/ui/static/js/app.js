// The shell: log in (a one-time code from the link `keel up` prints, or a pasted token),
// then route #/page to a page of pages.js, keeping only that page's watches open.
import { live, login, onUnauthorized, session, status, watchOnly, whoami } from "./api.js";
import { PAGES } from "./pages.js";
import { esc } from "./vlist.js";

const main = document.getElementById("main");
const loginView = document.getElementById("login");
let unmount = null;
let current = null;

function showLogin(message = "") {
  if (unmount) { unmount(); unmount = null; }
  current = null;
  watchOnly([]);
  live.close();
  session.clear();
  main.hidden = true;
  loginView.hidden = false;
  document.getElementById("who").textContent = "";
  document.getElementById("logout").hidden = true;
  document.getElementById("login-error").textContent = message;
  document.getElementById("token").focus();
}

function route() {
  if (!session.token) return showLogin();
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1] || "overview";
  const page = PAGES[name] || PAGES.overview;
  if (page === current) return;
  if (unmount) unmount();
  current = page;
  loginView.hidden = true;
  main.hidden = false;
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === name));
  watchOnly(page.kinds);
  live.open(page.topics);
  main.dataset.page = name;
  unmount = page.mount(main);
  status.update();
}

function showWho(who) {
  document.getElementById("who").innerHTML = `${esc(who.name)} <span class="${who.canAct ? "" : "warn"}">(${esc(who.role)}${who.canAct ? "" : ", read-only"})</span>`;
  document.getElementById("logout").hidden = false;
}

async function start() {
  onUnauthorized((message) => showLogin(`Logged out: ${message}`));
  document.getElementById("logout").addEventListener("click", () => { showLogin(); });
  document.getElementById("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = document.getElementById("token");
    try {
      showWho(await login({ token: input.value }));
      input.value = "";
      current = null;
      route();
    } catch (err) {
      document.getElementById("login-error").textContent = `Login failed: ${err.message}`;
    }
  });
  window.addEventListener("hashchange", async () => {
    if (await useCode()) { current = null; route(); }
    else route();
  });
  // A browser gives one server six HTTP/1.1 connections, shared by all its tabs: a tab in
  // the background gives its streams back, and resumes them (from the resourceVersions it
  // saw) when it is looked at again.
  document.addEventListener("visibilitychange", () => {
    if (!session.token) return;
    if (document.visibilityState === "hidden") { watchOnly([]); live.close(); }
    else if (current) { watchOnly(current.kinds); live.open(current.topics); status.update(); }
  });
  const used = await useCode();
  if (used === false) return;
  if (used === null && session.token) {
    try { showWho(await whoami()); } catch (err) { return showLogin(err.code === 401 ? "Session expired: log in again" : err.message); }
  }
  route();
}

// A login code in the fragment (#login=kl1...): exchange it, then drop it from the address.
// Returns true when it logged in, false when refused, null when there was no code.
async function useCode() {
  const code = (location.hash.match(/^#login=([\w.-]+)/) || [])[1];
  if (!code) return null;
  history.replaceState(null, "", location.pathname + "#/overview"); // the code works once
  try {
    showWho(await login({ code }));
    return true;
  } catch (err) {
    showLogin(`Login link refused: ${err.message}`);
    return false;
  }
}

start();
