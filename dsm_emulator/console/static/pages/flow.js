// The flow: one KMS request drawn as the double envelope: caller -> KMS -> XKS proxy -> DSM and back, each
// hop's time, the data key wrapped twice, and the DSM audit row the request produced (matched by
// kmsRequestId). "Run the demo" makes GenerateDataKey then Decrypt through /console/api/demo; a recent
// request can be picked from the audit log instead.
import { call } from "../api.js";
import { act, button, h, ms, notice, short, table } from "../ui.js";
import { context, outcome } from "./audit.js";

export const title = "The flow";

async function auditRow(requestId, tries = 60) {
  for (let i = 0; i < tries; i++) {
    const hits = (await call("GET", "/sys/v1/logs?size=200")).hits;
    const hit = hits.find((x) => context(x._source).kmsRequestId === requestId);
    if (hit) return hit._source;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  return null;
}

function dsmMs(row) {
  const t = row && row.response_time;
  return t ? t.secs * 1000 + t.nanos / 1e6 : null;
}

function hop(name, detail, kind) {
  return h("div", { class: "hop", "data-kind": kind || "" }, h("strong", {}, name), h("span", {}, detail));
}

function arrow(label, time) {
  return h("div", { class: "arrow", title: "round trip" }, h("span", { class: "arrow-line" }, "⇄"), h("span", {}, label), h("strong", {}, time));
}

function diagram(step, row) {
  const failed = step.error !== null && step.error !== undefined;
  const reachedProxy = step.proxy_calls > 0;
  const reachedDsm = row !== null;
  return h(
    "figure",
    { class: "flow", "data-operation": step.operation },
    h("figcaption", {}, `${step.operation}  ·  kmsRequestId ${step.kms_request_id || "?"}`),
    h(
      "div",
      { class: "hops" },
      hop("Caller", "boto3-style client (the console's server)"),
      arrow(step.operation, ms(step.caller_ms)),
      hop("AWS KMS", failed ? `refused: ${step.error}` : "its own key: the inner envelope", failed ? "error" : "ok"),
      arrow(`XKS ${step.xks_operation}`, reachedProxy ? ms(step.kms_to_proxy_ms) : "not called"),
      hop("XKS proxy", reachedProxy ? `SigV4 checked, ${ms(step.proxy_ms)} inside` : "–", reachedProxy ? "ok" : ""),
      arrow("proxy → DSM", reachedDsm ? ms(dsmMs(row)) : "–"),
      hop("DSM", reachedDsm ? `${outcome(row)}: the outer envelope` : "–", reachedDsm ? (outcome(row) === "success" ? "ok" : "error") : ""),
    ),
    failed ? h("p", { class: "refusal", role: "alert" }, `KMS refused: ${step.error}${step.message ? ": " + step.message : ""}`) : null,
    !failed && step.operation === "GenerateDataKey"
      ? h(
          "p",
          { class: "envelope" },
          `Data key: ${step.plaintext_bytes} bytes (given only to the caller, not shown) → encrypted by KMS under the KMS key's own backing key (inner layer) → encrypted again by the DSM's root KEK (XKS Encrypt, outer layer): a ${step.ciphertext_bytes}-byte CiphertextBlob.`,
        )
      : null,
    !failed && step.operation === "Decrypt"
      ? h("p", { class: "envelope" }, `The DSM removed its outer layer (XKS Decrypt), then KMS its inner one: ${step.plaintext_bytes} bytes back to the caller.`)
      : null,
    row
      ? table("DSM audit row", [
          { title: "Time", cell: (r) => r.time },
          { title: "Outcome", cell: (r) => outcome(r) },
          { title: "Message", cell: (r) => r.message },
          { title: "Key", cell: (r) => h("code", {}, short(r.object_id)) },
          { title: "DSM time", cell: (r) => ms(dsmMs(r)) },
        ], [row])
      : h("p", { class: "muted" }, reachedProxy ? "No DSM audit row for this request yet." : "The DSM was not reached: no audit row."),
  );
}

export function render(root) {
  const status = notice();
  const keySelect = h("select", { id: "kms-key", "aria-label": "KMS key" });
  const run = button("Run the demo", async () => {
    run.disabled = true;
    status.show("Running GenerateDataKey and Decrypt…");
    const result = await act(status, "The demo", () => call("POST", "/console/api/demo", { key_id: keySelect.value || undefined }));
    run.disabled = false;
    if (!result) return;
    output.replaceChildren();
    for (const step of result.steps) {
      const row = step.error ? (step.proxy_calls > 0 ? await auditRow(step.kms_request_id, 10) : null) : await auditRow(step.kms_request_id);
      output.append(diagram(step, row));
    }
    status.show(result.steps.some((s) => s.error) ? "The demo: KMS refused" : "The demo: done", result.steps.some((s) => s.error) ? "error" : "ok");
    await recent();
  }, { class: "primary", id: "run-demo" });
  const output = h("div", { id: "flow-output" });
  const recentList = h("div", {});
  root.append(
    h("div", { class: "card row" }, h("label", { for: "kms-key" }, "KMS key"), keySelect, run),
    status,
    output,
    h("h2", {}, "Recent KMS requests"),
    recentList,
  );

  async function recent() {
    const hits = (await call("GET", "/sys/v1/logs?size=300")).hits.map((x) => x._source).filter((r) => context(r).kmsRequestId);
    recentList.replaceChildren(
      table(
        "Pick one to see its flow",
        [
          { title: "Time", cell: (r) => r.time },
          { title: "Operation", cell: (r) => context(r).kmsOperation },
          { title: "Outcome", cell: (r) => outcome(r) },
          {
            title: "kmsRequestId",
            cell: (r) =>
              button(context(r).kmsRequestId, () => {
                const c = context(r);
                output.replaceChildren(
                  h("p", { class: "muted" }, "From the audit log: KMS's and the proxy's times are known only for runs made here."),
                  diagram({ operation: c.kmsOperation, kms_request_id: c.kmsRequestId, xks_operation: "", proxy_calls: 1, error: null }, r),
                );
              }, { class: "link" }),
          },
        ],
        hits.slice(0, 20),
      ),
    );
  }

  call("GET", "/console/api/kms-keys")
    .then((data) => {
      keySelect.replaceChildren(
        h("option", { value: "" }, "alias/xkslab-demo (the lab's key)"),
        ...data.keys.map((k) => h("option", { value: k.key_id }, `${k.key_id} (DSM key ${short(k.xks_key_id)}, ${k.state})`)),
      );
    })
    .catch((error) => status.show(error.message, "error"));
  recent().catch((error) => status.show(error.message, "error"));
}
