// Users: add one (name, password, role, cameras), change a user's rights and cameras,
// remove one. A change or a removal ends the user's sessions everywhere (the API does it).

import {get, patch, post, remove} from "./api.js";
import {h, problemBlock, table} from "./dom.js";

// Checkboxes for "every camera" or a chosen few.
function cameraChooser(id, cameras, chosen) {
  const every = chosen === null || chosen === undefined;
  const all = h("input", {type: "checkbox", id: `${id}-all`, checked: every});
  const boxes = cameras.map((c) => h("input", {
    type: "checkbox", id: `${id}-${c.name}`, value: c.name,
    checked: !every && chosen.includes(c.name), disabled: every,
  }));
  all.addEventListener("change", () => { for (const b of boxes) b.disabled = all.checked; });
  const fieldset = h("fieldset", {id},
    h("legend", {}, "Cameras"),
    h("span", {}, all, h("label", {for: `${id}-all`}, "every camera")),
    boxes.map((b) => h("span", {}, b, h("label", {for: b.id}, b.value))));
  fieldset.chosen = () => (all.checked ? null : boxes.filter((b) => b.checked).map((b) => b.value));
  return fieldset;
}

function roleSelect(id, role, label) {
  return h("select", {id, "aria-label": label},
    ["operator", "administrator"].map((r) => h("option", {value: r, selected: r === role}, r)));
}

export async function render(container, context) {
  const [users, status] = await Promise.all([get("/api/v1/users"), get("/api/v1/site/status")]);
  const cameras = status.cameras;
  const rows = users.map((u) => {
    const role = roleSelect(`role-${u.name}`, u.role, `Role of ${u.name}`);
    const chooser = cameraChooser(`cameras-${u.name}`, cameras, u.cameras);
    const result = h("div", {});
    return h("tr", {"data-user": u.name},
      h("th", {scope: "row"}, u.name),
      h("td", {}, role),
      h("td", {}, chooser),
      h("td", {},
        h("button", {type: "button", onclick: async () => {
          try {
            await patch(`/api/v1/users/${encodeURIComponent(u.name)}`, {role: role.value, cameras: chooser.chosen()});
          } catch (error) {
            result.replaceChildren(problemBlock(error));
            return;
          }
          await context.show("users");
        }}, `Save ${u.name}`), " ",
        h("button", {type: "button", class: "danger", "data-remove": u.name, onclick: async () => {
          if (!window.confirm(`Remove user ${u.name}? Its sessions end at once.`)) return;
          try {
            await remove(`/api/v1/users/${encodeURIComponent(u.name)}`);
          } catch (error) {
            result.replaceChildren(problemBlock(error));
            return;
          }
          await context.show("users");
        }}, `Remove ${u.name}`),
        result));
  });
  const result = h("div", {id: "user-add-result"});
  const chooser = cameraChooser("new-user-cameras", cameras, null);
  const form = h("form", {id: "user-add", "aria-labelledby": "user-add-title"},
    h("h3", {id: "user-add-title"}, "Add a user"),
    h("p", {}, h("label", {for: "new-user-name"}, "Name"), h("input", {id: "new-user-name", required: true, autocomplete: "off"})),
    h("p", {}, h("label", {for: "new-user-password"}, "Password (8 characters at least)"),
      h("input", {id: "new-user-password", type: "password", required: true, minlength: 8, autocomplete: "new-password"})),
    h("p", {}, h("label", {for: "new-user-role"}, "Role"), roleSelect("new-user-role", "operator")),
    chooser,
    h("p", {}, h("button", {type: "submit"}, "Add user")),
    result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const password = form.querySelector("#new-user-password");
    const body = {
      name: form.querySelector("#new-user-name").value,
      password: password.value,
      role: form.querySelector("#new-user-role").value,
      cameras: chooser.chosen(),
    };
    password.value = "";
    try {
      await post("/api/v1/users", body);
    } catch (error) {
      result.replaceChildren(problemBlock(error));
      return;
    }
    await context.show("users");
  });
  container.append(table("Users of the site", ["Name", "Role", "Cameras", "Changes"], rows), form);
}
