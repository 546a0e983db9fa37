// The console's shell: sign-in, the navigation and a hash router ("#/keys"). Each page is a module with
// render(root) that returns a function stopping what it started (polling) when another page opens.
import { signIn, signOut, signedIn, who } from "./api.js";
import { h, notice } from "./ui.js";
import * as overview from "./pages/overview.js";
import * as keys from "./pages/keys.js";
import * as apps from "./pages/apps.js";
import * as audit from "./pages/audit.js";
import * as flow from "./pages/flow.js";
import * as approvals from "./pages/approvals.js";
import * as faults from "./pages/faults.js";

const PAGES = { overview, keys, apps, audit, flow, approvals, faults };
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const whoEl = document.getElementById("who");
let stop = () => undefined;

function signInForm() {
  const status = notice();
  const email = h("input", { id: "email", name: "email", type: "email", autocomplete: "username", required: true });
  const password = h("input", {
    id: "password",
    name: "password",
    type: "password",
    autocomplete: "current-password",
    required: true,
  });
  const form = h(
    "form",
    { class: "card signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in to the lab's DSM"),
    h("p", { class: "muted" }, "A DSM user: the lab's administrator is in up.json (dsm.admin_email, dsm.admin_password)."),
    h("label", { for: "email" }, "Email"),
    email,
    h("label", { for: "password" }, "Password"),
    password,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.show("Signing in…");
    try {
      await signIn(email.value, password.value);
      if (!location.hash || location.hash === "#/signin") location.hash = "#/overview";
      route();
    } catch (error) {
      status.show(error.message, "error");
    }
  });
  return form;
}

function route() {
  stop();
  stop = () => undefined;
  main.replaceChildren();
  if (!signedIn()) {
    nav.hidden = true;
    whoEl.replaceChildren();
    main.append(signInForm());
    main.querySelector("#email").focus();
    return;
  }
  nav.hidden = false;
  whoEl.replaceChildren(
    h("span", { class: "muted" }, who()),
    h("button", { type: "button", class: "link", onclick: async () => { await signOut(); route(); } }, "Sign out"),
  );
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1] || "overview";
  const page = PAGES[name] || overview;
  for (const link of nav.querySelectorAll("a")) {
    if (link.getAttribute("href") === `#/${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${page.title} · xkslab console`;
  const root = h("section", { class: "page", "aria-labelledby": "page-title" }, h("h1", { id: "page-title" }, page.title));
  main.append(root);
  stop = page.render(root) || (() => undefined);
  main.focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
window.addEventListener("xkslab-signed-out", route);
route();
