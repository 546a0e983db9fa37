// Approvals: the quorum approval requests (GET /sys/v1/approval_requests): who asked, for what, who has
// approved; approve or deny as the signed-in user. Polled every 3 s, so a second browser sees a request
// appear and the first sees it approved.
import { call } from "../api.js";
import { act, button, every, h, notice, short, table } from "../ui.js";

export const title = "Approvals";

export function render(root) {
  const status = notice();
  const list = h("div", {});
  root.append(status, list);
  const refresh = async () => {
    let requests;
    try {
      requests = await call("GET", "/sys/v1/approval_requests");
    } catch (error) {
      status.show(error.message, "error");
      return;
    }
    const decide = (r, verb) =>
      button(verb === "approve" ? "Approve" : "Deny", async () => {
        await act(status, `${verb} ${short(r.request_id)}`, () => call("POST", `/sys/v1/approval_requests/${r.request_id}/${verb}`, {}));
        await refresh();
      });
    list.replaceChildren(
      table(
        "Approval requests",
        [
          { title: "Asked", cell: (r) => r.created_at || "" },
          { title: "By", cell: (r) => h("code", {}, short((r.requester || {}).user || (r.requester || {}).app || "")) },
          { title: "For", cell: (r) => `${r.method} ${r.operation}` },
          { title: "Status", cell: (r) => h("span", { class: "badge", "data-state": r.status }, r.status) },
          { title: "Approved by", cell: (r) => (r.reviewers || []).map((v) => h("div", {}, `${short(v.entity && (v.entity.user || v.entity.app))} ${v.status || ""}`)) },
          { title: "", cell: (r) => (r.status === "PENDING" ? h("div", { class: "actions" }, decide(r, "approve"), decide(r, "deny")) : "") },
        ],
        requests,
      ),
    );
  };
  return every(3000, refresh);
}
