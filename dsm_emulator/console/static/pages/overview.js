// Overview: the three services' /health, the key store's connection state and error code, and the XKS
// request rate, latency and errors (KMS's CloudWatch-named metrics), polled every 2 s.
import { call } from "../api.js";
import { every, h, notice } from "../ui.js";

export const title = "Overview";

function stat(label, value, kind) {
  return h("div", { class: "stat", "data-kind": kind || "" }, h("span", { class: "stat-label" }, label), h("strong", {}, value));
}

export function render(root) {
  const status = notice();
  const body = h("div", { class: "grid" });
  root.append(body, status);
  let last = null;
  return every(2000, async () => {
    let lab;
    try {
      lab = await call("GET", "/console/api/lab");
    } catch (error) {
      status.show(error.message, "error");
      return;
    }
    status.show(`Updated ${new Date().toLocaleTimeString()}`);
    const now = performance.now();
    let rate = "–", latency = "–", errors = "–";
    if (last) {
      const seconds = (now - last.at) / 1000;
      const calls = lab.kms.XksProxyLatency_count - last.kms.XksProxyLatency_count;
      rate = `${(calls / seconds).toFixed(1)} /s`;
      latency = calls > 0 ? `${((1000 * (lab.kms.XksProxyLatency_sum_s - last.kms.XksProxyLatency_sum_s)) / calls).toFixed(1)} ms` : "–";
      errors = `${((lab.kms.XksProxyErrors - last.kms.XksProxyErrors) / seconds).toFixed(2)} /s`;
    }
    last = { at: now, kms: lab.kms };
    const services = Object.entries({ "DSM": lab.services.dsm, "XKS proxy": lab.services.xks, "KMS": lab.services.kms });
    const store = lab.key_store;
    body.replaceChildren(
      h(
        "div",
        { class: "card" },
        h("h2", {}, "Services"),
        h("div", { class: "stats" }, services.map(([name, health]) => stat(name, health.status, health.status === "ok" ? "ok" : "error"))),
      ),
      h(
        "div",
        { class: "card" },
        h("h2", {}, "Key store"),
        h("p", { class: "muted" }, `${store.name || ""} ${store.id}`),
        h(
          "div",
          { class: "stats" },
          stat("ConnectionState", store.state || "?", store.state === "CONNECTED" ? "ok" : "error"),
          stat("ConnectionErrorCode", store.error_code || "none", store.error_code ? "error" : ""),
        ),
      ),
      h(
        "div",
        { class: "card" },
        h("h2", {}, "XKS traffic (KMS side)"),
        h(
          "div",
          { class: "stats" },
          stat("Requests", rate),
          stat("XksProxyLatency", latency),
          stat("XksProxyErrors", errors, errors !== "–" && !errors.startsWith("0.00") ? "error" : ""),
          stat("Requests so far", String(lab.kms.XksProxyLatency_count)),
          stat("ExternalKeyManager ACTIVE", String(lab.kms.XksExternalKeyManagerStates.ACTIVE)),
          stat("XksProxyCredentialAge", `${lab.kms.XksProxyCredentialAge_days.toFixed(2)} days`),
        ),
      ),
    );
  });
}
