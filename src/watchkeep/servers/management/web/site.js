// The site: every server with its state and encryption switch, the failover servers, and
// (in the banner, on every administrator's view) the rules the site breaks now.

import {ApiError, get, post} from "./api.js";
import {day, h, problemBlock, relative, table} from "./dom.js";

// The banner, in plain words, while the site breaks a rule (GET /api/v1/site/breaches).
export async function refreshBanner(banner) {
  const breaches = await get("/api/v1/site/breaches");
  if (breaches.length === 0) {
    banner.hidden = true;
    banner.replaceChildren();
    return;
  }
  banner.replaceChildren(
    h("p", {}, h("strong", {}, `The site breaks its security rules in ${breaches.length} place${breaches.length === 1 ? "" : "s"}:`)),
    h("ul", {}, breaches.map((b) => h("li", {"data-code": b.code, "data-server": b.server},
      h("strong", {}, b.server), `: ${b.message}. `, "Fix: ", h("code", {}, b.fix),
      ` (rule ${b.code})`))));
  banner.hidden = false;
}

function certificateCell(server) {
  const cert = server.certificate;
  if (!cert) return h("td", {}, "none");
  const warning = cert.expiry_warning;
  return h("td", {class: warning !== null && warning !== undefined ? "bad" : ""},
    `${Math.floor(cert.days_left)} days left (until ${day(cert.not_after)})`,
    warning === 0 ? " — expired" : warning ? ` — inside the ${warning}-day warning` : "");
}

function encryptionSwitch(server, context, refusal) {
  const on = server.encryption;
  const label = `Encryption of ${server.name}`;
  return h("button", {
    type: "button",
    role: "switch",
    class: "switch",
    "aria-checked": on ? "true" : "false",
    "aria-label": label,
    "data-server": server.name,
    onclick: (event) => switchEncryption(server, !on, event.currentTarget, context, refusal),
  }, on ? "On" : "Off");
}

async function switchEncryption(server, enable, button, context, refusal) {
  button.disabled = true;
  refusal.replaceChildren();
  try {
    await post(`/api/v1/servers/${encodeURIComponent(server.name)}/encryption`, {enabled: enable});
  } catch (error) {
    button.disabled = false;
    refusal.replaceChildren(refusalBlock(error, server.name, enable));
    refusal.querySelector("h3").focus();
    return;
  }
  if (server.role === "management" && enable && location.protocol === "http:") {
    // The management server now answers over TLS only: this page's address is gone.
    const next = `https://${location.host}/`;
    refusal.replaceChildren(h("div", {class: "notice", role: "status", id: "moved"},
      h("h3", {tabindex: "-1"}, "The management server is encrypted now"),
      h("p", {}, "It answers over HTTPS only from now on. Continue at ",
        h("a", {href: next}, next), " and log in again.")));
    refusal.querySelector("h3").focus();
    return;
  }
  await context.show("site");
}

// The API's refusal, as the CLI prints it: each server in the way, and its fix.
function refusalBlock(error, name, enable) {
  if (!(error instanceof ApiError) || !error.problem.blockers) return problemBlock(error);
  const blockers = error.problem.blockers;
  return h("div", {class: "problem", id: "refusal"},
    h("h3", {tabindex: "-1"}, `Turning encryption ${enable ? "on" : "off"} on ${name} is refused`),
    h("p", {}, `${blockers.length} problem${blockers.length === 1 ? " stands" : "s stand"} in the way; fix each, then try again:`),
    h("ul", {}, blockers.map((b) => h("li", {"data-server": b.server, "data-code": b.code},
      h("strong", {}, b.server), ` [${b.code}]: ${b.message}. `, "Fix: ", h("code", {}, b.fix)))));
}

export async function render(container, context) {
  const [status, certs] = await Promise.all([
    get("/api/v1/site/status"),
    get("/api/v1/certificates").catch(() => []),
  ]);
  const renewalBySerial = new Map(certs.map((c) => [c.serial, c]));
  const refusal = h("div", {id: "encryption-result"});
  const rows = status.servers.map((s) => {
    const record = s.certificate ? renewalBySerial.get(s.certificate.serial) : undefined;
    const renewal = record && record.renewal;
    return h("tr", {"data-server": s.name},
      h("th", {scope: "row"}, s.name),
      h("td", {}, s.role),
      h("td", {}, s.host),
      h("td", {}, s.address),
      h("td", {class: s.online ? "ok" : "bad"}, s.online ? "online" : "offline"),
      h("td", {}, encryptionSwitch(s, context, refusal),
        s.encryption !== s.encrypted_now ? h("span", {class: "pending"}, " (switching)") : null),
      certificateCell(s),
      h("td", {}, record ? `${day(record.next_renewal)} (${relative(record.next_renewal)})` : "—",
        renewal && renewal.failures ? h("span", {class: "bad"}, ` — ${renewal.failures} failure(s): ${renewal.last_error}`) : null),
      h("td", {}, relative(s.last_seen)));
  });
  const failovers = status.servers.filter((s) => s.role === "failover");
  const recorders = status.servers.filter((s) => s.role === "recording").map((s) => s.name);
  container.append(
    h("p", {}, h("button", {type: "button", id: "site-refresh", onclick: () => context.show("site")}, "Refresh")),
    table("Servers of the site", ["Name", "Role", "Host", "Address", "State", "Encryption",
      "Certificate", "Next renewal", "Last heartbeat"], rows),
    refusal,
    h("h3", {}, "Failover"),
    failovers.length === 0
      ? h("p", {}, "No failover server: a recording server that stops takes its cameras with it.")
      : table("Failover servers and the recording servers they stand in for",
        ["Failover server", "State", "Encryption", "Stands in for", "Covers now"],
        failovers.map((f) => h("tr", {},
          h("th", {scope: "row"}, f.name),
          h("td", {}, f.online ? "online" : "offline"),
          h("td", {}, f.encryption ? "on" : "off"),
          h("td", {}, recorders.join(", ") || "—"),
          h("td", {}, f.covering || "nothing (standing by)")))),
    h("p", {}, "Site CA fingerprint (SHA-256): ",
      h("code", {class: "fingerprint"}, status.site_ca_sha256_fingerprint || "none")));
}
