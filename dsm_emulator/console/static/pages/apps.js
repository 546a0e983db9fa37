// Apps and credentials: apps, their groups and permissions; for an awsxks app its SigV4 pair (and the
// previous pair while it stays valid after a rotation), rotation (reset_secret keeps the previous pair),
// and the values AWS's CreateCustomKeyStore form asks for, each copyable.
import { call } from "../api.js";
import { act, button, copyable, h, notice, table } from "../ui.js";

export const title = "Apps and credentials";

export function render(root) {
  const status = notice();
  const list = h("div", {});
  const detail = h("div", { id: "credential" });
  root.append(status, list, detail);
  let lab = null;

  async function showCredential(app) {
    const cred = await call("GET", `/sys/v1/apps/${app.app_id}/credential`);
    const pair = cred.credential.awsxks;
    const previous = cred.previous_credential && cred.previous_credential.awsxks;
    const uriPath = lab ? lab.xks.uri_path.replace(lab.xks.app_id, app.app_id) : "";
    detail.replaceChildren(
      h(
        "div",
        { class: "card" },
        h("h2", {}, `${app.name}: awsxks credential`),
        lab ? h("p", { class: "muted" }, `XksProxyCredentialAge as KMS sees it on the lab's key store: ${lab.kms.XksProxyCredentialAge_days.toFixed(2)} days`) : null,
        h("h3", {}, "CreateCustomKeyStore values"),
        copyable("XksProxyUriEndpoint", lab ? lab.xks.uri_endpoint : ""),
        copyable("XksProxyUriPath", uriPath),
        copyable("AccessKeyId", pair.access_key_id),
        copyable("RawSecretAccessKey", pair.secret_key),
        copyable("XksProxyConnectivity", "PUBLIC_ENDPOINT"),
        previous
          ? h("p", { class: "previous" }, "Previous pair, still accepted until the next rotation: ", h("code", { id: "previous-key-id" }, previous.access_key_id))
          : h("p", { class: "muted" }, "No previous pair."),
        button("Rotate the credential (keep the previous one)", async () => {
          const done = await act(status, `Rotate ${app.name}`, () => call("POST", `/sys/v1/apps/${app.app_id}/reset_secret`, {}));
          if (done) await showCredential(app);
        }, { class: "primary", id: "rotate" }),
      ),
    );
  }

  async function load() {
    lab = await call("GET", "/console/api/lab").catch(() => null);
    const apps = await call("GET", "/sys/v1/apps");
    list.replaceChildren(
      table(
        "Apps",
        [
          { title: "Name", cell: (a) => a.name },
          { title: "Credential", cell: (a) => a.auth_type },
          { title: "Groups and permissions", cell: (a) => Object.entries(a.groups || {}).map(([g, perms]) => h("div", {}, h("code", {}, g.slice(0, 8)), ` ${(perms || []).join(", ")}`)) },
          { title: "", cell: (a) => button("Credential", () => showCredential(a).catch((e) => status.show(`Credential: refused: ${e.message}`, "error")), { "aria-label": `Credential of ${a.name}` }) },
        ],
        apps,
        (a) => ({ "data-app": a.name }),
      ),
    );
  }
  load().catch((error) => status.show(error.message, "error"));
}
