// Approvals: the quorum approval requests (GET /sys/v1/approval_requests): who asked, for what, who has
// approved; approve or deny as the signed-in user. Polled every 3 s, so a second browser sees a request
// appear and the first sees it approved.
import { call } from "../api.js";
import { act, button, every, h, notice, short, table } from "../ui.js";

export const title = "Approvals";

// Users' e-mails by id (GET /sys/v1/users), to name requesters and reviewers.
const names = {};

// {"user": id} or {"app": id}, possibly under "entity": a readable name.
function entity(value) {
  const inner = (value && value.entity) || value || {};
  const [kind, id] = Object.entries(inner)[0] || ["", ""];
  return names[id] || `${kind} ${short(id)}`;
}

export function render(root) {
  const status = notice();
  const list = h("div", {});
  root.append(status, list);
  let drawn = "";
  let fetches = 0;
  const refresh = async (force = false) => {
    const mine = ++fetches;
    let requests;
    try {
      requests = await call("GET", "/sys/v1/approval_requests");
      if (mine !== fetches) return; // a later fetch (after an action) draws instead
    } catch (error) {
      status.show(error.message, "error");
      return;
    }
    // Drawn again only when something changed, so that the keyboard focus stays where it is.
    const now = JSON.stringify(requests);
    if (now === drawn && !force) return;
    drawn = now;
    const decide = (r, verb) =>
      button(verb === "approve" ? "Approve" : "Deny", async () => {
        await act(status, `${verb} ${short(r.request_id)}`, () => call("POST", `/sys/v1/approval_requests/${r.request_id}/${verb}`, {}));
        await refresh(true);
      });
    const actions = (r) => {
      if (r.status === "PENDING") return h("div", { class: "actions" }, decide(r, "approve"), decide(r, "deny"));
      if (r.status === "APPROVED" && !r.result_viewed)
        return button("Run it", async () => {
          await act(status, `Run ${r.method} ${r.operation}`, () => call("POST", `/sys/v1/approval_requests/${r.request_id}/result`));
          await refresh(true);
        }, { "aria-label": `Run ${short(r.request_id)}` });
      return "";
    };
    list.replaceChildren(
      table(
        "Approval requests",
        [
          { title: "Asked", cell: (r) => r.created_at || "" },
          { title: "By", cell: (r) => h("code", {}, entity(r.requester)) },
          { title: "For", cell: (r) => [`${r.method} ${r.operation}`, r.description ? h("div", { class: "muted" }, r.description) : null] },
          { title: "Status", cell: (r) => h("span", { class: "badge", "data-state": r.status }, r.status) },
          { title: "Approved by", cell: (r) => (r.approvers || []).map((a) => h("div", {}, h("code", {}, entity(a)))) },
          { title: "May review", cell: (r) => (r.reviewers || []).map((a) => h("div", {}, h("code", {}, entity(a)))) },
          { title: "", cell: (r) => actions(r) },
        ],
        requests,
        (r) => ({ "data-request": r.request_id, "data-status": r.status }),
      ),
    );
  };
  call("GET", "/sys/v1/users")
    .then((users) => {
      for (const u of users) names[u.user_id] = u.user_email;
    })
    .catch(() => undefined);
  return every(3000, () => refresh());
}
