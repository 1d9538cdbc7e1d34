// Certificates: the CA (its fingerprint, for clients to check), a CA rotation's progress,
// the expiry timeline, the inventory with renewal state, and revocation (confirmed).

import {get, post} from "./api.js";
import {day, h, problemBlock, relative, table} from "./dom.js";
import {timeline} from "./timeline.js";

// The first (largest) warning threshold; the certificates' own warnings come from the API.
const WARN_DAYS = 30;

function caDetails(ca) {
  const rows = [
    ["Subject", ca.subject],
    ["SHA-256 fingerprint", h("code", {class: "fingerprint", id: "ca-fingerprint"}, ca.sha256_fingerprint)],
    ["Key type", ca.key_type],
    ["Valid", `${day(ca.not_before)} to ${day(ca.not_after)} (${Math.floor(ca.days_left)} days left)`],
    ["Published at", ca.publish_url || "not published"],
  ];
  return h("dl", {class: "details"}, rows.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

function rotationProgress(rotation) {
  if (!rotation) return h("p", {}, "No CA rotation is under way.");
  const moved = rotation.certificates_from_new_ca;
  return h("section", {id: "rotation", "aria-labelledby": "rotation-title"},
    h("h4", {id: "rotation-title"}, "CA rotation under way"),
    h("p", {}, `Certificates issued by the new CA: ${moved} of ${rotation.certificates}.`),
    h("progress", {max: rotation.certificates, value: moved, "aria-label": "certificates moved to the new CA"}),
    h("p", {}, `Servers that trust the new CA: ${rotation.servers_trusting_new_ca.length} of ${rotation.servers}.`),
    rotation.certificates_from_earlier_cas.length
      ? h("p", {}, "Still from an earlier CA: ", rotation.certificates_from_earlier_cas.join(", "),
        ". Fix: ", h("code", {}, "watchkeep cert renew --all"))
      : h("p", {}, "Every certificate comes from the new CA: the earlier one can be retired (",
        h("code", {}, "watchkeep ca retire FINGERPRINT"), ")."));
}

function renewalCell(record) {
  const r = record.renewal;
  return h("td", {},
    record.status === "active" ? `next ${day(record.next_renewal)} (${relative(record.next_renewal)})` : "—",
    r && r.failures ? h("span", {class: "bad"}, ` — ${r.failures} failure(s), retry ${relative(r.retry_at)}: ${r.last_error}`) : null,
    r && r.last_renewed ? ` — last renewed ${relative(r.last_renewed)}` : null);
}

function revokeDialog(record, reasons, done) {
  const select = h("select", {id: "revoke-reason"}, reasons.map((r) => h("option", {value: r}, r)));
  const result = h("div", {});
  const dialog = h("dialog", {id: "revoke-dialog", "aria-labelledby": "revoke-title"},
    h("form", {method: "dialog"},
      h("h3", {id: "revoke-title"}, `Revoke ${record.name}?`),
      h("p", {}, `Serial ${record.serial}. Every watchkeep peer refuses a revoked certificate: a server still using it can no longer be reached.`),
      h("label", {for: "revoke-reason"}, "Reason"), select,
      result,
      h("p", {},
        h("button", {type: "button", class: "danger", id: "revoke-confirm", onclick: async () => {
          try {
            await post(`/api/v1/certificates/${encodeURIComponent(record.name)}/revoke`, {reason: select.value});
          } catch (error) {
            result.replaceChildren(problemBlock(error));
            return;
          }
          dialog.close();
          dialog.remove();
          done();
        }}, "Revoke"),
        " ",
        h("button", {type: "submit", id: "revoke-cancel", onclick: () => dialog.remove()}, "Cancel"))));
  dialog.addEventListener("cancel", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  select.focus();
}

export async function render(container, context) {
  const [ca, records] = await Promise.all([get("/api/v1/ca/details"), get("/api/v1/certificates")]);
  const all = await get("/api/v1/certificates?all=1");
  const history = all.filter((r) => r.status !== "active");
  const rows = records.map((r) => h("tr", {"data-name": r.name},
    h("th", {scope: "row"}, r.name),
    h("td", {}, r.role),
    h("td", {}, [...r.hosts, ...r.ips].join(", ")),
    h("td", {class: r.days_left < WARN_DAYS ? "bad" : ""}, `${day(r.not_after)} (${Math.floor(r.days_left)} days)`),
    renewalCell(r),
    h("td", {}, h("button", {type: "button", class: "danger", "data-revoke": r.name,
      onclick: () => revokeDialog(r, ca.revocation_reasons, () => context.show("certificates"))},
    `Revoke ${r.name}`))));
  container.append(...[
    h("h3", {}, "Certificate authority"),
    caDetails(ca),
    rotationProgress(ca.rotation),
    h("h3", {}, "Expiry timeline"),
    h("p", {}, `Each bar runs from a certificate's start to its expiry; the last ${WARN_DAYS} days are shaded (the first warning).`),
    records.length ? timeline(records, WARN_DAYS) : h("p", {}, "No active certificate."),
    table("Active certificates", ["Name", "Role", "Names", "Expires", "Renewal", "Revocation"], rows),
    history.length
      ? table("Revoked and superseded certificates", ["Name", "Serial", "Status", "When", "Reason"],
        history.map((r) => h("tr", {"data-name": r.name, "data-status": r.status},
          h("th", {scope: "row"}, r.name),
          h("td", {}, h("code", {}, r.serial.slice(0, 16))),
          h("td", {}, r.status),
          h("td", {}, day(r.revoked_at || r.not_after)),
          h("td", {}, r.revocation_reason || "—"))))
      : null,
  ].filter((part) => part !== null));
}
