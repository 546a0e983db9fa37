// Faults: the prepared scenarios (docs/scenarios) switched on and off on the lab's XKS proxy, beside the
// key store's state, its ConnectionErrorCode and KMS's CloudWatch-named metrics, polled every 2 s.
import { call } from "../api.js";
import { act, button, every, h, notice, table } from "../ui.js";

export const title = "Faults";

export function render(root) {
  const status = notice();
  const state = h("div", { class: "card", id: "store-state" });
  const list = h("div", {});
  root.append(status, state, list);
  let last = null;
  let drawn = "";

  async function scenarios() {
    const data = await call("GET", "/console/api/faults");
    list.replaceChildren(
      table(
        `Scenarios (${data.faults_set} fault(s) set on the proxy)`,
        [
          { title: "Scenario", cell: (s) => s.name },
          { title: "What it does", cell: (s) => s.description },
          { title: "State", cell: (s) => h("span", { class: "badge", "data-state": s.active ? "on" : "off" }, s.active ? "on" : "off") },
          {
            title: "",
            cell: (s) =>
              button(s.active ? "Switch off" : "Switch on", async () => {
                await act(status, `${s.name} ${s.active ? "off" : "on"}`, () => call(s.active ? "DELETE" : "POST", `/console/api/faults/${s.name}`));
                await scenarios();
              }, { "aria-label": `${s.active ? "Switch off" : "Switch on"} ${s.name}` }),
          },
        ],
        data.scenarios,
        (s) => ({ "data-scenario": s.name }),
      ),
    );
  }

  const stop = every(2000, async () => {
    let lab;
    try {
      lab = await call("GET", "/console/api/lab");
    } catch (error) {
      status.show(error.message, "error");
      return;
    }
    const errors = last ? lab.kms.XksProxyErrors - last.XksProxyErrors : 0;
    last = lab.kms;
    // Drawn again only when something shown changed, so that the keyboard focus stays where it is.
    const now = JSON.stringify([lab.key_store, errors, lab.kms.XksExternalKeyManagerStates]);
    if (now === drawn) return;
    drawn = now;
    state.replaceChildren(
      h("h2", {}, "Key store"),
      h(
        "div",
        { class: "stats" },
        h("div", { class: "stat", "data-kind": lab.key_store.state === "CONNECTED" ? "ok" : "error" }, h("span", { class: "stat-label" }, "ConnectionState"), h("strong", { id: "connection-state" }, lab.key_store.state)),
        h("div", { class: "stat" }, h("span", { class: "stat-label" }, "ConnectionErrorCode"), h("strong", {}, lab.key_store.error_code || "none")),
        h("div", { class: "stat" }, h("span", { class: "stat-label" }, "XksProxyErrors (since last poll)"), h("strong", {}, String(errors))),
        h("div", { class: "stat" }, h("span", { class: "stat-label" }, "XksExternalKeyManagerStates ACTIVE"), h("strong", {}, String(lab.kms.XksExternalKeyManagerStates.ACTIVE))),
      ),
      h(
        "div",
        { class: "row" },
        lab.key_store.state !== "CONNECTED"
          ? button("Reconnect the key store", () => act(status, "Reconnect the key store", () => call("POST", "/console/api/key-store/connect")), { id: "reconnect" })
          : null,
      ),
    );
  });
  scenarios().catch((error) => status.show(error.message, "error"));
  return stop;
}
