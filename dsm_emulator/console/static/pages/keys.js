// Keys: groups, their keys and each key's state, the KMS keys on the lab's key store that use it; create,
// enable/disable, rotate (rekey), revoke, destroy, and "use in KMS" (a KMS key on the lab's key store).
import { call } from "../api.js";
import { act, button, h, notice, short, table } from "../ui.js";

export const title = "Keys";

const KEY_OPS = ["ENCRYPT", "DECRYPT", "WRAPKEY", "UNWRAPKEY", "APPMANAGEABLE"];

export function render(root) {
  const status = notice();
  const groupSelect = h("select", { id: "group", "aria-label": "Group" });
  const name = h("input", { id: "key-name", name: "name", required: true, placeholder: "e.g. payroll-kek" });
  const size = h("select", { id: "key-size", "aria-label": "Key size" }, [256, 192, 128].map((s) => h("option", { value: s }, `AES-${s}`)));
  const list = h("div", {});
  const form = h(
    "form",
    { class: "card row", "aria-label": "Create a key" },
    h("label", { for: "group" }, "Group"),
    groupSelect,
    h("label", { for: "key-name" }, "New key"),
    name,
    size,
    // Enabled once the groups are known: a key is always created in a group chosen from the list.
    h("button", { type: "submit", class: "primary", id: "create-key", disabled: true }, "Create key"),
  );
  root.append(form, status, list);

  // Loads may overlap (a group chosen while the first list is on its way): only the latest one draws.
  let loads = 0;
  async function load() {
    const mine = ++loads;
    const groupId = groupSelect.value;
    const groupName = groupSelect.selectedOptions[0]?.textContent || "the group";
    const [keys, kms] = await Promise.all([
      call("GET", `/crypto/v1/keys?group_id=${encodeURIComponent(groupId)}&show_destroyed=true`),
      call("GET", "/console/api/kms-keys").catch(() => ({ keys: [] })),
    ]);
    if (mine !== loads) return;
    const usedBy = {};
    for (const k of kms.keys) (usedBy[k.xks_key_id] ||= []).push(k);
    list.replaceChildren(
      table(
        `Keys in ${groupName}`,
        [
          { title: "Name", cell: (k) => k.name },
          { title: "Key id", cell: (k) => h("code", { title: k.kid }, short(k.kid)) },
          { title: "Type", cell: (k) => `${k.obj_type}${k.key_size ? "-" + k.key_size : ""}` },
          { title: "State", cell: (k) => h("span", { class: "badge", "data-state": k.enabled ? k.state : "Disabled" }, k.enabled ? k.state : `${k.state}, disabled`) },
          { title: "Used by KMS", cell: (k) => (usedBy[k.kid] || []).map((m) => h("div", {}, h("code", {}, m.key_id), ` ${m.state}`)) },
          { title: "Actions", cell: (k) => actions(k) },
        ],
        keys,
        (k) => ({ "data-kid": k.kid, "data-name": k.name }),
      ),
    );
  }

  // A refusal because the group's approval policy holds the operation offers to ask the quorum for it
  // (POST /sys/v1/approval_requests); the request then waits on the Approvals page.
  function askQuorum(what, method, operation, body) {
    const ask = button("Ask for approval", async () => {
      const asked = await act(status, `Ask for approval of ${what}`, () =>
        call("POST", "/sys/v1/approval_requests", { method, operation, body, description: `${what} (from the console)` }),
      );
      if (asked) status.show(`${what}: approval request ${short(asked.request_id)} is waiting for the quorum (Approvals page)`, "ok");
      ask.remove();
    }, { id: "ask-approval" });
    status.append(" ", ask);
  }

  function actions(key) {
    const history = key.history || [];
    // Under the group's key history policy: the last change, which Undo puts back.
    const undo = history.length > 0 ? history[history.length - 1] : null;
    const run = (label, method, operation, body, title) =>
      button(label, async () => {
        const what = `${label} ${key.name}`;
        try {
          await call(method, operation, body);
          status.show(`${what}: done`, "ok");
        } catch (error) {
          status.show(`${what}: refused: ${error.message}`, "error");
          if (error.status === 403 && /quorum approval/.test(error.message)) askQuorum(what, method, operation, body);
        }
        await load();
      }, { "aria-label": `${label} ${key.name}`, title });
    const undoButton = undo ? run("Undo", "PUT", `/crypto/v1/keys/${key.kid}/revert`, { ids: [undo.id] }, `back to ${undo.state.state}`) : null;
    if (key.state === "Destroyed") return h("div", { class: "actions" }, undoButton || "–");
    return h(
      "div",
      { class: "actions" },
      key.enabled
        ? run("Disable", "PATCH", `/crypto/v1/keys/${key.kid}`, { enabled: false })
        : run("Enable", "PATCH", `/crypto/v1/keys/${key.kid}`, { enabled: true }),
      run("Rotate", "POST", "/crypto/v1/keys/rekey", { kid: key.kid }),
      run("Revoke", "POST", `/crypto/v1/keys/${key.kid}/revoke`, { code: "Unspecified", message: "revoked in the console" }),
      run("Destroy", "POST", `/crypto/v1/keys/${key.kid}/destroy`),
      run("Use in KMS", "POST", "/console/api/kms-keys", { xks_key_id: key.kid }),
      undoButton,
    );
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const created = await act(status, `Create ${name.value}`, () =>
      call("POST", "/crypto/v1/keys", {
        name: name.value,
        obj_type: "AES",
        key_size: Number(size.value),
        key_ops: KEY_OPS,
        group_id: groupSelect.value,
      }),
    );
    if (created) name.value = "";
    await load();
  });
  groupSelect.addEventListener("change", () => load().catch((e) => status.show(e.message, "error")));

  call("GET", "/sys/v1/groups")
    .then(async (groups) => {
      groupSelect.replaceChildren(...groups.map((g) => h("option", { value: g.group_id }, g.name)));
      form.querySelector("#create-key").disabled = groups.length === 0;
      await load();
    })
    .catch((error) => status.show(error.message, "error"));
}
