// The doctor's findings (the same as `watchkeep doctor --json`), grouped by server, each
// with its rule code, the requirement it enforces and the fix; run again on demand.

import {get} from "./api.js";
import {h} from "./dom.js";

function findingItem(f) {
  return h("li", {class: `finding ${f.severity}`, "data-code": f.code},
    h("p", {}, h("strong", {}, f.severity.toUpperCase()), " ", h("code", {}, f.code), ": ", f.message),
    h("p", {}, "Requirement: ", f.requirement),
    h("p", {}, "Fix: ", h("code", {}, f.fix)));
}

export async function render(container, context) {
  const button = h("button", {type: "button", id: "doctor-run", onclick: () => context.show("doctor")}, "Check again");
  const result = h("div", {id: "doctor-result"}, h("p", {role: "status"}, "Checking the site…"));
  container.append(h("p", {}, button), result);
  const started = new Date();
  const findings = await get("/api/v1/doctor");
  const count = (s) => findings.filter((f) => f.severity === s).length;
  const servers = [...new Set(findings.map((f) => f.server))].sort();
  result.replaceChildren(
    h("p", {role: "status", id: "doctor-summary"},
      `Checked at ${started.toISOString().slice(11, 19)} UTC: ${findings.length} finding(s): `
      + `${count("error")} error(s), ${count("warning")} warning(s), ${count("info")} info.`),
    ...servers.map((server) => h("section", {class: "server-findings", "data-server": server},
      h("h3", {}, server),
      h("ul", {}, findings.filter((f) => f.server === server).map(findingItem)))));
}
