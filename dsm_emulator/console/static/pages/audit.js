// Audit: GET /sys/v1/logs polled every 1.5 s; rows that were not there before appear at the top, marked
// new. Filters by key (object id), app or user (actor id), operation, outcome and kmsRequestId apply to
// the rows fetched (the newest 500).
import { call } from "../api.js";
import { button, every, h, notice, short, table } from "../ui.js";

export const title = "Audit";

export function outcome(row) {
  if (/: refused: /.test(row.message)) return "refused";
  if (row.severity === "ERROR" || row.severity === "CRITICAL") return "failed";
  return "success";
}

export function context(row) {
  try {
    return JSON.parse(row.client_provided_context || "{}") || {};
  } catch {
    return {};
  }
}

export function render(root) {
  const status = notice();
  const fields = {
    key: h("input", { id: "f-key", placeholder: "key id" }),
    actor: h("input", { id: "f-actor", placeholder: "app or user id" }),
    operation: h("input", { id: "f-operation", placeholder: "e.g. Decrypt, CRYPTOOPERATION" }),
    outcome: h("select", { id: "f-outcome" }, ["", "success", "refused", "failed"].map((v) => h("option", { value: v }, v || "any"))),
    request: h("input", { id: "f-request", placeholder: "kmsRequestId" }),
  };
  const labels = { key: "Key", actor: "App", operation: "Operation", outcome: "Outcome", request: "kmsRequestId" };
  const filters = h(
    "form",
    { class: "card row", "aria-label": "Filters", role: "search" },
    Object.entries(fields).map(([name, input]) => [h("label", { for: input.id }, labels[name]), input]),
  );
  const list = h("div", {});
  const chain = h("span", { id: "chain", role: "status" }, "Chain: not checked yet");
  const verify = async () => {
    chain.textContent = "Chain: verifying…";
    try {
      const result = await call("GET", "/console/api/audit-chain");
      chain.textContent = result.ok
        ? `Chain: verified, ${result.rows} rows, no break`
        : `Chain: BROKEN: ${result.problems.map((p) => `${p.chain} seq ${p.seq}: ${p.reason}`).join("; ")}`;
      chain.dataset.kind = result.ok ? "ok" : "error";
    } catch (error) {
      chain.textContent = `Chain: not verified: ${error.message}`;
      chain.dataset.kind = "error";
    }
  };
  // The rows shown (after the filters), as JSON, in the Fortanix EsAuditLog shape the API gave them.
  const exportRows = () => {
    const shown = rows.filter(matches).map(({ fresh, ...row }) => row);
    const blob = new Blob([JSON.stringify(shown, null, 2)], { type: "application/json" });
    const link = h("a", { href: URL.createObjectURL(blob), download: `xkslab-audit-${new Date().toISOString()}.json` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  };
  const tools = h(
    "div",
    { class: "card row" },
    chain,
    button("Verify the chain", verify),
    button("Export the rows shown (JSON)", exportRows, { id: "export" }),
  );
  root.append(tools, filters, status, list);
  verify();
  const seen = new Set();
  let rows = [];
  let first = true;

  function matches(row) {
    const ctx = context(row);
    const has = (text, ...values) => !text || values.some((v) => v && String(v).toLowerCase().includes(text.toLowerCase()));
    return (
      has(fields.key.value.trim(), row.object_id) &&
      has(fields.actor.value.trim(), row.actor_id) &&
      has(fields.operation.value.trim(), ctx.kmsOperation, row.action_type, row.message) &&
      (!fields.outcome.value || outcome(row) === fields.outcome.value) &&
      has(fields.request.value.trim(), ctx.kmsRequestId)
    );
  }

  function draw() {
    const shown = rows.filter(matches);
    list.replaceChildren(
      table(
        `${shown.length} of the latest ${rows.length} rows`,
        [
          { title: "Time", cell: (r) => r.time },
          { title: "Outcome", cell: (r) => h("span", { class: "badge", "data-state": outcome(r) }, outcome(r)) },
          { title: "Type", cell: (r) => r.action_type },
          { title: "Actor", cell: (r) => h("code", { title: r.actor_id }, `${r.actor_type} ${short(r.actor_id)}`) },
          { title: "Message", cell: (r) => r.message },
          { title: "KMS", cell: (r) => { const c = context(r); return c.kmsRequestId ? `${c.kmsOperation || ""} ${c.kmsRequestId}` : ""; } },
        ],
        shown,
        (r) => ({ class: r.fresh ? "fresh" : undefined, "data-id": r.id }),
      ),
    );
  }

  for (const input of Object.values(fields)) input.addEventListener("input", draw);
  filters.addEventListener("submit", (event) => event.preventDefault());

  return every(1500, async () => {
    let hits;
    try {
      hits = (await call("GET", "/sys/v1/logs?size=500")).hits;
    } catch (error) {
      status.show(error.message, "error");
      return;
    }
    const fresh = [];
    for (const hit of hits) {
      if (seen.has(hit._id)) continue;
      seen.add(hit._id);
      fresh.push({ ...hit._source, id: hit._id, fresh: !first });
    }
    for (const row of rows) row.fresh = false;
    rows = [...fresh, ...rows].slice(0, 500);
    first = false;
    status.show(`Live: ${fresh.length} new row(s) at ${new Date().toLocaleTimeString()}`);
    if (fresh.length > 0 || rows.length === 0) draw();
  });
}
