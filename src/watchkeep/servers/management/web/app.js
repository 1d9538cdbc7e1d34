// The management client: log-in, the views a user may see, and moving between them.
// Each view is a module with render(container, context); it asks the API for what it
// shows, so what a user sees is what the API lets that user see.

import {currentSession, isAdministrator, logIn, logOut, whenSessionEnds} from "./api.js";
import {clear, h, problemBlock} from "./dom.js";
import * as site from "./site.js";
import * as certificates from "./certificates.js";
import * as doctor from "./doctor.js";
import * as cameras from "./cameras.js";
import * as users from "./users.js";

// Operators see the cameras they may view; every other view is an administrator's, and is
// left out of an operator's page altogether (the API would refuse it anyway).
const VIEWS = [
  {id: "site", title: "Site", module: site, administrators: true},
  {id: "certificates", title: "Certificates", module: certificates, administrators: true},
  {id: "doctor", title: "Doctor", module: doctor, administrators: true},
  {id: "cameras", title: "Cameras", module: cameras, administrators: false},
  {id: "users", title: "Users", module: users, administrators: true},
];

const $ = (id) => document.getElementById(id);
let shown = null;

function allowedViews() {
  return VIEWS.filter((v) => !v.administrators || isAdministrator());
}

function showLogin(reason) {
  if (shown !== null && shown.module.leave) shown.module.leave();
  shown = null;
  clear($("view"));
  $("view").hidden = true;
  $("banner").hidden = true;
  $("nav").hidden = true;
  $("nav").replaceChildren();
  $("who").hidden = true;
  $("logout").hidden = true;
  $("login-view").hidden = false;
  $("login-reason").textContent = reason || "";
  $("password").value = "";
  $("user").focus();
}

function showNavigation() {
  const session = currentSession();
  $("nav").replaceChildren(h("ul", {}, allowedViews().map((v) =>
    h("li", {}, h("a", {href: `#${v.id}`, id: `nav-${v.id}`, onclick: (event) => {
      // The view shown already: show it anew (no hashchange would come).
      if (location.hash === `#${v.id}`) {
        event.preventDefault();
        show(v.id);
      }
    }}, v.title)))));
  $("nav").hidden = false;
  $("who").textContent = `${session.user} (${session.role})`;
  $("who").hidden = false;
  $("logout").hidden = false;
  $("login-view").hidden = true;
}

export async function show(id) {
  if (currentSession() === null) return;
  const views = allowedViews();
  const view = views.find((v) => v.id === id) || views[0];
  if (shown !== null && shown.module.leave) shown.module.leave();
  shown = view;
  for (const link of $("nav").querySelectorAll("a")) {
    if (link.id === `nav-${view.id}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const container = $("view");
  delete container.dataset.ready;  // set again once this view is drawn
  clear(container);
  container.hidden = false;
  container.dataset.view = view.id;
  const heading = h("h2", {id: "view-title", tabindex: "-1"}, view.title);
  container.append(heading);
  document.title = `${view.title} — watchkeep management`;
  try {
    await Promise.all([
      view.module.render(container, {show}),
      isAdministrator() ? site.refreshBanner($("banner")) : null,
    ]);
  } catch (error) {
    if (currentSession() !== null && shown === view) container.append(problemBlock(error));
  }
  if (shown === view) {
    container.dataset.ready = "true";
    heading.focus();
  }
}

async function submitLogin(event) {
  event.preventDefault();
  const user = $("user").value;
  const password = $("password").value;
  $("password").value = "";
  $("login-reason").textContent = "";
  try {
    await logIn(user, password);
  } catch (error) {
    const p = error.problem || {};
    $("login-reason").textContent = p.detail ? `Log-in refused: ${p.detail}.` : error.message;
    $("password").focus();
    return;
  }
  showNavigation();
  const wanted = location.hash.slice(1);
  if (wanted && allowedViews().some((v) => v.id === wanted)) await show(wanted);
  else location.hash = `#${allowedViews()[0].id}`;
}

function start() {
  $("lock").textContent = location.protocol === "https:"
    ? "Encrypted connection (TLS)"
    : "Not encrypted: passwords cross the network in clear";
  $("lock").className = location.protocol === "https:" ? "ok" : "bad";
  $("login").addEventListener("submit", submitLogin);
  $("logout").addEventListener("click", () => logOut().catch(() => {}));
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  whenSessionEnds(showLogin);
  showLogin("");
}

start();
